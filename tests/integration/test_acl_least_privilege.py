"""`frwatch acls` is enough for a worker, and every grant it prints is needed (issue 15).

Each test uses its own app id and topics (`unique_name`), so the only ACLs that cover
them are the ones the test applies: what `broker up --secure` pre-grants to User:worker
is for the app id `frwatch`, and other tests grant on their own unique names.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SecureKafka
from kafka_broker import kafka_acls, printed_acl_args
from scenarios import scenario_archive
from test_secure_broker import alert_ids_on_topic_as, secure_env
from worker_harness import Worker, free_port, frwatch, wait_for

pytestmark = pytest.mark.integration

PRINCIPAL = "User:worker"

# Every grant `frwatch acls` prints for a worker, named with APP for the app id. Each one
# is removed in turn below; EXERCISED lists what that removal must break.
EXERCISED = {
    "topic APP.requests Read": "requests",
    "topic APP.accounts Read": "accounts",
    "topic APP.alerts Write": "alerts",
    "topic APP.dlq Write": "dlq",
    "topic APP.exceptions Read": "exceptions",  # every worker's exception feed (SPEC 4.4)
    "topic APP.rules Read": "rules",  # with FRWATCH_RULES=kafka: (SPEC 4.3)
    "group APP Read": "group",
    "prefixed topic APP- Create,Read,Write,Describe": "internal",
}


def printed_grants(env: dict[str, str], name: str) -> dict[str, list[str]]:
    """`frwatch acls` for PRINCIPAL, by grant label; values are kafka-acls arguments."""
    out = frwatch(["acls", "--principal", PRINCIPAL], env).stdout.decode().splitlines()
    grants: dict[str, list[str]] = {}
    for line in out:
        if not line.startswith("kafka-acls.sh "):
            continue
        args = printed_acl_args(line)
        ops = [args[i + 1] for i, w in enumerate(args) if w == "--operation"]
        kind = "topic" if "--topic" in args else "group"
        resource = args[args.index(f"--{kind}") + 1].replace(name, "APP")
        prefix = "prefixed " if "prefixed" in args else ""
        label = f"{prefix}{kind} {resource} {','.join(ops)}"
        grants[label] = args
    return grants


def apply(kafka: SecureKafka, grants: dict[str, list[str]], skip: str | None = None) -> None:
    for label, args in grants.items():
        if label != skip:
            kafka_acls(kafka.run_dir, args)


def probe_worker(env: dict[str, str], workdir: Path, timeout: float = 90.0) -> tuple[int, str]:
    """Run a worker that should stop by itself; its exit code and output."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**env, "FRWATCH_WEB_PORT": str(free_port())}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "streams.cli.main", "worker", "--loglevel", "info"],
            env=env, cwd=workdir, capture_output=True, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace")[-3000:]
        raise AssertionError(f"worker still running after {timeout:.0f} s:\n{out}") from None
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")


def test_printed_worker_acls_are_enough(
    secure_kafka: SecureKafka, unique_name: str, tmp_path: Path
) -> None:
    """All printed grants: the scenario's alerts and a dead letter come through."""
    kafka = secure_kafka
    admin = secure_env(kafka, unique_name, "admin")
    frwatch(["topics", "create"], admin)
    grants = printed_grants(admin, unique_name)
    assert set(grants) == set(EXERCISED)  # a new grant needs a probe here
    apply(kafka, grants)
    accounts, events = scenario_archive(tmp_path, hours=1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    frwatch(["accounts", "load", str(accounts)], admin)
    frwatch(["publish", str(events), str(bad)], admin)

    worker = Worker(secure_env(kafka, unique_name, "worker"), tmp_path / "w").start()
    alerts = f"{unique_name}.alerts"
    try:
        wait_for(lambda: alert_ids_on_topic_as(admin, alerts), 120, "an alert", worker)
        wait_for(lambda: worker.metric("frwatch_events_total", result="malformed") >= 1, 60,
                 "the dead letter", worker)  # fmt: skip
    finally:
        worker.stop()
    assert worker.proc is not None and worker.proc.returncode == 0, worker.log_tail(40)


@pytest.mark.parametrize("label", sorted(EXERCISED))
def test_removing_one_printed_acl_makes_the_worker_fail(
    secure_kafka: SecureKafka, unique_name: str, tmp_path: Path, label: str
) -> None:
    """Every grant but `label`: the worker stops by itself, naming what it was refused."""
    kafka = secure_kafka
    admin = secure_env(kafka, unique_name, "admin")
    frwatch(["topics", "create"], admin)
    grants = printed_grants(admin, unique_name)
    assert label in grants, sorted(grants)
    apply(kafka, grants, skip=label)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")  # one message, so a worker that starts has work to do
    frwatch(["publish", str(bad)], admin)

    env = secure_env(kafka, unique_name, "worker")
    if EXERCISED[label] == "rules":
        env["FRWATCH_RULES"] = "kafka:"
    code, out = probe_worker(env, tmp_path / "w")
    print(f"without {label}: exit {code}: {out.strip().splitlines()[-1:]}")
    assert code != 0, out[-3000:]
    _, _, rest = label.removeprefix("prefixed ").partition(" ")
    resource = rest.split(" ")[0].replace("APP", unique_name)
    assert resource in out, out[-3000:]
    assert "authori" in out.lower(), out[-3000:]
