"""The rules file's `classification` section (SPEC 2.2): parsed and checked, every problem named."""

from __future__ import annotations

from typing import Any

from streams.core.classify import (
    BIO_KINDS,
    BY_OPERATION,
    IDENTIFY,
    NONE,
    TRAITS,
    VERIFY,
    Classification,
    Verdict,
    verdict,
)

SECTION = "classification"
_KEYS = ("operations", "model_operations", "intents", "intent_threshold")
_GROUP_KEYS = {"bio_kind", "trait", "names"}
MAX_NAME_CHARS = 1024  # an operation longer than a request field may be can never match

#: (field path, message): a problem with the section
Problem = tuple[str, str]


def _names(node: object, path: str, problems: list[Problem]) -> list[str]:
    if not isinstance(node, list) or not node:
        problems.append((path, "must be a non-empty list of operation names"))
        return []
    out = []
    for i, name in enumerate(node):
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
            problems.append(
                (f"{path}[{i}]", f"an operation name is a non-empty string, not {name!r}")
            )
            continue
        out.append(name)
    return out


def _operations(node: object, problems: list[Problem]) -> dict[str, Verdict]:
    path = f"{SECTION}.operations"
    if not isinstance(node, list):
        problems.append((path, "operations is a list of {bio_kind, trait, names} groups"))
        return {}
    table: dict[str, Verdict] = {}
    where: dict[str, str] = {}
    for gi, group in enumerate(node):
        gpath = f"{path}[{gi}]"
        if not isinstance(group, dict):
            problems.append((gpath, "a group is a mapping with bio_kind, trait and names"))
            continue
        for key in sorted(set(group) - _GROUP_KEYS, key=str):
            problems.append((f"{gpath}.{key}", "unknown field"))
        kind, trait = group.get("bio_kind"), group.get("trait")
        ok = True
        if kind not in BIO_KINDS:
            problems.append(
                (f"{gpath}.bio_kind", f"bio_kind must be one of {', '.join(BIO_KINDS)}")
            )
            ok = False
        if trait not in TRAITS:
            problems.append((f"{gpath}.trait", f"trait must be one of {', '.join(TRAITS)}"))
            ok = False
        if ok and (kind == NONE) != (trait == NONE):
            problems.append(
                (f"{gpath}.trait", "bio_kind none goes with trait none, and only with it")
            )
            ok = False
        for i, name in enumerate(_names(group.get("names"), f"{gpath}.names", problems)):
            if name in where:
                problems.append(
                    (
                        f"{gpath}.names[{i}]",
                        f"operation {name!r} is already listed at {where[name]}",
                    )
                )
                continue
            where[name] = f"{gpath}.names[{i}]"
            if ok:
                table[name] = verdict(kind, trait, BY_OPERATION)  # type: ignore[arg-type]
    return table


def _model_operations(
    node: object, operations: dict[str, Verdict], problems: list[Problem]
) -> frozenset[str]:
    path = f"{SECTION}.model_operations"
    names = _names(node, path, problems)
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            problems.append((f"{path}[{i}]", f"operation {name!r} is listed twice"))
        elif name in operations:
            # an operation entry always wins, so its intent would never be read
            problems.append((f"{path}[{i}]", f"operation {name!r} is also in operations"))
        seen.add(name)
    return frozenset(seen)


def _intents(node: object, problems: list[Problem]) -> dict[str, str]:
    path = f"{SECTION}.intents"
    if not isinstance(node, dict) or not node:
        problems.append((path, "intents maps intent labels to identify or verify"))
        return {}
    out = {}
    for label, kind in node.items():
        if not isinstance(label, str) or not label:
            problems.append((path, f"an intent label is a non-empty string, not {label!r}"))
        elif kind not in (IDENTIFY, VERIFY):
            problems.append((f"{path}.{label}", "an intent gives identify or verify"))
        else:
            out[label] = kind
    return out


def _threshold(node: object, problems: list[Problem]) -> float:
    path = f"{SECTION}.intent_threshold"
    if type(node) not in (int, float) or not 0 <= node <= 1:  # type: ignore[operator]
        problems.append((path, "intent_threshold must be a number in 0..1"))
        return 1.0
    return float(node)  # type: ignore[arg-type]


def parse_classification(node: object) -> tuple[Classification | None, list[Problem]]:
    """The section as a Classification, or None and every problem found (in file order)."""
    problems: list[Problem] = []
    if not isinstance(node, dict):
        return None, [(SECTION, "classification is a mapping with " + ", ".join(_KEYS))]
    for key in sorted(set(node) - set(_KEYS), key=str):
        problems.append((f"{SECTION}.{key}", "unknown field"))
    for key in _KEYS:
        if key not in node:
            problems.append((f"{SECTION}.{key}", "required field is missing"))
    operations = _operations(node.get("operations", []), problems)
    model_operations = (
        _model_operations(node["model_operations"], operations, problems)
        if "model_operations" in node
        else frozenset()
    )
    intents = _intents(node["intents"], problems) if "intents" in node else {}
    threshold = (
        _threshold(node["intent_threshold"], problems) if "intent_threshold" in node else 1.0
    )
    if problems:
        return None, problems
    return Classification(operations, model_operations, intents, threshold), []


def operation_groups(node: Any) -> list[tuple[str, str, list[str]]]:
    """(bio_kind, trait, names) of each group of a valid section, for tests and docs."""
    return [(g["bio_kind"], g["trait"], list(g["names"])) for g in node["operations"]]
