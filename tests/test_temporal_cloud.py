"""A Temporal cluster or Temporal Cloud as GKE uses it: TLS and mTLS for every client the platform
creates, the search attributes a namespace needs (`tom temporal-setup`, the worker's refusal), and
worker versioning on the dev server.

The dev server has no TLS of its own: tests/tls_front.py terminates TLS in front of it with
certificates made here, so the client side (rustls, certificate checks, client certificates) is
the real one. What cannot run here: Temporal Cloud's API-key check itself (the front does not read
the gRPC `authorization` header).
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from temporalio.api.enums.v1 import VersioningBehavior as VersioningBehaviorProto
from temporalio.api.workflowservice.v1 import (
    DescribeWorkerDeploymentRequest,
    SetWorkerDeploymentCurrentVersionRequest,
)
from temporalio.service import TLSConfig
from temporalio.testing import WorkflowEnvironment

from config.settings import ConfigError, Settings, load_settings
from oms.models import OrderState
from tests.conftest import REPO
from tests.helpers import local_activity_calls, make_signal, start_order
from tests.tls_front import SERVER_NAME, CertificateAuthority, TLSFront
from workers.runtime import SEARCH_ATTRIBUTES, connect_temporal, find_binary, temporal_tls
from workers.worker import running_worker


def dev_server_address(env: WorkflowEnvironment) -> tuple[str, int]:
    host, _, port = env.client.service_client.config.target_host.rpartition(":")
    return host, int(port)


def with_temporal(settings: Settings, **temporal) -> Settings:
    return settings.with_overrides(temporal={**settings.temporal.model_dump(mode="json"), **temporal})


async def cannot_connect(settings: Settings) -> str:
    try:
        await asyncio.wait_for(connect_temporal(settings), 30)
    except asyncio.TimeoutError:
        pytest.fail("connect neither succeeded nor failed within 30 s")
    except Exception as exc:  # the SDK raises RuntimeError("Failed client connect: ...")
        return str(exc)
    pytest.fail("connected without the credentials the front requires")


async def test_every_client_speaks_mtls_and_is_refused_without_a_trusted_certificate(temporal_env, settings,
                                                                                     tmp_path):
    ca = CertificateAuthority(tmp_path)
    server = ca.issue("server", server=True)
    worker_cert = ca.issue("tom-worker", server=False)
    rogue = CertificateAuthority(tmp_path, name="rogue CA").issue("rogue-worker", server=False)
    async with TLSFront(dev_server_address(temporal_env), server, client_ca=ca.issued.cert) as front:
        mtls = with_temporal(settings, address=front.address, tls={
            "client_cert_path": str(worker_cert.cert), "client_key_path": str(worker_cert.key),
            "server_ca_path": str(ca.issued.cert), "server_name": SERVER_NAME})
        assert mtls.temporal.uses_tls
        client = await asyncio.wait_for(connect_temporal(mtls), 30)
        assert await client.count_workflows() is not None  # a real call through the front
        assert "tom-worker" in front.peer_names  # the front saw our client certificate

        # The CLI (any process the platform runs) connects the same way: its config file, mTLS.
        config_file = tmp_path / "mtls.yaml"
        config_file.write_text(mtls.to_yaml())
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "workers.cli", "--config", str(config_file), "temporal-setup", "--check",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert "are registered (Keyword)" in out.decode()

        no_client_cert = with_temporal(settings, address=front.address, tls={
            "server_ca_path": str(ca.issued.cert), "server_name": SERVER_NAME})
        await cannot_connect(no_client_cert)
        foreign_cert = with_temporal(settings, address=front.address, tls={
            "client_cert_path": str(rogue.cert), "client_key_path": str(rogue.key),
            "server_ca_path": str(ca.issued.cert), "server_name": SERVER_NAME})
        await cannot_connect(foreign_cert)
        # The server is checked too: without our CA, the system roots do not trust the front.
        untrusted_server = with_temporal(settings, address=front.address, tls={
            "client_cert_path": str(worker_cert.cert), "client_key_path": str(worker_cert.key),
            "server_name": SERVER_NAME})
        await cannot_connect(untrusted_server)


async def test_an_api_key_implies_tls(temporal_env, settings, tmp_path):
    ca = CertificateAuthority(tmp_path)
    async with TLSFront(dev_server_address(temporal_env), ca.issue("server", server=True)) as front:
        with_key = with_temporal(settings, address=front.address, api_key="tcloud-key",
                                 tls={"server_ca_path": str(ca.issued.cert), "server_name": SERVER_NAME})
        client = await asyncio.wait_for(connect_temporal(with_key), 30)
        assert await client.count_workflows() is not None and front.handshakes >= 1
        assert client.service_client.config.api_key == "tcloud-key"

    # Temporal Cloud's own endpoint: the API key alone turns TLS on against the system roots.
    cloud = with_temporal(settings, address="trading.a1b2c.tmprl.cloud:7233", api_key="k")
    assert temporal_tls(cloud) is True
    assert temporal_tls(settings) is False
    mtls_files = with_temporal(settings, tls={"server_ca_path": str(ca.issued.cert)})
    built = temporal_tls(mtls_files)
    assert isinstance(built, TLSConfig) and built.server_root_ca_cert == ca.issued.cert.read_bytes()


@pytest.mark.parametrize(("temporal_yaml", "message"), [
    ("  api_key: k\n  tls: false\n", "temporal: api_key is sent only over TLS"),
    ("  tls:\n    client_cert_path: /nonexistent/tls.crt\n    client_key_path: /nonexistent/tls.key\n",
     "temporal.tls.client_cert_path: file not found"),
    ("  tls:\n    client_cert_path: {cert}\n", "client_cert_path and client_key_path go together"),
    ("  deployment_name: trading-order-management\n", "deployment_name needs build_id"),
    ("  deployment_name: trading.order\n  build_id: b1\n", "temporal.deployment_name: must match"),
    ("  build_id: b1\n", "build_id needs deployment_name"),
])
def test_temporal_security_and_versioning_keys_are_checked_at_load(tmp_path, temporal_yaml, message):
    cert = tmp_path / "tls.crt"
    cert.write_text("pem")
    path = tmp_path / "c.yaml"
    path.write_text("temporal:\n" + temporal_yaml.format(cert=cert))
    with pytest.raises(ConfigError) as error:
        load_settings(path, env={})
    assert message in str(error.value) and "\n" not in str(error.value)


# --- search attributes --------------------------------------------------------------------------
def run_tom(config_file, *args, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.cli", "--config", str(config_file), *args],
                          capture_output=True, text=True, timeout=timeout)


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
async def bare_server():
    """A dev server whose `bare` namespace has none of the platform's search attributes and whose
    `default` namespace has `Symbol` as Text (a wrong type)."""
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest

    env = await WorkflowEnvironment.start_local(dev_server_existing_path=find_binary("temporal"), ui=False,
                                                dev_server_extra_args=["--namespace", "bare"])
    await env.client.operator_service.add_search_attributes(AddSearchAttributesRequest(
        namespace="default", search_attributes={"Symbol": IndexedValueType.INDEXED_VALUE_TYPE_TEXT}))
    yield env
    await env.shutdown()


async def test_worker_refuses_a_namespace_without_the_search_attributes_until_temporal_setup(
        bare_server, settings, tmp_path):
    address = bare_server.client.service_client.config.target_host
    bare = tmp_path / "bare.yaml"
    bare.write_text(with_temporal(settings, address=address, namespace="bare").to_yaml())
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(with_temporal(settings, address=address, namespace="default").to_yaml())

    refused = await asyncio.to_thread(run_tom, bare, "worker")
    assert refused.returncode == 1
    assert one_line(refused) == ("tom worker: namespace bare: missing search attributes "
                                 f"{', '.join(SEARCH_ATTRIBUTES)} (register them with `tom temporal-setup`)")
    # `--check` reports as the worker refuses (the same check): here a wrong type and the rest missing.
    checked = await asyncio.to_thread(run_tom, wrong, "temporal-setup", "--check")
    assert checked.returncode == 1
    assert one_line(checked) == ("tom temporal-setup: namespace default: missing search attributes OrderState, "
                                 "Exchange, StrategyId, ParentOrderId; search attributes Symbol are not Keyword "
                                 "(register them with `tom temporal-setup`)")
    absent = tmp_path / "absent.yaml"
    absent.write_text(with_temporal(settings, address=address, namespace="no-such-namespace").to_yaml())
    unknown = await asyncio.to_thread(run_tom, absent, "temporal-setup")
    assert unknown.returncode == 1
    assert one_line(unknown).startswith("tom temporal-setup: namespace no-such-namespace: cannot list its search "
                                        "attributes (NOT_FOUND"), unknown.stderr
    registered = await asyncio.to_thread(run_tom, bare, "temporal-setup")
    assert registered.returncode == 0, registered.stderr
    assert registered.stdout.strip() == f"namespace bare: registered {', '.join(SEARCH_ATTRIBUTES)} (Keyword)"
    # A wrong type is an operator's decision: refused, never changed behind their back.
    not_changed = await asyncio.to_thread(run_tom, wrong, "temporal-setup")
    assert not_changed.returncode == 1 and "Symbol are not Keyword; remove them" in one_line(not_changed)

    # With the attributes registered, the same worker starts, then drains on SIGTERM.
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        # One process: the supervisor of several is not what this checks (and a SIGTERM before a
        # child has installed its handlers is that supervisor's own race).
        worker = subprocess.Popen([sys.executable, "-m", "workers.cli", "--config", str(bare), "worker",
                                   "--processes", "1"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        while "worker on task queue" not in log_path.read_text():
            assert worker.poll() is None, log_path.read_text()
            assert time.time() < deadline, log_path.read_text()
            await asyncio.sleep(0.2)
        assert "version unversioned" in log_path.read_text()
    finally:
        worker.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.wait, 60)
    assert code == 0, log_path.read_text()


# --- worker versioning ---------------------------------------------------------------------------
async def current_after_registering(client, namespace: str, deployment: str, build_id: str) -> None:
    """Make <deployment>.<build_id> current once its worker has registered (the operator's
    `temporal worker deployment set-current-version`)."""
    deadline = time.time() + 60
    while True:
        try:
            described = await client.workflow_service.describe_worker_deployment(
                DescribeWorkerDeploymentRequest(namespace=namespace, deployment_name=deployment))
            versions = {s.deployment_version.build_id for s in described.worker_deployment_info.version_summaries}
            if build_id in versions:
                await client.workflow_service.set_worker_deployment_current_version(
                    SetWorkerDeploymentCurrentVersionRequest(namespace=namespace, deployment_name=deployment,
                                                             build_id=build_id))
                return
        except Exception:
            if time.time() > deadline:
                raise
        assert time.time() < deadline, f"version {deployment}.{build_id} never registered"
        await asyncio.sleep(0.2)


async def test_a_running_order_moves_to_the_new_worker_version_auto_upgrade(temporal_env, fast_settings, redis,
                                                                            task_queue):
    client = temporal_env.client
    deployment = f"tom-{uuid.uuid4().hex[:8]}"
    v1 = with_temporal(fast_settings, deployment_name=deployment, build_id="build-1")
    v2 = with_temporal(fast_settings, deployment_name=deployment, build_id="build-2")
    async with running_worker(client, v1, redis):
        await current_after_registering(client, "default", deployment, "build-1")
        handle = await start_order(client, task_queue,
                                   make_signal(order_type="limit", limit_price="1000.00", quantity="0.1"))
        from tests.test_workflow_lifecycle import wait_for_state

        await wait_for_state(handle, {OrderState.ACCEPTED})
        info = (await handle.describe()).raw_description.workflow_execution_info.versioning_info
        assert info.behavior == VersioningBehaviorProto.VERSIONING_BEHAVIOR_AUTO_UPGRADE
        assert info.deployment_version.build_id == "build-1"

        # The rollout: the new version's workers start beside the old ones, then become current.
        async with running_worker(client, v2, redis):
            await current_after_registering(client, "default", deployment, "build-2")
            await handle.signal("cancel", {"reason": "rollout test"})
            snapshot = await asyncio.wait_for(handle.result(), 60)
            assert snapshot.state == OrderState.CANCELLED
            info = (await handle.describe()).raw_description.workflow_execution_info.versioning_info
            assert info.deployment_version.build_id == "build-2"  # finished on the new code
            # Under versioning, the venue calls are recorded as on an unversioned worker.
            calls = [name for name, _ in await local_activity_calls(handle) if name.startswith("venue_")]
            assert calls[0] == "venue_submit" and "venue_cancel" in calls, calls
