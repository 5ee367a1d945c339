"""`frwatch acls`: least-privilege ACLs as kafka-acls.sh commands."""

from __future__ import annotations

import shlex

import pytest

from streams.cli.acls import acl_commands
from streams.cli.main import main
from streams.settings import settings_from_env


def test_worker_acls_are_exactly_what_it_needs() -> None:
    s = settings_from_env({"FRWATCH_APP_ID": "det", "FRWATCH_BROKER": "k:9093"})
    grants = []
    for line in acl_commands(s, "User:w", "worker"):
        words = shlex.split(line)
        assert words[:6] == [
            "kafka-acls.sh", "--bootstrap-server", "k:9093", "--command-config",
            "admin.properties", "--add",
        ]  # fmt: skip
        ops = tuple(words[i + 1] for i, w in enumerate(words) if w == "--operation")
        kind = next(w for w in words if w in ("--topic", "--group"))
        name = words[words.index(kind) + 1]
        grants.append((kind, name, ops, "prefixed" in words))
    assert grants == [
        ("--topic", "api.requests", ("Read",), False),
        ("--topic", "api.accounts", ("Read",), False),
        ("--topic", "frwatch.exceptions", ("Read",), False),
        ("--topic", "frwatch.rules", ("Read",), False),
        ("--topic", "frwatch.alerts", ("Write",), False),
        ("--topic", "frwatch.dlq", ("Write",), False),
        ("--group", "det", ("Read",), False),
        ("--topic", "det-", ("Create", "Read", "Write", "Describe"), True),
    ]


def test_analyst_and_archive_roles(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["acls", "--role", "analyst", "--principal", "User:soc"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [
        "kafka-acls.sh --bootstrap-server 127.0.0.1:9092 --command-config admin.properties "
        "--add --allow-principal User:soc --operation Read --topic frwatch.alerts"
    ]
    assert main(["acls", "--role", "archive", "--app-id", "x"]) == 0
    out = capsys.readouterr().out
    assert "--allow-principal User:x --operation Read --topic api.requests" in out
    assert "--operation Read --group x-archive" in out


def test_rules_and_exceptions_topics_follow_their_settings() -> None:
    env = {"FRWATCH_TOPIC_RULES": "r.x", "FRWATCH_TOPIC_EXCEPTIONS": "e.x"}
    lines = acl_commands(settings_from_env(env), "User:w", "worker")
    assert sum(line.endswith("--operation Read --topic r.x") for line in lines) == 1
    assert sum(line.endswith("--operation Read --topic e.x") for line in lines) == 1
