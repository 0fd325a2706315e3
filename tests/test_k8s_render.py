"""The GKE manifests as `kubectl apply -k` would send them (rendered offline by
tests/kustomize_render.py), checked against the config they run: ports, probes, mounts, the
environment dev.yaml reads, graceful shutdown, autoscaling, disruption budgets, credentials.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml

from config.settings import Settings, load_settings
from tests.bigquery_emulator import bigquery_emulator  # noqa: F401  (the API pod's database, locally)
from tests.kustomize_render import RenderError, render
from workers.observability import worker_metrics_bind
from workers.worker import DRAIN_MARGIN_S, GRACEFUL_SHUTDOWN, deployment_config

REPO = Path(__file__).resolve().parent.parent
BASE = REPO / "k8s" / "dev"
WORKLOAD_IDENTITY = REPO / "k8s" / "workload-identity"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")
# Read by the process or its libraries, not through the config file.
PROCESS_ENV = {"CONFIG_PATH", "GOOGLE_APPLICATION_CREDENTIALS"}
# What the image sets (Dockerfile `ENV`), a build id as `docker build --build-arg` gives it.
IMAGE_ENV = {"TOM_BUILD_ID": "abc1234"}


def test_the_image_carries_its_build_id():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG TOM_BUILD_ID=$", dockerfile, re.M)  # no default: an unset id is refused
    assert re.search(r"^ENV TOM_BUILD_ID=\$\{TOM_BUILD_ID\}$", dockerfile, re.M)


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container_of(deployment: dict) -> dict:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def secret_env() -> dict[str, str]:
    """The environment Secret with the keys secrets.example.yaml shows: numeric ids, a distinct
    32-character-plus value for every other key (tokens must differ)."""
    example = yaml.safe_load((BASE / "secrets.example.yaml").read_text())["stringData"]
    return {key: "1" if key.endswith("_ID") else f"{key.lower()}-placeholder-0123456789abcdef" for key in example}


def secret_keys() -> set[str]:
    return set(secret_env())


def config_from(docs: list[dict], container: dict, extra_env: dict[str, str], tmp_path: Path) -> Settings:
    """Load the config file the container will read: CONFIG_PATH inside its ConfigMap mount, with
    the environment the pod gives it (its env plus the Secret's keys)."""
    config_path = PurePosixPath(next(e["value"] for e in container["env"] if e["name"] == "CONFIG_PATH"))
    spec_volumes = {v["name"]: v for v in container["_volumes"]}
    mount = next(m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == config_path.parent)
    configmap_name = spec_volumes[mount["name"]]["configMap"]["name"]
    configmap = by_kind(docs, "ConfigMap")[configmap_name]
    text = configmap["data"][config_path.name]
    env = dict(IMAGE_ENV)
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    env.update(secret_env())
    env.update(extra_env)
    path = tmp_path / config_path.name
    path.write_text(text)
    return load_settings(path, env=env)


def deployments(docs: list[dict]) -> dict[str, dict]:
    """role (the CLI command) -> Deployment, each container carrying its pod's volumes."""
    out = {}
    for deployment in by_kind(docs, "Deployment").values():
        container = container_of(deployment)
        container["_volumes"] = deployment["spec"]["template"]["spec"].get("volumes", [])
        out[container["args"][0]] = deployment
    return out


def test_rendered_manifests_run_the_config_they_mount(tmp_path):
    docs = render(BASE)
    roles = deployments(docs)
    assert set(roles) == {"worker", "consume", "api"}
    config_text = (REPO / "config" / "dev.yaml").read_text()
    referenced = {m.group(1) for m in _VAR.finditer(config_text)}
    required = {m.group(1) for m in _VAR.finditer(config_text) if m.group(2) is None}
    accounts = by_kind(docs, "ServiceAccount")
    for role, deployment in roles.items():
        pod = deployment["spec"]["template"]["spec"]
        container = container_of(deployment)
        assert pod["serviceAccountName"] in accounts
        settings = config_from(docs, container, {}, tmp_path)
        # Every variable dev.yaml needs is provided; every variable set is one something reads (a
        # TOM_SERVICE_HOST nobody references would pass unnoticed otherwise).
        provided = {e["name"] for e in container["env"]}
        if any(source.get("secretRef", {}).get("name") == "trading-order-management-secrets"
               for source in container.get("envFrom", [])):
            provided |= secret_keys()
        assert required <= provided, (role, required - provided)
        assert {e["name"] for e in container["env"]} <= referenced | PROCESS_ENV, role
        # The Google key file is where GOOGLE_APPLICATION_CREDENTIALS says, from the key Secret.
        key_path = PurePosixPath(next(e["value"] for e in container["env"]
                                      if e["name"] == "GOOGLE_APPLICATION_CREDENTIALS"))
        mount = next(m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == key_path.parent)
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == "trading-order-management-gcp-key"
        assert settings.environment == "development"

    api = roles["api"]
    api_container = container_of(api)
    settings = config_from(docs, api_container, {}, tmp_path)
    ports = {p["name"]: p["containerPort"] for p in api_container["ports"]}
    assert ports["http"] == settings.service.port
    assert settings.service.bind == "0.0.0.0"  # the kubelet probes the pod IP, not loopback
    probes = {kind: api_container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert ports.get(probe["port"], probe["port"]) == settings.service.port
    service = by_kind(docs, "Service")["trading-order-management"]
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    [service_port] = service["spec"]["ports"]
    assert service_port["port"] == settings.service.port and service_port["targetPort"] == "http"
    # service.host is the name clients use: this Service's cluster DNS name.
    assert settings.service.host == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    if settings.database.type == "duckdb":  # one writer per DuckDB file: a second pod would split history
        assert api["spec"]["replicas"] == 1
    else:  # BigQuery: idempotent shared tables; two replicas keep the API up through a rollout
        assert settings.database.type == "bigquery" and api["spec"]["replicas"] >= 2

    worker = roles["worker"]
    worker_pod = worker["spec"]["template"]["spec"]
    assert worker_pod["terminationGracePeriodSeconds"] > GRACEFUL_SHUTDOWN.total_seconds() + DRAIN_MARGIN_S
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert container_of(worker)["args"] == ["worker", "--processes", "1"]  # the HPA scales pods of one process
    versioned = config_from(docs, container_of(worker), {}, tmp_path)
    # The SDK metrics: the one worker process (slot 1) serves on temporal.metrics_bind's port, on
    # the pod's interfaces, and the pod declares that port and the scrape annotations.
    metrics_bind = worker_metrics_bind(versioned.temporal.metrics_bind, 1)
    assert metrics_bind is not None and metrics_bind.startswith("0.0.0.0:")
    metrics_port = int(metrics_bind.rsplit(":", 1)[1])
    assert {p["name"]: p["containerPort"] for p in container_of(worker)["ports"]}["metrics"] == metrics_port
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"
    assert versioned.orders.log_format == "json"  # GKE's log agent parses the lines into fields
    assert versioned.temporal.deployment_name == "trading-order-management"
    config = deployment_config(versioned)
    assert config is not None and config.version.build_id == "abc1234" and config.use_worker_versioning
    with pytest.raises(Exception, match="temporal: deployment_name needs build_id"):
        config_from(docs, container_of(worker), {"TOM_BUILD_ID": ""}, tmp_path)  # built without the arg

    [hpa] = by_kind(docs, "HorizontalPodAutoscaler").values()
    target = hpa["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment" and target["name"] == worker["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert container_of(worker)["resources"]["requests"]["cpu"]  # utilization is a share of the request

    budgets = by_kind(docs, "PodDisruptionBudget").values()
    for role in ("worker", "api"):
        labels = roles[role]["spec"]["template"]["metadata"]["labels"]
        assert any(b["spec"]["selector"]["matchLabels"].items() <= labels.items() for b in budgets), role
    for doc in docs:
        assert doc["metadata"]["namespace"] == "trading-dev"


def strip_key_file(docs: list[dict]) -> list[dict]:
    """The base with what the Workload Identity overlay removes, removed here by name."""
    for deployment in by_kind(docs, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        container = container_of(deployment)
        container["env"] = [e for e in container["env"] if e["name"] != "GOOGLE_APPLICATION_CREDENTIALS"]
        container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "google-cloud-key"]
        pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "google-cloud-key"]
    return docs


def test_workload_identity_overlay_drops_the_key_file_and_nothing_else(tmp_path):
    overlay = render(WORKLOAD_IDENTITY)
    assert overlay == strip_key_file(render(BASE))
    for deployment in by_kind(overlay, "Deployment").values():
        assert "GOOGLE_APPLICATION_CREDENTIALS" not in {e["name"] for e in container_of(deployment)["env"]}
    [account] = by_kind(overlay, "ServiceAccount").values()
    assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")
    # The rendered overlay is what kubectl would send: it passes the same strict schema check.
    files = []
    for i, doc in enumerate(overlay):
        path = tmp_path / f"{i}-{doc['kind']}.yaml"
        path.write_text(yaml.safe_dump(doc))
        files.append(str(path))
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", "1.30.0", *files],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(overlay)


def test_the_renderer_refuses_what_it_cannot_render_and_fails_a_broken_patch(tmp_path):
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: b\n")
    (tmp_path / "kustomization.yaml").write_text("resources: [cm.yaml]\nnamePrefix: x-\n")
    with pytest.raises(RenderError, match="namePrefix"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\npatches:\n- target: {kind: ConfigMap}\n"
        "  patch: '[{op: test, path: /data/a, value: z}]'\n")
    with pytest.raises(RenderError, match="test failed"):
        render(tmp_path)
    (tmp_path / "app.yaml").write_text("name: dev\n")
    (tmp_path / "kustomization.yaml").write_text(
        "namespace: n\nresources: [cm.yaml]\nconfigMapGenerator:\n- name: cfg\n  files: [app.yaml]\n"
        "patches:\n- patch: |\n    apiVersion: v1\n    kind: ConfigMap\n    metadata: {name: c}\n    data: {e: f}\n")
    docs = render(tmp_path)
    configmaps = by_kind(docs, "ConfigMap")
    assert configmaps["c"]["data"] == {"a": "b", "e": "f"}
    [generated] = [name for name in configmaps if name.startswith("cfg-")]
    assert configmaps[generated]["data"] == {"app.yaml": "name: dev\n"}
    assert all(d["metadata"]["namespace"] == "n" for d in docs)


def pod_ip() -> str | None:
    """This machine's address on its outward interface (what a pod IP is to the kubelet); None
    where only loopback exists."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent by a UDP connect
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


async def test_the_api_pod_serves_its_probes_on_the_pod_address(temporal_env, redis_url, bigquery_emulator, tmp_path):
    """`tom api` as the API pod runs it: the ConfigMap's dev.yaml, the pod's environment, probes
    asked on the pod's address (not loopback), both answering 200. Two values are moved for this
    machine: the BigQuery endpoint (the local emulator, a dataset of its own) and the port (8004 may
    be taken here)."""
    import asyncio
    import os

    import httpx

    from tests.conftest import free_port, stop_api, wait_for_http

    ip = pod_ip()
    if ip is None:
        pytest.skip("no non-loopback interface on this machine to probe")
    docs = render(BASE)
    api = container_of(deployments(docs)["api"])
    text = by_kind(docs, "ConfigMap")["trading-order-management-config"]["data"]["dev.yaml"]
    port = free_port()
    assert text.count("  dataset: order_management\n") == 1 and text.count("  port: 8004\n") == 1
    dataset = f"k8s_{port}"  # BigQuery on the local emulator instead of Google's endpoint
    text = text.replace("  dataset: order_management\n", f"  dataset: {dataset}\n  emulator_host: {bigquery_emulator}\n")
    text = text.replace("  port: 8004\n", f"  port: {port}\n")
    config = tmp_path / "dev.yaml"
    config.write_text(text)
    redis_host, redis_port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    env = {**os.environ, **IMAGE_ENV, **{e["name"]: e["value"] for e in api["env"] if "value" in e},
           **secret_env(), "CONFIG_PATH": str(config), "REDIS_HOST": redis_host,
           "REDIS_PORT": redis_port, "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
           "TEMPORAL_NAMESPACE": "default"}
    env.pop("REDIS_PASSWORD")  # this machine's redis-server has none
    log_path = tmp_path / "api.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "api"], stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=REPO, start_new_session=True)
    try:
        probes = {kind: api[kind]["httpGet"]["path"] for kind in ("livenessProbe", "readinessProbe")}
        await asyncio.to_thread(wait_for_http, f"http://{ip}:{port}{probes['livenessProbe']}", 90, proc)
        deadline = asyncio.get_running_loop().time() + 90
        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                ready = await http.get(f"http://{ip}:{port}{probes['readinessProbe']}")
                if ready.status_code == 200:
                    break
                assert asyncio.get_running_loop().time() < deadline, ready.text
                await asyncio.sleep(0.5)
            assert (await http.get(f"http://{ip}:{port}{probes['livenessProbe']}")).status_code == 200
        assert ready.json()["ready"] is True
    finally:
        await asyncio.to_thread(stop_api, proc, log_path)
    # dev.yaml logs JSON: every line the pod wrote, uvicorn's own included, is one object.
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    assert any(line["logger"].startswith("uvicorn") for line in lines), lines
