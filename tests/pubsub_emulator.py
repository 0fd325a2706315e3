"""gcloud's Pub/Sub emulator for tests: a session fixture, and helpers that read topics back.

The emulator is the jar gcloud ships (`platform/pubsub-emulator/lib/cloud-pubsub-emulator-*.jar`
under `gcloud info --format='value(installation.sdk_root)'`), run with Java on a free port.
Where Java or the jar is absent the tests skip saying which; under CI=true they fail instead (CI
here has both). `PUBSUB_EMULATOR_HOST` is set for the session, so the real google-cloud-pubsub
client, in this process and in the `tom` processes the tests start, talks to it.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

JAR_UNDER_SDK = "platform/pubsub-emulator/lib/cloud-pubsub-emulator-0.8.20-all.jar"
PROJECT = "tom-test"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"Pub/Sub emulator tests cannot run: {reason} (CI must have it)")
    pytest.skip(f"Pub/Sub emulator tests skipped: {reason}")


def find_emulator_jar() -> tuple[str, Path]:
    """(java, jar), or skip (fail under CI) naming what is missing."""
    java = shutil.which("java")
    if java is None:
        _unavailable("no `java` on PATH (the emulator is a Java 17 jar)")
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        _unavailable("no `gcloud` on PATH (its SDK root holds the emulator jar)")
    # gcloud is <sdk root>/bin/gcloud: look there first (`gcloud info` takes seconds), then ask it.
    jar = Path(gcloud).resolve().parent.parent / JAR_UNDER_SDK
    if jar.exists():
        return java, jar
    root = subprocess.run([gcloud, "info", "--format=value(installation.sdk_root)"], capture_output=True,
                          text=True, timeout=60).stdout.strip()
    jar = Path(root) / JAR_UNDER_SDK
    if not root or not jar.exists():
        _unavailable(f"the emulator jar is not at {jar} (gcloud component pubsub-emulator)")
    return java, jar


@dataclass
class PubSubEmulator:
    host: str  # host:port, as PUBSUB_EMULATOR_HOST wants it
    project: str = PROJECT


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory) -> Iterator[PubSubEmulator]:
    java, jar = find_emulator_jar()
    port = free_port()
    log = tmp_path_factory.mktemp("pubsub") / "emulator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([java, "-jar", str(jar), "--host=127.0.0.1", f"--port={port}"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    previous = os.environ.get("PUBSUB_EMULATOR_HOST")
    try:
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None, f"the Pub/Sub emulator exited: {log.read_text()[-2000:]}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.time() < deadline, "the Pub/Sub emulator did not listen within 60 s"
                time.sleep(0.1)
        os.environ["PUBSUB_EMULATOR_HOST"] = f"127.0.0.1:{port}"
        yield PubSubEmulator(f"127.0.0.1:{port}")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if previous is None:
        os.environ.pop("PUBSUB_EMULATOR_HOST", None)
    else:
        os.environ["PUBSUB_EMULATOR_HOST"] = previous


def pubsub_messaging(base: dict, emulator: PubSubEmulator, **overrides) -> dict:
    """A `messaging` section on the emulator, with topic names of its own (a fresh prefix)."""
    return {**base, "type": "pubsub", "project": emulator.project,
            "topic_prefix": f"t{uuid.uuid4().hex[:8]}-", "claim_idle_ms": 10_000, **overrides}


@dataclass
class Received:
    data: bytes
    attributes: dict[str, str]
    ordering_key: str
    message_id: str


def subscribe_topic(project: str, topic: str, name: str, ordered: bool = False) -> str:
    """A subscription of the test's own on `topic` (created with the topic if missing): messages
    published from now on are kept for it."""
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    try:
        try:
            publisher.create_topic(name=f"projects/{project}/topics/{topic}")
        except AlreadyExists:
            pass
        path = f"projects/{project}/subscriptions/{name}"
        subscriber.create_subscription(request={"name": path, "topic": f"projects/{project}/topics/{topic}",
                                                "enable_message_ordering": ordered, "ack_deadline_seconds": 60})
        return path
    finally:
        subscriber.close()
        publisher.stop()


def drain(subscription: str, at_least: int, timeout: float = 30.0, quiet_s: float = 1.0) -> list[Received]:
    """Pull and acknowledge until at least `at_least` messages came and then `quiet_s` passed
    without another (so extra copies would be seen too)."""
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    got: list[Received] = []
    deadline = time.time() + timeout
    last = time.time()
    try:
        while True:
            try:
                response = subscriber.pull(request={"subscription": subscription, "max_messages": 100}, timeout=2)
                messages = response.received_messages
            except Exception:  # DeadlineExceeded on an empty pull
                messages = []
            if messages:
                last = time.time()
                got += [Received(m.message.data, dict(m.message.attributes), m.message.ordering_key,
                                 m.message.message_id) for m in messages]
                subscriber.acknowledge(request={"subscription": subscription,
                                                "ack_ids": [m.ack_id for m in messages]})
            elif len(got) >= at_least and time.time() - last >= quiet_s:
                return got
            if time.time() > deadline:
                assert len(got) >= at_least, f"{len(got)} messages on {subscription}, expected {at_least}"
                return got
            if not messages:
                time.sleep(0.1)
    finally:
        subscriber.close()
