"""The classification section (SPEC 2.2): the catalog's table, the intent path, load errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

import streams.core
from streams.core.classification import operation_groups
from streams.core.classify import EnrichedEvent
from streams.core.rules import RulesError, builtin_classification, load_rules, parse_rules
from topics.requests import RequestEvent, parse_request_record

CATALOG = Path(streams.core.__file__).parent / "catalog.yaml"
CATALOG_DOC: dict[str, Any] = yaml.safe_load(CATALOG.read_text(encoding="utf-8"))
GROUPS = operation_groups(CATALOG_DOC["classification"])
TABLE = [(name, kind, trait) for kind, trait, names in GROUPS for name in names]
FILE = "my-rules.yaml"


def ee(operation: str, **fields: Any) -> EnrichedEvent:
    rec = {"event_id": "e", "ts": 0, "account_id": "a", "operation": operation, **fields}
    ev = parse_request_record(rec)
    assert isinstance(ev, RequestEvent), ev
    return EnrichedEvent(ev, None, builtin_classification())


def facts(e: EnrichedEvent) -> tuple[Any, ...]:
    return (e.bio_kind, e.trait, e.bio_by, e.fr_kind, e.fr_use, e.bio_use)


@pytest.mark.parametrize(("operation", "kind", "trait"), TABLE, ids=[t[0] for t in TABLE])
def test_every_catalog_operation_classifies_as_listed(
    operation: str, kind: str, trait: str
) -> None:
    got = ee(
        operation, image_count=1, audio_count=1, intent={"label": "identify_person", "score": 1}
    )
    by = None if kind == "none" else "operation"
    fr = kind if trait == "face" else "none"
    use = kind in ("identify", "verify")
    # the operation decides, whatever the intent says
    assert facts(got) == (kind, trait, by, fr, use and trait == "face", use)


def test_the_catalog_lists_the_spec_names_and_rest_ids() -> None:
    """SPEC 2.2's canonical names and its examples of Face API ids, with the kinds it gives."""
    table = {name: (kind, trait) for name, kind, trait in TABLE}
    assert len(table) == len(TABLE), "an operation is listed twice"
    want = {
        "face.identify": ("identify", "face"),
        "face.find_similar": ("identify", "face"),
        "face.verify": ("verify", "face"),
        "person_group.add_face": ("enroll", "face"),
        "face_list.add_face": ("enroll", "face"),
        "speaker.identify": ("identify", "voice"),
        "speaker.verify": ("verify", "voice"),
        "speaker.enroll": ("enroll", "voice"),
        "Face_Identify": ("identify", "face"),
        "Face_VerifyFaceToFace": ("verify", "face"),
        "Face_FindSimilar": ("identify", "face"),
        "FaceRecognitionOperations_IdentifyFromLargePersonGroup": ("identify", "face"),
        "FaceRecognitionOperations_VerifyFromPersonDirectory": ("verify", "face"),
        "PersonGroupOperations_AddLargePersonGroupPersonFace": ("enroll", "face"),
        "PersonGroupOperations_AddLargePersonGroupPersonFaceFromUrl": ("enroll", "face"),
        "TextIndependent_IdentifySingleSpeaker": ("identify", "voice"),
        "Face_DetectWithUrl": ("none", "none"),
        "Face_Group": ("none", "none"),
    }
    assert {k: table.get(k) for k in want} == want
    assert set(CATALOG_DOC["classification"]["model_operations"]) == {
        "chat.completions",
        "responses",
        "vision.analyze",
        "audio.chat",
    }
    assert builtin_classification().intent_threshold == 0.8


@pytest.mark.parametrize(
    "operation",
    ["other.op", "face_identify", "FACE.IDENTIFY", "face_Identify", "Face_identify", "embeddings"],
)
def test_unknown_operations_classify_as_none(operation: str) -> None:
    got = ee(
        operation, image_count=3, audio_count=2, intent={"label": "identify_person", "score": 1}
    )
    assert facts(got) == ("none", "none", None, "none", False, False)


@pytest.mark.parametrize(
    ("operation", "images", "audios", "intent", "want"),
    [
        ("chat.completions", 1, 0, ("identify_person", 0.8), ("identify", "face", "intent")),
        ("responses", 2, 1, ("verify_identity", 0.95), ("verify", "face", "intent")),
        ("audio.chat", 0, 1, ("identify_person", 0.9), ("identify", "voice", "intent")),
        ("vision.analyze", 0, 3, ("verify_identity", 1), ("verify", "voice", "intent")),
        ("audio.chat", 1, 1, ("identify_person", 0.9), ("identify", "face", "intent")),
        ("audio.chat", 0, 0, ("identify_person", 0.9), ("none", "none", None)),
        ("audio.chat", 0, 1, ("identify_person", 0.79), ("none", "none", None)),
        ("audio.chat", 0, 1, ("identify_person", None), ("none", "none", None)),
        ("audio.chat", 0, 1, ("describe_scene", 0.99), ("none", "none", None)),
        ("audio.chat", 0, 1, ("none", 0.99), ("none", "none", None)),
        ("audio.chat", 0, 1, (None, 0.99), ("none", "none", None)),
        ("embeddings", 1, 1, ("identify_person", 0.99), ("none", "none", None)),
    ],
)
def test_model_requests_classify_by_intent(
    operation: str, images: int, audios: int, intent: tuple[Any, Any], want: tuple[Any, ...]
) -> None:
    label, score = intent
    got = ee(
        operation, image_count=images, audio_count=audios, intent={"label": label, "score": score}
    )
    assert (got.bio_kind, got.trait, got.bio_by) == want
    assert got.fr_kind == (want[0] if want[1] == "face" else "none")


# ------------------------------------------------------------------------- rules check errors


def doc_with(classification: Any) -> bytes:
    doc = copy.deepcopy(CATALOG_DOC)
    doc["classification"] = classification
    return yaml.safe_dump(doc, sort_keys=False).encode()


def errors(classification: Any) -> list[tuple[str | None, str | None, str]]:
    with pytest.raises(RulesError) as info:
        parse_rules(doc_with(classification), FILE)
    for p in info.value.problems:
        assert str(p).startswith(f"{FILE}: ")
    return [(p.rule, p.field, str(p)) for p in info.value.problems]


def section(**change: Any) -> dict[str, Any]:
    out = copy.deepcopy(CATALOG_DOC["classification"])
    out.update(change)
    return out


def test_every_error_of_the_section_is_reported_with_its_field() -> None:
    bad = section(
        operations=[
            {"bio_kind": "identify", "trait": "face", "names": ["face.identify", "x.find"]},
            {"bio_kind": "identfy", "trait": "face", "names": ["x.a"]},
            {"bio_kind": "verify", "trait": "smell", "names": ["x.b"]},
            {"bio_kind": "none", "trait": "face", "names": ["x.c"]},
            {"bio_kind": "enroll", "trait": "voice", "names": ["x.find"], "comment": 1},
        ],
        intent_threshold=1.5,
    )
    got = [(field, text) for _, field, text in errors(bad)]
    fields = [f for f, _ in got]
    assert fields == [
        "classification.operations[1].bio_kind",
        "classification.operations[2].trait",
        "classification.operations[3].trait",
        "classification.operations[4].comment",
        "classification.operations[4].names[0]",
        "classification.intent_threshold",
    ]
    text = "\n".join(t for _, t in got)
    assert "bio_kind must be one of identify, verify, enroll, none" in text
    assert "trait must be one of face, voice, other, none" in text
    assert "'x.find' is already listed at classification.operations[0].names[1]" in text
    assert "intent_threshold must be a number in 0..1" in text


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"intent_threshold": "0.8"}, "classification.intent_threshold", "number in 0..1"),
        ({"intent_threshold": True}, "classification.intent_threshold", "number in 0..1"),
        ({"intent_threshold": -0.1}, "classification.intent_threshold", "number in 0..1"),
        (
            {"model_operations": ["audio.chat", "audio.chat"]},
            "classification.model_operations[1]",
            "listed twice",
        ),
        (
            {"model_operations": ["face.identify"]},
            "classification.model_operations[0]",
            "also in operations",
        ),
        ({"model_operations": []}, "classification.model_operations", "non-empty list"),
        (
            {"intents": {"identify_person": "enroll"}},
            "classification.intents.identify_person",
            "identify or verify",
        ),
        ({"operations": {"face.identify": "identify"}}, "classification.operations", "groups"),
        ({"extra": 1}, "classification.extra", "unknown field"),
    ],
)
def test_one_bad_value(change: dict[str, Any], field: str, message: str) -> None:
    ((rule, got_field, text),) = errors(section(**change))
    assert rule is None and got_field == field and message in text


def test_missing_keys_and_not_a_mapping() -> None:
    assert [f for _, f, _ in errors({"operations": []})] == [
        "classification.model_operations",
        "classification.intents",
        "classification.intent_threshold",
    ]
    assert [f for _, f, _ in errors([1, 2])] == ["classification"]


def test_section_errors_and_rule_errors_come_together() -> None:
    doc = copy.deepcopy(CATALOG_DOC)
    doc["classification"]["intent_threshold"] = 2
    doc["rules"][0]["severity"] = "urgent"
    doc["rules"][3]["window"] = "1 hour"
    with pytest.raises(RulesError) as info:
        parse_rules(yaml.safe_dump(doc, sort_keys=False).encode(), FILE)
    assert [(p.rule, p.field) for p in info.value.problems] == [
        (None, "classification.intent_threshold"),
        ("FR-001", "severity"),
        ("FR-004", "window"),
    ]
    assert len(str(info.value).splitlines()) == 3


# ------------------------------------------------------------------- classification as data


def test_a_file_without_the_section_uses_the_catalogs() -> None:
    doc = copy.deepcopy(CATALOG_DOC)
    del doc["classification"]
    rules = parse_rules(yaml.safe_dump(doc).encode(), FILE)
    assert rules.classification == load_rules().classification == builtin_classification()
    assert [r.version for r in rules.rules] == [r.version for r in load_rules().rules]


def test_an_operators_own_operation_names() -> None:
    groups = copy.deepcopy(CATALOG_DOC["classification"]["operations"])
    groups.append({"bio_kind": "identify", "trait": "other", "names": ["gait.match"]})
    groups[0]["names"].append("mygw.face.search")
    rules = parse_rules(doc_with(section(operations=groups)), FILE)
    c = rules.classification
    ev = parse_request_record(
        {"event_id": "e", "ts": 0, "account_id": "a", "operation": "gait.match"}
    )
    assert isinstance(ev, RequestEvent)
    gait = EnrichedEvent(ev, None, c)
    assert (gait.bio_kind, gait.trait, gait.bio_by, gait.fr_kind) == (
        "identify",
        "other",
        "operation",
        "none",
    )
    assert [r.id for r in rules.rules if r.match(gait)] == ["FR-009"]
    ev = ev._replace(operation="mygw.face.search")
    assert EnrichedEvent(ev, None, c).fr_kind == "identify"
    # the built-in classification does not know these names
    assert EnrichedEvent(ev, None, builtin_classification()).fr_kind == "none"


def test_a_classification_change_is_a_new_version_of_the_rules_that_use_it() -> None:
    """SPEC 4.3: rules naming a classified field change version; FR-005 and FR-010 do not."""
    base = {r.id: r.version for r in load_rules().rules}
    for change in (
        section(intent_threshold=0.9),
        section(model_operations=["chat.completions"]),
        section(intents={"identify_person": "identify"}),
    ):
        changed = {
            r.id for r in parse_rules(doc_with(change), FILE).rules if r.version != base[r.id]
        }
        assert changed == {f"FR-00{i}" for i in (1, 2, 3, 4, 6, 7, 8, 9)}
    # cosmetic: the same table written in another order is the same classification
    groups = list(reversed(CATALOG_DOC["classification"]["operations"]))
    same = parse_rules(doc_with(section(operations=groups)), FILE)
    assert {r.id: r.version for r in same.rules} == base
