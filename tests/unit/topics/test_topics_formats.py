"""`topics.formats`: input formats (SPEC 2.4), the built-in `azure-resource-log` on samples of
the shapes Azure writes, a user-written format, validation errors, and the worked OTel example.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.app.routing import Screen, Screened
from streams.core.rules import load_rules
from streams.replay import replay
from topics.accounts import AccountDirectory, parse_account_record
from topics.dlq import MISSING_FIELD, WRONG_TYPE
from topics.formats import (
    SKIPPED,
    FormatError,
    InputFormat,
    load_format,
    parse_format,
    parse_path,
)
from topics.requests import RejectedRecord, RequestEvent, decode_request_message

ROOT = Path(__file__).resolve().parents[3]
AZURE = Path(__file__).with_name("fixtures") / "azure"
EXAMPLES = ROOT / "docs" / "examples"
RULES = load_rules()
LE_SUB = "7d1e5c2a-3b4f-4e8a-9c61-2f0b8d4a7e13"
UNKNOWN_SUB = "a0c4f9e2-5d71-4b3c-8e26-91f7d3b5c048"
OAI_SUB = "5e8b2d17-c6a3-4f90-b1e4-7a2c9d06f385"
NOW = 1_900_000_000_000


@pytest.fixture(scope="module")
def azure() -> InputFormat:
    fmt = load_format("azure-resource-log")
    assert fmt is not None
    return fmt


def lines(name: str) -> list[bytes]:
    return (AZURE / name).read_bytes().splitlines()


def decoded(fmt: InputFormat, name: str) -> list[RequestEvent | RejectedRecord]:
    return [r for line in lines(name) for r in fmt.decode_message(line)]


def test_the_default_format_is_no_mapping() -> None:
    assert load_format(None) is None
    assert load_format("frwatch") is None
    assert load_format(" frwatch ") is None


def test_azure_request_response_records_map_as_documented(azure: InputFormat) -> None:
    got = decoded(azure, "request-response.jsonl")
    assert all(type(e) is RequestEvent for e in got), got
    thread, chat, image = got
    assert isinstance(thread, RequestEvent)
    assert isinstance(chat, RequestEvent)
    assert isinstance(image, RequestEvent)
    # properties as a string holding JSON (no modelName in it), 7-digit fraction truncated
    assert thread.event_id == "3f0c9a51-7e2d-4b18-a6c4-0d9e5b7f1a23"
    assert thread.ts_ms == 1794985512435  # 2026-11-18T07:05:12.435Z
    assert thread.account_id == OAI_SUB  # the subscription of the upper-case resource id
    assert thread.operation == "Create_Thread"  # no table entry: kept as it is
    assert thread.model is None
    assert thread.client_ip == "203.0.113.***"  # masked addresses are kept, as strings
    assert thread.region == "eastus"
    # properties as an object; ChatCompletions_Create is frwatch's chat.completions
    assert chat.operation == "chat.completions"
    assert chat.model == "gpt-4o"
    assert chat.ts_ms == 1794985518123  # .1234567 -> .123, never rounded
    # timeStamp instead of time, durationMs a string (not mapped: never a problem)
    assert image.ts_ms == 1794985560999  # .9999999 -> .999
    assert image.model == "dall-e-3"
    assert image.client_ip == "198.51.100.23"


def test_audit_and_other_categories_are_skipped_not_dead_lettered(azure: InputFormat) -> None:
    assert decoded(azure, "audit.jsonl") == [SKIPPED]
    got = decoded(azure, "face-eventhub.jsonl")
    # line 1: Audit, two Face_Identify, a redelivery; line 2: Face, usage; line 3: metrics
    assert [type(r).__name__ if r is not SKIPPED else "skipped" for r in got] == [
        "skipped",
        "RequestEvent",
        "RequestEvent",
        "RequestEvent",
        "RequestEvent",
        "skipped",
        "skipped",
    ]
    first, second, again = got[1], got[2], got[3]
    assert first == again  # a redelivered record is the same event, same event_id
    assert isinstance(first, RequestEvent) and isinstance(second, RequestEvent)
    assert first.event_id != second.event_id
    assert first.operation == "Face_Identify" and first.account_id == LE_SUB


def test_malformed_azure_records_name_their_source_path(azure: InputFormat) -> None:
    got = decoded(azure, "malformed.jsonl")
    assert isinstance(got[3], RequestEvent)  # its neighbours go on
    letters = [r for r in got[:3]]
    assert all(type(r) is RejectedRecord for r in letters)
    no_time, bad_properties, no_resource = (r.rejection for r in letters)  # type: ignore[union-attr]
    assert (no_time.reason, no_time.field) == (MISSING_FIELD, "ts")
    assert no_time.detail == "ts from time or timeStamp: missing"
    assert (bad_properties.reason, bad_properties.field) == (WRONG_TYPE, "model")
    assert bad_properties.detail.startswith(
        "model from properties.modelName: properties is a string that is not JSON"
    )
    assert (no_resource.reason, no_resource.field) == (MISSING_FIELD, "account_id")
    assert no_resource.detail == (
        "account_id from resourceId (the segment after subscriptions): missing"
    )
    # the dead letter carries the record as sent, not what it was mapped to
    source = orjson.loads(lines("malformed.jsonl")[0])["records"]
    for letter, rec in zip(letters, source, strict=False):
        assert orjson.loads(letter.raw) == rec  # type: ignore[union-attr]


def test_a_wrong_type_after_mapping_names_the_source_path(azure: InputFormat) -> None:
    rec = orjson.loads(lines("request-response.jsonl")[1])
    rec["callerIpAddress"] = 8123
    rec["time"] = "18/11/2026 07:05"
    (ip,) = azure.decode_message(orjson.dumps({"records": [rec]}))
    assert type(ip) is RejectedRecord
    assert ip.rejection.field == "ts"
    assert ip.rejection.detail.startswith("ts from time or timeStamp: ts: not an RFC 3339")
    rec["time"] = "2026-11-18T07:05:18Z"
    (ip,) = azure.decode_message(orjson.dumps({"records": [rec]}))
    assert type(ip) is RejectedRecord
    assert ip.rejection.field == "client_ip"
    assert ip.rejection.detail == (
        "client_ip from callerIpAddress: client_ip must be a string, got integer"
    )


def test_event_id_without_correlation_id_is_the_records_digest(azure: InputFormat) -> None:
    rec = orjson.loads(lines("request-response.jsonl")[1])
    del rec["correlationId"]
    (a,) = azure.decode_message(orjson.dumps(rec))
    reordered = dict(reversed(list(rec.items())))
    (b,) = azure.decode_message(orjson.dumps({"records": [reordered]}))
    (c,) = azure.decode_message(orjson.dumps(rec | {"durationMs": 1022}))
    assert isinstance(a, RequestEvent) and isinstance(b, RequestEvent)
    assert isinstance(c, RequestEvent)
    assert a.event_id == b.event_id and len(a.event_id) == 64  # a redelivery: the same id
    assert c.event_id != a.event_id  # another request: another id


def test_the_worker_screen_maps_with_the_same_code(azure: InputFormat) -> None:
    screen = Screen(RULES, azure)
    out = screen.screen(lines("face-eventhub.jsonl")[0], NOW)
    assert out.skipped == 1 and out.malformed == 0
    assert [rec["operation"] for rec, _ in out.gated] == ["Face_Identify"] * 3
    assert Screened.from_wire(out.to_wire()) == out
    bad = screen.screen(lines("malformed.jsonl")[0], NOW)
    assert bad.malformed == 3
    assert [(r.field, r.detail.split(":")[0]) for r, _ in bad.letters] == [
        ("ts", "ts from time or timeStamp"),
        ("model", "model from properties.modelName"),
        ("account_id", "account_id from resourceId (the segment after subscriptions)"),
    ]
    assert (
        orjson.loads(bad.letters[0][1])["correlationId"] == "91a2b3c4-d5e6-4f70-8a9b-0c1d2e3f4a5b"
    )
    # the same message in frwatch's own format: three records without event_id
    plain = Screen(RULES).screen(lines("face-eventhub.jsonl")[0], NOW)
    assert plain.malformed == 4 and plain.skipped == 0


def _directory() -> AccountDirectory:
    directory = AccountDirectory()
    for line in lines("accounts.jsonl"):
        rec = parse_account_record(orjson.loads(line))
        assert not isinstance(rec, type(None))
        directory.apply(rec)  # type: ignore[arg-type]
    return directory


def test_replay_of_an_azure_archive_fires_for_the_law_enforcement_subscription(
    azure: InputFormat, tmp_path: Path
) -> None:
    import io

    out = io.BytesIO()
    path = AZURE / "face-eventhub.jsonl"
    with open(path, "rb") as fh:
        summary = replay([(str(path), fh)], RULES, _directory(), out, input_format=azure)
    alerts = [orjson.loads(line) for line in out.getvalue().splitlines()]
    alerts = [a for a in alerts if a["status"] == "open"]
    assert sorted((a["rule_id"], a["group_key"]) for a in alerts) == [
        ("FR-001", LE_SUB),
        ("FR-008", UNKNOWN_SUB),
    ]
    fr001 = next(a for a in alerts if a["rule_id"] == "FR-001")
    assert fr001["account"]["org_name"] == "Metro Police Department"
    assert fr001["evidence"]["samples"][0]["client_ip"] == "81.2.69.***"
    assert (summary.events, summary.skipped, summary.malformed, summary.duplicates) == (7, 3, 0, 1)


def frwatch(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRWATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "streams.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("sample", "counts"),
    [
        ("request-response.jsonl", (3, 0, 0)),
        ("audit.jsonl", (1, 0, 1)),
        ("face-eventhub.jsonl", (7, 0, 3)),
        ("malformed.jsonl", (4, 3, 0)),
    ],
)
def test_replay_cli_on_the_samples(sample: str, counts: tuple[int, int, int]) -> None:
    r = frwatch("replay", "--input-format", "azure-resource-log", AZURE / sample)
    assert r.returncode == 0, r.stderr
    summary = orjson.loads(r.stderr.strip().splitlines()[-1])
    assert (summary["events"], summary["malformed"], summary["skipped"]) == counts


def test_bad_input_format_is_one_line_and_exit_2(tmp_path: Path) -> None:
    r = frwatch("replay", "--input-format", tmp_path / "nope.yaml", AZURE / "audit.jsonl")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "nope.yaml: cannot read" in r.stderr and "azure-resource-log" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: x\nfields:\n  ts: {path: when, timestamp: epoch_weeks}\n  colour: c\n")
    r = frwatch("replay", "--input-format", bad, AZURE / "audit.jsonl")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for named in ("field fields.ts.timestamp", "field fields.colour", "field fields.event_id"):
        assert f"bad.yaml: {named}" in r.stderr
    env_bad = {**os.environ, "FRWATCH_INPUT_FORMAT": str(bad)}
    r2 = subprocess.run(
        [sys.executable, "-m", "streams.cli.main", "replay", str(AZURE / "audit.jsonl")],
        capture_output=True,
        text=True,
        env=env_bad,
        timeout=120,
        check=False,
    )
    assert r2.returncode == 2 and "bad.yaml" in r2.stderr


# ---- a user-written format: a made-up gateway -------------------------------------------

ACME_FORMAT = """\
format: acme-gateway
description: the access log of the ACME AI gateway
records: entries
json_strings: [meta]
skip:
  - {path: kind, in: [healthcheck, audit]}
fields:
  event_id: req.id
  ts: {path: req.at, timestamp: epoch_s}
  account_id: {path: req.tenant, lower: true}
  operation:
    path: req.api
    map: {faces/identify: face.identify, faces/enroll: person_group.add_face}
  api_key_id: req.key
  region: {const: eu-west-1}
  image_count: {path: img, integer: true}
  gallery.id: meta.gallery.id
  gallery.kind: {path: meta.gallery.type, lower: true}
  capture.device: meta.camera
"""


def acme_entry(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "request",
        "req": {
            "id": f"acme-{i}",
            "at": 1794988800 + i,  # 2026-11-18T08:00:00Z + i s
            "tenant": "ACCT-SHERIFF",
            "api": "faces/identify",
            "key": "k-77",
        },
        "img": "2",
        "meta": orjson.dumps(
            {"gallery": {"id": "g-1", "type": "Mugshots"}, "camera": "mobile"}
        ).decode(),
    } | extra


def test_user_written_format_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "acme.yaml"
    path.write_text(ACME_FORMAT)
    fmt = load_format(str(path))
    assert fmt is not None and fmt.name == "acme-gateway" and fmt.path == str(path)
    message = orjson.dumps(
        {"entries": [acme_entry(1), {"kind": "healthcheck"}, acme_entry(2, img=None)]}
    )
    ev, ev2 = fmt.decode_message(message)[0], fmt.decode_message(message)[2]
    assert fmt.decode_message(message)[1] is SKIPPED
    assert ev == RequestEvent(
        event_id="acme-1",
        ts_ms=1794988801000,
        account_id="acct-sheriff",
        operation="face.identify",
        api_key_id="k-77",
        region="eu-west-1",
        image_count=2,
        gallery=decode_request_message(
            orjson.dumps(
                {
                    "event_id": "x",
                    "ts": 0,
                    "account_id": "a",
                    "operation": "o",
                    "gallery": {"id": "g-1", "kind": "mugshots"},
                }
            )
        )[0].gallery,  # type: ignore[union-attr]
        capture=ev.capture,  # type: ignore[union-attr]
    )
    assert ev.capture is not None and ev.capture.device == "mobile"  # type: ignore[union-attr]
    assert isinstance(ev2, RequestEvent) and ev2.image_count == 0
    # the mapped event, written in frwatch's own format, reads back as the same event
    assert decode_request_message(orjson.dumps(ev.to_wire())) == [ev]  # type: ignore[union-attr]
    # a missing required source field names the path
    (bad,) = fmt.decode_message(orjson.dumps(acme_entry(3, req={"id": "x", "tenant": "t"})))
    assert type(bad) is RejectedRecord
    assert (bad.rejection.field, bad.rejection.detail) == ("ts", "ts from req.at: missing")
    (bad,) = fmt.decode_message(orjson.dumps(acme_entry(4, img="two")))
    assert type(bad) is RejectedRecord
    assert bad.rejection.detail == "image_count from img: 'two' is not an integer"
    # not a batch of this format: the message is one record
    (single,) = fmt.decode_message(orjson.dumps(acme_entry(5)))
    assert isinstance(single, RequestEvent) and single.event_id == "acme-5"


def test_user_format_validation_reports_every_error_with_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(
        """\
format: ""
records: [1]
colour: blue
json_strings: [properties..x]
skip:
  - {path: category}
  - {path: category, not_in: Audit}
fields:
  event_id: {path: id, digest: md5}
  ts: {path: t, timestamp: epoch_weeks, default: 0}
  operation: {path: op, lower: true, upper: true, map: [a, b]}
  model: {const: x, path: m}
  gallery: g
  gallery.kind: g.k
  weight: w
"""
    )
    with pytest.raises(FormatError) as info:
        load_format(str(path))
    problems = [str(p) for p in info.value.problems]
    expected = [
        "field colour: unknown key",
        "field format: must be the format's name",
        "field records: must be the key",
        "field json_strings[0]: not a path",
        "field skip[0]: needs in, not_in or exists",
        "field skip[1].not_in: must be a list",
        "field fields.event_id.digest: the only digest is sha256",
        "field fields.ts.timestamp: must be one of",
        "field fields.ts.default: a required field has no default",
        "field fields.operation: lower and upper exclude each other",
        "field fields.operation.map: must map source values",
        "field fields.model.const: a constant takes no path",
        "field fields.weight: not a request field",
        "field fields.account_id: required field is not mapped",
        "field fields.gallery: map gallery whole or its members, not both",
    ]
    for text in expected:
        assert any(p.startswith(f"{path}: {text}") for p in problems), (text, problems)
    assert len(problems) == len(expected)
    assert str(info.value).count("\n") == len(expected) - 1  # one line each


def test_format_files_that_are_not_formats(tmp_path: Path) -> None:
    for text, says in [("- a\n", "must be a mapping"), ("a: [\n", "not YAML")]:
        path = tmp_path / "f.yaml"
        path.write_text(text)
        with pytest.raises(FormatError, match=says):
            load_format(str(path))
    with pytest.raises(FormatError, match="field fields"):
        parse_format(b"format: x\n", "x.yaml")


def test_paths() -> None:
    assert parse_path('attributes["gen_ai.request.model"]') == (
        "attributes",
        "gen_ai.request.model",
    )
    assert parse_path("records[0].properties") == ("records", 0, "properties")
    for bad in ("", ".a", "a..b", "a[x]", "a b", 'a["b'):
        with pytest.raises(ValueError):
            parse_path(bad)


# ---- the worked example of docs/input-formats.md -----------------------------------------


def test_otel_genai_span_example_maps_and_fires(tmp_path: Path) -> None:
    fmt = load_format(str(EXAMPLES / "otel-genai-span.yaml"))
    assert fmt is not None
    got = [
        r
        for line in (EXAMPLES / "otel-genai-spans.jsonl").read_bytes().splitlines()
        for r in fmt.decode_message(line)
    ]
    assert got[1] is SKIPPED  # the HTTP server span is no GenAI operation
    spans = [got[0], got[2], got[3]]
    assert all(isinstance(s, RequestEvent) for s in spans)
    first = spans[0]
    assert isinstance(first, RequestEvent)
    assert first.event_id == "0x1d3e5f7a9b2c4d6e"
    assert first.ts_ms == 1794985801101  # 2026-11-18T07:10:01.101101Z
    assert (first.account_id, first.operation, first.model) == (
        "acct-fleetcam",
        "chat.completions",
        "gpt-4o",
    )
    assert (first.region, first.client_ip, first.image_count) == ("westeurope", "198.51.100.77", 1)
    assert first.intent is not None and first.intent.label == "identify_person"
    r = frwatch(
        "replay",
        "--input-format",
        EXAMPLES / "otel-genai-span.yaml",
        EXAMPLES / "otel-genai-spans.jsonl",
    )
    assert r.returncode == 0, r.stderr
    revisions = [orjson.loads(line) for line in r.stdout.splitlines()]
    rules = sorted(a["rule_id"] for a in revisions if a["status"] == "open")
    assert rules == ["FR-005", "FR-008"]  # three identifications by an unknown account
    summary = orjson.loads(r.stderr.strip().splitlines()[-1])
    assert (summary["events"], summary["skipped"], summary["malformed"]) == (4, 1, 0)


# ---- the compiled mapper is the interpreted definition -----------------------------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "Audit", "RequestResponse", "x/subscriptions/AB-C/y", "/SUBSCRIPTIONS/"]),
    st.sampled_from(["2026-11-18T07:05:12.4350000Z", "12", "-3", "٢", "faces/identify", "{}"]),
    st.text(max_size=8),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["modelName", "id", "type", "a", "0"]), inner, max_size=3),
    ),
    max_leaves=6,
)
_KEYS = [
    "time", "timeStamp", "resourceId", "operationName", "callerIpAddress", "location",
    "correlationId", "category", "metricName", "properties", "req", "img", "meta", "kind",
    "entries", "context", "start_time", "attributes", "resource",
]  # fmt: skip


def _records() -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(
        st.sampled_from(_KEYS),
        st.one_of(
            _VALUES,
            _VALUES.map(lambda v: orjson.dumps(v).decode()),  # a string holding JSON
            st.just('{"modelName": "m", "gallery": {"id": "g", "type": "T"}, "camera": 3'),
        ),
        max_size=10,
    )


@pytest.fixture(scope="module")
def formats(tmp_path_factory: pytest.TempPathFactory) -> list[InputFormat]:
    acme = tmp_path_factory.mktemp("acme") / "acme.yaml"
    acme.write_text(ACME_FORMAT)
    return [
        f
        for f in (
            load_format("azure-resource-log"),
            load_format(str(acme)),
            load_format(str(EXAMPLES / "otel-genai-span.yaml")),
        )
        if f is not None
    ]


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rec=_records())
def test_compiled_mapping_equals_the_interpreted_one(
    formats: list[InputFormat], rec: dict[str, Any]
) -> None:
    for fmt in formats:
        assert fmt.map_record(rec) == fmt.interpret(rec), fmt.name


def test_worker_refuses_a_bad_input_format_before_connecting(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRWATCH_")}
    env |= {"FRWATCH_BROKER": "127.0.0.1:1", "FRWATCH_INPUT_FORMAT": str(tmp_path / "no.yaml")}
    r = subprocess.run(
        [sys.executable, "-m", "streams.cli.main", "worker"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"frwatch worker: error: {tmp_path / 'no.yaml'}: cannot read: No such file or directory"
        " (built-in formats: frwatch, azure-resource-log)"
    ]
