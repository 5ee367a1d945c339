"""Shared pytest fixtures for frwatch.

``kafka_bootstrap`` gives tests a real Kafka broker: one per test session, started
through deploy/kafka/broker on free ports in a temp run dir and always stopped at
session end. Set FRWATCH_TEST_BROKER=host:port to use an existing broker instead.
A broker that cannot be started is an error, never a skip.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))  # works with any --import-mode
from kafka_broker import BrokerError, start_broker, stop_broker

EXTERNAL_BROKER_ENV = "FRWATCH_TEST_BROKER"

# one Hypothesis profile for every property test: a test's first examples run while imports
# and caches warm up (and beside a broker on a busy machine), so neither a deadline nor the
# too_slow health check may fail a test that is only slow to start
settings.register_profile(
    "frwatch", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("frwatch")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "integration: needs a real Kafka broker "
        f"(started by the session fixture, or set {EXTERNAL_BROKER_ENV}=host:port)",
    )


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address "127.0.0.1:PORT" of a running Kafka broker."""
    external = os.environ.get(EXTERNAL_BROKER_ENV, "").strip()
    if external:
        yield external
        return
    run_dir = tmp_path_factory.mktemp("kafka-broker")
    try:
        try:
            bootstrap = start_broker(run_dir)
        except BrokerError as exc:
            error = str(exc)
        else:
            error = ""
        if error:  # fail (not skip), outside the except block to keep the report short
            pytest.fail(f"could not start a Kafka broker for the tests:\n{error}", pytrace=False)
        yield bootstrap
    finally:
        stop_broker(run_dir)  # always; a failure here is reported as a teardown error


@dataclass(frozen=True)
class SecureKafka:
    """A secured broker: SASL_SSL bootstrap, mTLS bootstrap, and its run dir (client-*.properties)."""

    bootstrap: str
    mtls_bootstrap: str
    run_dir: Path

    def client_config(self, user: str) -> Path:
        """client-<user>.properties: admin, worker, analyst, nobody or mtls."""
        return self.run_dir / f"client-{user}.properties"


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    """One secured broker (`deploy/kafka/broker up --secure`) for the session."""
    run_dir = tmp_path_factory.mktemp("kafka-secure")
    try:
        try:
            bootstrap = start_broker(run_dir, secure=True)
        except BrokerError as exc:
            error = str(exc)
        else:
            error = ""
        if error:
            pytest.fail(f"could not start a secured Kafka broker:\n{error}", pytrace=False)
        host, _, port = bootstrap.rpartition(":")
        yield SecureKafka(bootstrap, f"{host}:{int(port) + 1}", run_dir.resolve())
    finally:
        stop_broker(run_dir)


@pytest.fixture
def unique_name() -> str:
    """A short unique name for topics and consumer groups, e.g. "t-3f9c2a7b1d"."""
    return f"t-{uuid.uuid4().hex[:10]}"
