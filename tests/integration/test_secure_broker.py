"""frwatch on a secured broker (SASL_SSL/SCRAM, mTLS, ACLs): what works and how it fails."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from conftest import SecureKafka
from kafka_broker import kafka_acls, printed_acl_args
from scenarios import scenario_archive
from worker_harness import (
    REPO,
    Worker,
    committed_offsets,
    frwatch,
    frwatch_env,
    replay_alerts,
    wait_for,
)

from streams.kafka_config import load_kafka_config

pytestmark = pytest.mark.integration


def run(args: list[str], env: dict[str, str], timeout: float = 60.0) -> tuple[int, str, float]:
    """A frwatch command: exit code, stderr, seconds."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli.main", *args],
        env=env,
        capture_output=True,
        timeout=timeout,
        cwd=REPO,
    )
    return proc.returncode, proc.stderr.decode(), time.monotonic() - started


def secure_env(
    kafka: SecureKafka, name: str, user: str, bootstrap: str | None = None
) -> dict[str, str]:
    return frwatch_env(
        bootstrap or kafka.bootstrap,
        name,
        FRWATCH_KAFKA_CONFIG=str(kafka.client_config(user)),
    )


def grant(kafka: SecureKafka, env: dict[str, str], *flags: str) -> list[str]:
    """Apply what `frwatch acls` prints, with the Kafka CLI; returns the printed commands."""
    printed = frwatch(["acls", *flags], env).stdout.decode().splitlines()
    commands = [line for line in printed if line.startswith("kafka-acls.sh ")]
    assert commands
    for line in commands:
        kafka_acls(kafka.run_dir, printed_acl_args(line))
    return commands


def password_of(kafka: SecureKafka, user: str) -> str:
    for line in kafka.client_config(user).read_text().splitlines():
        if line.startswith("sasl.password="):
            return line.partition("=")[2]
    raise AssertionError(f"no password for {user}")


@pytest.mark.parametrize("transport", ["sasl_ssl", "mtls"])
def test_worker_with_the_printed_acls_gives_the_replay_alerts(
    secure_kafka: SecureKafka, unique_name: str, tmp_path: Path, transport: str
) -> None:
    kafka = secure_kafka
    admin = secure_env(kafka, unique_name, "admin")
    frwatch(["topics", "create"], admin)
    grant(kafka, admin, "--principal", "User:worker")
    grant(kafka, admin, "--role", "analyst", "--principal", "User:analyst")
    accounts, events = scenario_archive(tmp_path, hours=1)
    frwatch(["accounts", "load", str(accounts)], admin)
    frwatch(["publish", str(events)], admin)
    expected, _ = replay_alerts(events, accounts, admin)
    expected_ids = {a["alert_id"] for a in expected}
    assert expected_ids

    if transport == "mtls":
        worker_env = secure_env(kafka, unique_name, "mtls", kafka.mtls_bootstrap)
    else:
        worker_env = secure_env(kafka, unique_name, "worker")
    worker = Worker(worker_env, tmp_path / "worker").start()
    try:
        analyst = secure_env(kafka, unique_name, "analyst")

        seen: set[str] = set()

        def all_alerts() -> bool:
            proc = frwatch(
                ["alerts", "tail", "--from-beginning", "--json", "--idle-exit", "2"], analyst
            )
            seen.update(orjson.loads(x)["alert_id"] for x in proc.stdout.splitlines() if x)
            return seen >= expected_ids

        wait_for(all_alerts, 120, "every replay alert on the alerts topic", worker)
        assert seen == expected_ids
        metrics_text = worker.metrics_text() or ""
        assert "frwatch_events_total" in metrics_text
    finally:
        worker.stop()
    log = worker.log_path.read_text(errors="replace")
    if transport == "sasl_ssl":  # SPEC 6.1: not in logs, metrics, --help or dead letters
        secret = password_of(kafka, "worker")
        assert secret not in log and secret not in metrics_text
        for args in (["--help"], ["worker", "--help"], ["publish", "--help"]):
            assert secret not in frwatch(args, worker_env).stdout.decode()
        letters = subprocess.run(
            ["kcat", "-F", str(kafka.client_config("admin-plain")), "-b", kafka.bootstrap, "-q",
             "-C", "-t", f"{unique_name}.dlq", "-o", "beginning", "-e"],
            capture_output=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        assert b'"reason"' in letters and secret.encode() not in letters

    kcat = shutil.which("kcat")
    assert kcat is not None, "kcat is not installed (make deps installs Debian's kcat)"
    # the same file with SASL PLAIN: Debian's kcat (librdkafka 2.0.2) fails SCRAM against
    # Kafka 4.x (fixed in librdkafka 2.6.1, confluentinc/librdkafka#4895)
    analyst_file = kafka.client_config("analyst-plain")
    base = [kcat, "-F", str(analyst_file), "-b", kafka.bootstrap, "-q"]
    read = subprocess.run(
        [*base, "-C", "-t", f"{unique_name}.alerts", "-o", "beginning", "-e"],
        capture_output=True,
        timeout=60,
    )
    assert read.returncode == 0, read.stderr
    assert {orjson.loads(x)["alert_id"] for x in read.stdout.splitlines() if x} == expected_ids
    refused = subprocess.run(
        [*base, "-C", "-t", f"{unique_name}.requests", "-o", "beginning", "-e"],
        capture_output=True,
        timeout=60,
    )
    assert refused.returncode != 0 or not refused.stdout


def _bad_config(kafka: SecureKafka, tmp_path: Path, name: str, **changes: str | None) -> Path:
    lines = []
    for line in kafka.client_config("worker").read_text().splitlines():
        key = line.partition("=")[0]
        if key in changes:
            if changes[key] is not None:
                lines.append(f"{key}={changes[key]}")
            continue
        lines.append(line)
    path = tmp_path / f"{name}.properties"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_refused_logins_are_one_line_naming_the_broker(
    secure_kafka: SecureKafka, unique_name: str, tmp_path: Path
) -> None:
    kafka = secure_kafka
    other_ca = tmp_path / "other-ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(tmp_path / "k"), "-out", str(other_ca), "-days", "1",
         "-subj", "/CN=other"],
        check=True, capture_output=True,
    )  # fmt: skip
    no_cert = tmp_path / "no-cert.properties"
    no_cert.write_text(f"security.protocol=ssl\nssl.ca.location={kafka.run_dir / 'ca.pem'}\n")
    cases = [
        ("wrong-password", _bad_config(kafka, tmp_path, "pw", **{"sasl.password": "wrong"}),
         kafka.bootstrap, "authentication failed"),
        ("unknown-user", _bad_config(kafka, tmp_path, "user", **{"sasl.username": "ghost"}),
         kafka.bootstrap, "authentication failed"),
        ("untrusted-ca", _bad_config(kafka, tmp_path, "ca", **{"ssl.ca.location": str(other_ca)}),
         kafka.bootstrap, "TLS certificate is not accepted"),
        ("no-client-cert", no_cert, kafka.mtls_bootstrap, "client certificate"),
    ]  # fmt: skip
    port = kafka.bootstrap.rpartition(":")[2]
    alias = socket.gethostname()
    try:
        aliased = alias not in ("localhost",) and socket.gethostbyname(alias) == "127.0.0.1"
    except OSError:
        aliased = False
    if aliased:  # a name of 127.0.0.1 that the broker's certificate does not hold
        cases.append(("hostname", kafka.client_config("worker"), f"{alias}:{port}",
                      "Hostname mismatch"))  # fmt: skip
    secret = password_of(kafka, "worker")
    for label, config, bootstrap, reason in cases:
        env = frwatch_env(bootstrap, unique_name, FRWATCH_KAFKA_CONFIG=str(config))
        for args in (["alerts", "tail", "--idle-exit", "1"], ["topics", "create"]):
            code, err, seconds = run(args, env)
            lines = err.strip().splitlines()
            assert code == 2, (label, err)
            assert len(lines) == 1, (label, err)
            assert f"broker {bootstrap}" in lines[0] and reason in lines[0], (label, err)
            assert seconds < 30
            assert secret not in err
        worker = Worker(env, tmp_path / label)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "streams.cli.main", "worker"],
            env=worker.env, capture_output=True, timeout=60, cwd=REPO,
        )  # fmt: skip
        assert proc.returncode == 2, (label, proc.stderr)
        assert reason in proc.stderr.decode()
        assert time.monotonic() - started < 30


def test_missing_acls_name_the_topic_and_operation(
    secure_kafka: SecureKafka, unique_name: str, tmp_path: Path
) -> None:
    kafka = secure_kafka
    frwatch(["topics", "create"], secure_env(kafka, unique_name, "admin"))
    code, err, _ = run(
        ["alerts", "tail", "--idle-exit", "1"], secure_env(kafka, unique_name, "nobody")
    )
    assert code == 2
    assert err.strip() == (
        f"frwatch alerts tail: error: not authorised to read topic {unique_name}.alerts "
        "(TopicAuthorizationFailedError)"
    )
    archive = tmp_path / "one.jsonl"
    archive.write_text('{"event_id": "e1"}\n')
    code, err, _ = run(["publish", str(archive)], secure_env(kafka, unique_name, "analyst"))
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert f"not authorised to write topic {unique_name}.requests" in err

    nobody = secure_env(kafka, unique_name, "nobody")
    nobody["FRWATCH_WEB_PORT"] = str(Worker(nobody, tmp_path / "w").port)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli.main", "worker"],
        env=nobody, capture_output=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.decode().strip() == (
        f"frwatch worker: error: not authorised to use topic {unique_name}.accounts, "
        f"{unique_name}.alerts, {unique_name}.dlq, {unique_name}.exceptions, "
        f"{unique_name}.requests "
        "(TopicAuthorizationFailedError; see `frwatch acls`)"
    )
    assert time.monotonic() - started < 30


def test_a_worker_that_may_not_write_alerts_stops_and_commits_nothing_past(
    secure_kafka: SecureKafka, unique_name: str, tmp_path: Path
) -> None:
    """SPEC 6.1: Write refused on the alert topic: exit 1 naming it; after the grant, all."""
    kafka = secure_kafka
    admin = secure_env(kafka, unique_name, "admin")
    frwatch(["topics", "create"], admin)
    grant(kafka, admin, "--principal", "User:worker")
    alerts = f"{unique_name}.alerts"
    acl = ["--allow-principal", "User:worker", "--topic", alerts]
    kafka_acls(kafka.run_dir, ["--remove", "--force", *acl, "--operation", "Write"])
    kafka_acls(kafka.run_dir, ["--add", *acl, "--operation", "Describe"])  # it may see it
    accounts, events = scenario_archive(tmp_path, hours=1)
    frwatch(["accounts", "load", str(accounts)], admin)
    frwatch(["publish", str(events)], admin)
    expected, _ = replay_alerts(events, accounts, admin)
    expected_ids = {a["alert_id"] for a in expected}
    total = len(events.read_bytes().splitlines())

    worker_env = secure_env(kafka, unique_name, "worker")
    worker = Worker(worker_env, tmp_path / "w1").start()
    assert worker.proc is not None
    try:
        code = worker.proc.wait(timeout=120)
    finally:
        worker.kill()
    log = worker.log_path.read_text(errors="replace")
    assert code == 1, worker.log_tail(40)
    assert f"refused a write to {alerts} for good: TopicAuthorizationFailedError" in log
    client = load_kafka_config(admin["FRWATCH_KAFKA_CONFIG"]).aiokafka_kwargs()
    committed = committed_offsets(kafka.bootstrap, unique_name, f"{unique_name}.requests", client)
    assert committed < total

    kafka_acls(kafka.run_dir, ["--add", *acl, "--operation", "Write"])
    worker = Worker(worker_env, tmp_path / "w2").start()
    try:
        wait_for(
            lambda: set(alert_ids_on_topic_as(admin, alerts)) >= expected_ids,
            120,
            "every replay alert after the grant",
            worker,
        )
    finally:
        worker.stop()
    assert set(alert_ids_on_topic_as(admin, alerts)) == expected_ids
    print(f"alerts Write refused: exit {code}, {committed} of {total} records committed")


def alert_ids_on_topic_as(env: dict[str, str], topic: str) -> list[str]:
    """alert ids on the topic, read with `frwatch alerts tail` as the env's principal."""
    proc = frwatch(
        ["alerts", "tail", "--from-beginning", "--json", "--status", "open", "--idle-exit", "2"],
        env,
    )
    return [orjson.loads(x)["alert_id"] for x in proc.stdout.splitlines() if x]
