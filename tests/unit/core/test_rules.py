"""The rules file: the built-in catalog, and load errors that name the file, the rule and the field."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

import streams.core
from streams.core.classify import EnrichedEvent
from streams.core.conditions import compile_condition
from streams.core.rules import (
    RulesError,
    builtin_classification,
    builtin_rules_bytes,
    load_rules,
    parse_rules,
)
from topics.accounts import AccountRecord
from topics.requests import RequestEvent, parse_request_record

CATALOG = Path(streams.core.__file__).parent / "catalog.yaml"
FILE = "custom-rules.yaml"


def base_doc() -> dict[str, Any]:
    """A small valid rules file with two rules."""
    return {
        "version": 1,
        "lists": {"galleries": ["suspects", "inmates"]},
        "conditions": {"identification": {"field": "fr_kind", "equals": "identify"}},
        "rules": [
            {
                "id": "R-1",
                "title": "Identify against suspects",
                "clause": "No suspect databases.",
                "severity": "high",
                "match": {
                    "all": [
                        {"ref": "identification"},
                        {"field": "gallery.kind", "in": "galleries"},
                    ]
                },
                "group_by": "account_id",
                "window": "1h",
                "requires": [{"kind": "count", "at_least": 2}],
            },
            {
                "id": "R-2",
                "title": "Bulk identification",
                "clause": "Bulk needs approval.",
                "severity": "low",
                "tags": ["bulk"],
                "match": {"ref": "identification"},
                "group_by": "org_id",
                "window": "30m",
                "requires": [{"kind": "distinct", "field": "subject_ids", "at_least": 3}],
            },
        ],
    }


def dump(doc: Any) -> bytes:
    return yaml.safe_dump(doc, sort_keys=False).encode()


def load_error(doc: Any) -> RulesError:
    with pytest.raises(RulesError) as info:
        parse_rules(dump(doc), FILE)
    return info.value


def assert_names(err: RulesError, rule: str | None, field: str | None) -> None:
    """The message is one line naming the file, the rule and the field."""
    msg = str(err)
    assert "\n" not in msg
    assert msg.startswith(FILE + ":"), msg
    assert err.file == FILE
    assert err.rule == rule, msg
    assert err.field == field, msg
    if rule is not None:
        assert f"rule {rule}" in msg
    if field is not None:
        assert f"field {field}" in msg


# ----------------------------------------------------------------------------- built-in catalog


def test_builtin_catalog_has_the_ten_rules_of_the_spec() -> None:
    rules = load_rules()
    assert [r.id for r in rules.rules] == [f"FR-{i:03d}" for i in range(1, 11)]
    table = {
        r.id: (r.severity, r.group_by, r.window_ms, [(q.kind, q.at_least) for q in r.requires])
        for r in rules.rules
    }
    hour, day = 3_600_000, 86_400_000
    assert table == {
        "FR-001": ("critical", "account_id", hour, [("count", 1)]),
        "FR-002": ("critical", "account_id", hour, [("count", 1)]),
        "FR-003": ("high", "account_id", hour, [("count", 1)]),
        "FR-004": ("high", "account_id", hour, [("count", 1)]),
        "FR-005": ("medium", "account_id", hour, [("count", 3)]),
        "FR-006": ("high", "org_id", hour, [("distinct", 50)]),
        "FR-007": ("high", "account_id", day, [("count", 20), ("count", 1)]),
        "FR-008": ("low", "account_id", hour, [("count", 1)]),
        "FR-009": ("high", "account_id", hour, [("count", 1)]),
        "FR-010": ("medium", "account_id", hour, [("count", 3)]),
    }
    assert rules.by_id("FR-006").requires[0].field == "subject_ids"
    assert all(r.clause and r.title for r in rules.rules)
    assert all(q.where is not None for q in rules.by_id("FR-007").requires)


def test_builtin_sha256_is_the_sha256_of_the_file_bytes() -> None:
    data = CATALOG.read_bytes()
    assert builtin_rules_bytes() == data
    rules = load_rules()
    assert rules.sha256 == hashlib.sha256(data).hexdigest()
    assert load_rules(str(CATALOG)).sha256 == rules.sha256


def test_a_copy_with_other_bytes_has_another_sha256(tmp_path: Path) -> None:
    copy_path = tmp_path / "rules.yaml"
    data = CATALOG.read_bytes() + b"\n# my edit\n"
    copy_path.write_bytes(data)
    rules = load_rules(str(copy_path))
    assert rules.path == str(copy_path)
    assert rules.sha256 == hashlib.sha256(data).hexdigest() != load_rules().sha256
    assert len(rules.rules) == 10


def test_valid_custom_file() -> None:
    rules = parse_rules(dump(base_doc()), FILE)
    assert [r.id for r in rules.rules] == ["R-1", "R-2"]
    assert rules.by_id("R-2").window_ms == 1_800_000
    assert rules.by_id("R-2").tags == ("bulk",)
    assert rules.by_id("R-2").distinct_requirement is not None
    assert rules.by_id("R-1").distinct_requirement is None
    with pytest.raises(KeyError):
        rules.by_id("R-3")


def test_disabled_rule_is_validated_but_not_loaded() -> None:
    doc = base_doc()
    doc["rules"][1]["enabled"] = False
    assert [r.id for r in parse_rules(dump(doc), FILE).rules] == ["R-1"]
    doc["rules"][1]["window"] = "1 hour"
    assert_names(load_error(doc), "R-2", "window")


def test_rules_are_frozen() -> None:
    rule = load_rules().rules[0]
    with pytest.raises(AttributeError):
        rule.severity = "low"  # type: ignore[misc]


# ----------------------------------------------------------------------------- load errors


def _mutate(path: list[Any], value: Any, delete: bool = False) -> dict[str, Any]:
    doc = base_doc()
    node: Any = doc
    for p in path[:-1]:
        node = node[p]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


RULE0 = ["rules", 0]
RULE1 = ["rules", 1]

ERRORS = [
    # (test id, doc, rule, field, text in the message)
    ("unknown_rule_field", _mutate([*RULE0, "severty"], "high"), "R-1", "severty", "unknown field"),
    ("bad_window_1_hour", _mutate([*RULE0, "window"], "1 hour"), "R-1", "window", "1 hour"),
    ("window_not_a_string", _mutate([*RULE0, "window"], 3600), "R-1", "window", "duration"),
    ("window_over_7d", _mutate([*RULE0, "window"], "8d"), "R-1", "window", "7d"),
    ("bad_close_after", _mutate([*RULE0, "close_after"], "5 min"), "R-1", "close_after", "5 min"),
    ("close_after_number", _mutate([*RULE0, "close_after"], 300), "R-1", "close_after", "duration"),
    ("close_after_over_24h", _mutate([*RULE0, "close_after"], "2d"), "R-1", "close_after", "24h"),
    (
        "unknown_operator",
        _mutate([*RULE0, "match", "all", 1], {"field": "gallery.kind", "matches": "sus.*"}),
        "R-1",
        "match.all[1].matches",
        "unknown operator",
    ),
    (
        "unknown_combinator",
        _mutate([*RULE0, "match"], {"xor": [{"ref": "identification"}]}),
        "R-1",
        "match.xor",
        "unknown operator",
    ),
    (
        "two_operators",
        _mutate([*RULE0, "match"], {"field": "operation", "equals": "a", "not_equals": "b"}),
        "R-1",
        "match",
        "exactly one operator",
    ),
    (
        "unknown_condition_field",
        _mutate([*RULE0, "match", "all", 1], {"field": "gallery.colour", "equals": "red"}),
        "R-1",
        "match.all[1].field",
        "gallery.colour",
    ),
    (
        "unknown_ref",
        _mutate([*RULE0, "match"], {"ref": "nope"}),
        "R-1",
        "match.ref",
        "unknown condition",
    ),
    (
        "duplicate_id",
        _mutate([*RULE1, "id"], "R-1"),
        "R-1",
        "id",
        "duplicate",
    ),
    ("missing_clause", _mutate([*RULE1, "clause"], None, delete=True), "R-2", "clause", "missing"),
    ("empty_clause", _mutate([*RULE1, "clause"], "  "), "R-2", "clause", "non-empty"),
    ("missing_match", _mutate([*RULE1, "match"], None, delete=True), "R-2", "match", "missing"),
    ("bad_severity", _mutate([*RULE1, "severity"], "urgent"), "R-2", "severity", "severity"),
    ("capitalised_severity", _mutate([*RULE1, "severity"], "High"), "R-2", "severity", "severity"),
    ("bad_group_by", _mutate([*RULE1, "group_by"], "api_key_id"), "R-2", "group_by", "group_by"),
    (
        "distinct_without_field",
        _mutate([*RULE1, "requires"], [{"kind": "distinct", "at_least": 3}]),
        "R-2",
        "requires[0].field",
        "distinct needs a field",
    ),
    (
        "distinct_of_unknown_field",
        _mutate([*RULE1, "requires"], [{"kind": "distinct", "field": "faces", "at_least": 3}]),
        "R-2",
        "requires[0].field",
        "distinct needs a field",
    ),
    (
        "count_with_field",
        _mutate([*RULE1, "requires"], [{"kind": "count", "field": "model", "at_least": 3}]),
        "R-2",
        "requires[0].field",
        "count takes no field",
    ),
    (
        "at_least_zero",
        _mutate([*RULE1, "requires", 0, "at_least"], 0),
        "R-2",
        "requires[0].at_least",
        ">= 1",
    ),
    (
        "at_least_bool",
        _mutate([*RULE1, "requires", 0, "at_least"], True),
        "R-2",
        "requires[0].at_least",
        ">= 1",
    ),
    (
        "bad_requirement_kind",
        _mutate([*RULE1, "requires", 0, "kind"], "sum"),
        "R-2",
        "requires[0].kind",
        "count or distinct",
    ),
    (
        "unknown_requirement_field",
        _mutate([*RULE1, "requires", 0, "within"], "1h"),
        "R-2",
        "requires[0].within",
        "unknown field",
    ),
    (
        "bad_where",
        _mutate([*RULE1, "requires", 0, "where"], {"field": "fr_kind", "equal": "enroll"}),
        "R-2",
        "requires[0].where.equal",
        "unknown operator",
    ),
    ("empty_requires", _mutate([*RULE1, "requires"], []), "R-2", "requires", "non-empty"),
    (
        "unknown_list",
        _mutate([*RULE0, "match", "all", 1], {"field": "gallery.kind", "in": "criminal"}),
        "R-1",
        "match.all[1].in",
        "unknown list",
    ),
    (
        "in_on_array_field",
        _mutate([*RULE0, "match", "all", 1], {"field": "subject_ids", "in": ["a"]}),
        "R-1",
        "match.all[1].in",
        "contains",
    ),
    (
        "wrong_value_type",
        _mutate([*RULE0, "match", "all", 1], {"field": "image_count", "gte": "1"}),
        "R-1",
        "match.all[1].gte",
        "not a number",
    ),
    (
        "gte_on_string",
        _mutate([*RULE0, "match", "all", 1], {"field": "model", "gte": "a"}),
        "R-1",
        "match.all[1].gte",
        "number fields",
    ),
    ("bad_tags", _mutate([*RULE0, "tags"], "law"), "R-1", "tags", "list of strings"),
    ("bad_enabled", _mutate([*RULE0, "enabled"], "yes"), "R-1", "enabled", "true or false"),
    ("bad_id", _mutate([*RULE0, "id"], "R 1"), "#1", "id", "id must be"),
    ("missing_id", _mutate([*RULE1, "id"], None, delete=True), "#2", "id", "id must be"),
    ("rule_not_a_mapping", _mutate(RULE1, "R-2"), None, "rules[1]", "mapping"),
    ("wrong_version", _mutate(["version"], 2), None, "version", "version must be 1"),
    ("missing_version", _mutate(["version"], None, delete=True), None, "version", "version"),
    ("unknown_top_level", _mutate(["macros"], {}), None, "macros", "unknown top-level"),
    ("empty_rules", _mutate(["rules"], []), None, "rules", "non-empty"),
    ("bad_list", _mutate(["lists", "galleries"], []), None, "lists.galleries", "non-empty"),
    (
        "bad_named_condition",
        _mutate(["conditions", "identification"], {"field": "fr_kindd", "equals": "identify"}),
        None,
        "conditions.identification.field",
        "unknown field",
    ),
]


@pytest.mark.parametrize(
    ("doc", "rule", "field", "text"),
    [e[1:] for e in ERRORS],
    ids=[e[0] for e in ERRORS],
)
def test_load_error_names_file_rule_and_field(
    doc: dict[str, Any], rule: str | None, field: str | None, text: str
) -> None:
    err = load_error(doc)
    assert_names(err, rule, field)
    assert text in str(err)


@pytest.mark.parametrize(
    "data",
    [
        b"version: 1\nrules: [\n",
        b"version: 1\n\trules: []\n",
        b"{: :\n",
        b"version: 1\nrules: \xc3\x28\n",
    ],
    ids=["unclosed", "tab", "garbage", "invalid_utf8"],
)
def test_bad_yaml_names_the_file(data: bytes) -> None:
    with pytest.raises(RulesError) as info:
        parse_rules(data, FILE)
    msg = str(info.value)
    assert msg.startswith(f"{FILE}: ")
    assert "\n" not in msg
    assert "YAML" in msg


@pytest.mark.parametrize("data", [b"", b"- 1\n- 2\n", b"just text\n"])
def test_not_a_mapping(data: bytes) -> None:
    with pytest.raises(RulesError, match="mapping with version and rules"):
        parse_rules(data, FILE)


def test_load_rules_from_a_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_bytes(dump(_mutate([*RULE0, "window"], "1 hour")))
    with pytest.raises(RulesError) as info:
        load_rules(str(path))
    assert str(info.value).startswith(f"{path}: rule R-1: field window: ")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(RulesError) as info:
        load_rules(str(path))
    assert str(info.value).startswith(f"{path}: cannot read")


# ----------------------------------------------------------------------------- conditions

ACCOUNT = AccountRecord(
    "acct-1", org_id="org-1", sector="commercial", country="US", approved_uses=("verification",)
)


def enriched(account: AccountRecord | None = ACCOUNT, **fields: Any) -> EnrichedEvent:
    raw = {"event_id": "e", "ts": 0, "account_id": "acct-1", "operation": "face.identify"}
    raw.update(fields)
    ev = parse_request_record(raw)
    assert isinstance(ev, RequestEvent)
    return EnrichedEvent(ev, account, builtin_classification())


@pytest.mark.parametrize(
    ("cond", "ee", "result"),
    [
        ({"field": "image_count", "gte": 1}, enriched(image_count=1), True),
        ({"field": "image_count", "gt": 1}, enriched(image_count=1), False),
        ({"field": "image_count", "lte": 0}, enriched(), True),
        ({"field": "image_count", "lt": 0}, enriched(), False),
        ({"field": "faces_detected", "gte": 0}, enriched(), False),  # null never compares
        ({"field": "faces_detected", "is_null": True}, enriched(), True),
        ({"field": "faces_detected", "is_null": False}, enriched(faces_detected=0), True),
        ({"field": "intent.score", "gte": 0.8}, enriched(intent={"label": "x"}), False),
        ({"field": "gallery.kind", "equals": "suspects"}, enriched(), False),
        ({"field": "gallery.kind", "not_equals": "suspects"}, enriched(), True),
        ({"field": "gallery.kind", "not_in": ["suspects"]}, enriched(), True),
        ({"field": "subject_ids", "contains": "s1"}, enriched(subject_ids=["s1"]), True),
        ({"field": "subject_ids", "not_contains": "s1"}, enriched(subject_ids=["s2"]), True),
        ({"field": "account.approved_uses", "contains": "verification"}, enriched(), True),
        ({"field": "account.approved_uses", "not_contains": "x"}, enriched(None), True),
        ({"field": "account.known", "equals": False}, enriched(None), True),
        ({"field": "account.country", "equals": "US"}, enriched(None), False),
        ({"field": "account.country", "is_null": True}, enriched(None), True),
        ({"field": "fr_use", "equals": True}, enriched(), True),
        ({"field": "le_customer", "equals": False}, enriched(), True),
        ({"not": {"field": "fr_kind", "equals": "identify"}}, enriched(), False),
        (
            {"any": [{"field": "operation", "equals": "x"}, {"field": "fr_use", "equals": True}]},
            enriched(),
            True,
        ),
        ({"all": [{"field": "operation", "equals": "face.identify"}]}, enriched(), True),
    ],
)
def test_condition_semantics(cond: dict[str, Any], ee: EnrichedEvent, result: bool) -> None:
    pred = compile_condition(copy.deepcopy(cond), "match", {}, {})
    assert pred(ee) is result


def test_rule_gates_never_skip_a_rule_that_matches() -> None:
    """fr_kind/operation gates read off the match conditions are implied by them."""
    from streams.core.classify import EnrichedEvent
    from streams.core.engine import RuleIndex
    from streams.synthetic import SAMPLE_ACCOUNTS, demo_traffic
    from topics.accounts import parse_account_record
    from topics.requests import parse_request_record

    rules = load_rules().rules
    index = RuleIndex(rules)
    accounts = {a["account_id"]: parse_account_record(a) for a in SAMPLE_ACCOUNTS}
    checked = 0
    for raw in demo_traffic(5, 1_795_000_000_000, 300):
        ev = parse_request_record(raw)
        for acct in (accounts.get(raw["account_id"]), None, accounts["acct-metro-pd"]):
            ee = EnrichedEvent(ev, acct, builtin_classification())  # type: ignore[arg-type]
            full = [r.id for r in rules if r.match(ee)]
            gated = [r.id for r in index.candidates(ee) if r.match(ee)]
            assert gated == full
            checked += bool(full)
    assert checked > 50
    assert {r.id for r in rules if r.kinds is not None} >= {"FR-001", "FR-004", "FR-006"}
    # FR-005 (LLM vision) has no fr_kind gate, but its intent labels gate it
    fr005 = next(r for r in rules if r.id == "FR-005")
    assert fr005.intent_labels == {"identify_person", "verify_identity"}


def test_rule_version_follows_the_detection_definition_only() -> None:
    """SPEC 4.3: match, group_by, window, requires (lists and refs expanded) make the version."""
    from streams.core.rules import builtin_rules_bytes

    text = builtin_rules_bytes().decode()
    base = parse_rules(text.encode(), "a.yaml")
    versions = {r.id: r.version for r in base.rules}
    assert all(len(v) == 64 for v in versions.values())
    assert len(set(versions.values())) == len(versions)
    cosmetic = parse_rules(
        text.replace("severity: critical", "severity: low")
        .replace("tags: [", "tags: [x, ")
        .encode(),
        "b.yaml",
    )
    assert {r.id: r.version for r in cosmetic.rules} == versions
    # a list used by FR-004 only: its content is part of FR-004's definition
    galleries = parse_rules(
        text.replace(
            "criminal_galleries: [suspects, inmates, mugshots]",
            "criminal_galleries: [suspects, inmates]",
        ).encode(),
        "c.yaml",
    )
    changed = {r.id for r in galleries.rules if r.version != versions[r.id]}
    assert changed == {"FR-004"}
    window = parse_rules(text.replace("window: 24h", "window: 12h").encode(), "d.yaml")
    assert {r.id for r in window.rules if r.version != versions[r.id]} == {"FR-007"}
    assert base.by_id("FR-007").state_version == versions["FR-007"][:16]


def test_close_after_defaults_to_5m_and_does_not_change_the_version() -> None:
    """SPEC 5: per-rule close_after; SPEC 4.3: it is not part of the detection definition."""
    plain = parse_rules(dump(base_doc()), "a.yaml")
    closing = parse_rules(dump(_mutate([*RULE0, "close_after"], "2h")), "b.yaml")
    assert plain.rules[0].close_after_ms == 300_000
    assert closing.rules[0].close_after_ms == 7_200_000
    assert closing.rules[0].version == plain.rules[0].version
