"""The rules file: frozen, validated rule definitions; errors name the file, rule and field."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from streams.core.classification import SECTION, parse_classification
from streams.core.classify import Classification
from streams.core.conditions import ConditionError, Predicate, compile_condition
from streams.core.windows import RETENTION_MS, parse_duration_ms

GROUP_BY = ("account_id", "org_id")
SEVERITIES = ("critical", "high", "medium", "low")
DISTINCT_FIELDS = (
    "subject_ids",
    "api_key_id",
    "client_ip",
    "model",
    "region",
    "operation",
    "gallery.id",
    "account_id",
    "event_id",
)
MAX_WINDOW_MS = 7 * 86_400_000
DEFAULT_CLOSE_AFTER_MS = 5 * 60_000  # a fired window closes 5m of retention clock after its end
_RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
_RULE_KEYS = {
    "id",
    "title",
    "clause",
    "severity",
    "tags",
    "description",
    "enabled",
    "match",
    "group_by",
    "window",
    "close_after",
    "requires",
}
_REQUIRED_RULE_KEYS = (
    "id",
    "title",
    "clause",
    "severity",
    "match",
    "group_by",
    "window",
    "requires",
)
_TOP_KEYS = {"version", "lists", "conditions", "rules", SECTION}
BUILTIN_NAME = "catalog.yaml"


class RulesError(ValueError):
    """An invalid rules file; the message names the file, the rule and the field.

    `problems` holds every error found (this one first); the message has one line each.
    """

    def __init__(self, file: str, rule: str | None, field: str | None, message: str) -> None:
        where = f"{file}"
        if rule is not None:
            where += f": rule {rule}"
        if field is not None:
            where += f": field {field}"
        super().__init__(f"{where}: {message}")
        self.file, self.rule, self.field = file, rule, field
        self.problems: list[RulesError] = [self]

    @classmethod
    def of(cls, problems: list[RulesError]) -> RulesError:
        """One error that carries several (the first names the file, rule and field)."""
        first = problems[0]
        if len(problems) == 1:
            return first
        out = cls(first.file, first.rule, first.field, "")
        out.args = ("\n".join(str(p) for p in problems),)
        out.problems = list(problems)
        return out


@dataclass(frozen=True, slots=True)
class Requirement:
    """`count >= at_least` or `distinct(field) >= at_least` over matching events, maybe filtered."""

    kind: str  # "count" or "distinct"
    at_least: int
    field: str | None = None
    where: Predicate | None = None
    where_text: Any = None


@dataclass(frozen=True, slots=True)
class Rule:
    """One detection rule (SPEC 4.1)."""

    id: str
    title: str
    clause: str
    severity: str
    tags: tuple[str, ...]
    group_by: str
    window_ms: int
    match: Predicate
    requires: tuple[Requirement, ...]
    source: Mapping[str, Any]  # the rule as written, for `rules show`
    # necessary conditions read off the match condition, to skip rules cheaply: the rule can
    # only match events whose fr_kind / operation / intent label is in these sets (None: any)
    kinds: frozenset[str] | None = None
    operations: frozenset[str] | None = None
    intent_labels: frozenset[str | None] | None = None
    bio_kinds: frozenset[str] | None = None
    traits: frozenset[str] | None = None
    #: sha256 of the canonical detection definition (SPEC 4.3): match, group_by, window and
    #: requires with named conditions and lists expanded; title, clause, severity, tags and
    #: enabled do not change it
    version: str = ""
    #: how long after the window's end (retention clock) a fired window is closed (SPEC 5);
    #: not part of the version
    close_after_ms: int = DEFAULT_CLOSE_AFTER_MS

    @property
    def state_version(self) -> str:
        """The prefix of `version` that window state keys carry."""
        return self.version[:16]

    @property
    def distinct_requirement(self) -> Requirement | None:
        """The first distinct requirement, whose count `observed.distinct` reports."""
        return next((r for r in self.requires if r.kind == "distinct"), None)


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The loaded rules file."""

    rules: tuple[Rule, ...]
    path: str
    sha256: str
    #: how operations and intents classify (SPEC 2.2): the file's section, else the catalog's
    classification: Classification = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.classification is None:
            object.__setattr__(self, "classification", builtin_classification())

    def by_id(self, rule_id: str) -> Rule:
        """The rule with that id."""
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)


def _fail(file: str, rule: str | None, field: str | None, message: str) -> RulesError:
    return RulesError(file, rule, field, message)


def _text(rule: Mapping[str, Any], key: str, file: str, rid: str) -> str:
    v = rule.get(key)
    if not isinstance(v, str) or not v.strip():
        raise _fail(file, rid, key, f"{key} must be a non-empty string")
    return v.strip()


def _requirement(
    node: object,
    i: int,
    file: str,
    rid: str,
    lists: Mapping[str, tuple[Any, ...]],
    named: Mapping[str, Predicate],
) -> Requirement:
    path = f"requires[{i}]"
    if not isinstance(node, dict):
        raise _fail(file, rid, path, "a requirement is a mapping with kind and at_least")
    unknown = set(node) - {"kind", "at_least", "field", "where"}
    if unknown:
        raise _fail(file, rid, f"{path}.{sorted(unknown)[0]}", "unknown field")
    kind = node.get("kind")
    if kind not in ("count", "distinct"):
        raise _fail(file, rid, f"{path}.kind", "kind must be count or distinct")
    n = node.get("at_least")
    if type(n) is not int or n < 1:
        raise _fail(file, rid, f"{path}.at_least", "at_least must be an integer >= 1")
    field = node.get("field")
    if kind == "distinct":
        if field not in DISTINCT_FIELDS:
            raise _fail(
                file,
                rid,
                f"{path}.field",
                f"distinct needs a field of {', '.join(DISTINCT_FIELDS)}",
            )
    elif field is not None:
        raise _fail(file, rid, f"{path}.field", "count takes no field")
    where = None
    if "where" in node:
        try:
            where = compile_condition(node["where"], f"{path}.where", lists, named)
        except ConditionError as exc:
            raise _fail(file, rid, exc.path, str(exc)) from None
    return Requirement(kind, n, field, where, node.get("where"))


def _values_of(
    node: Mapping[str, Any], lists: Mapping[str, tuple[Any, ...]]
) -> frozenset[Any] | None:
    if "equals" in node:
        return frozenset([node["equals"]])
    if "in" in node:
        arg = node["in"]
        return frozenset(lists[arg] if isinstance(arg, str) else arg)
    return None


# fields whose necessary values gate a rule (streams.core.engine.RuleIndex)
GATE_FIELDS = ("fr_kind", "bio_kind", "trait", "operation", "intent.label")
#: fields derived from the classification: a rule naming one uses it (SPEC 4.3)
CLASSIFIED_FIELDS = frozenset({"fr_kind", "fr_use", "bio_kind", "bio_use", "trait", "bio_by"})
_USE = {"fr_use": "fr_kind", "bio_use": "bio_kind"}


def necessary_sets(
    node: object, lists: Mapping[str, tuple[Any, ...]], named_raw: Mapping[str, Any], depth: int = 0
) -> dict[str, frozenset[Any]]:
    """Per gate field (GATE_FIELDS), the values a matching event must have.

    Only conjunctions (all, ref) are read; anything else gives no constraint, so the result
    is always implied by the condition. Called after the condition compiled, so it is valid.
    """
    if not isinstance(node, dict) or depth > 32:
        return {}
    if "ref" in node and len(node) == 1:
        return necessary_sets(named_raw.get(node["ref"]), lists, named_raw, depth + 1)
    if "all" in node and len(node) == 1 and isinstance(node["all"], list):
        out: dict[str, frozenset[Any]] = {}
        for child in node["all"]:
            for name, allowed in necessary_sets(child, lists, named_raw, depth + 1).items():
                out[name] = out[name] & allowed if name in out else allowed
        return out
    field = node.get("field")
    values = _values_of(node, lists)
    if values is None:
        return {}
    if field in GATE_FIELDS:
        return {field: values}
    if field in _USE and values == frozenset([True]):
        return {_USE[field]: frozenset(["identify", "verify"])}
    if field in _USE and values == frozenset([False]):
        return {_USE[field]: frozenset(["enroll", "none"])}
    return {}


def _names_classified_field(node: Any) -> bool:
    if isinstance(node, dict):
        if node.get("field") in CLASSIFIED_FIELDS:
            return True
        return any(_names_classified_field(v) for v in node.values())
    if isinstance(node, list):
        return any(_names_classified_field(v) for v in node)
    return False


def _canonical(
    node: Any, lists: Mapping[str, tuple[Any, ...]], named_raw: Mapping[str, Any]
) -> Any:
    """A condition with `ref`s and list names replaced by what they stand for."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            if k == "ref" and isinstance(v, str) and v in named_raw:
                return _canonical(named_raw[v], lists, named_raw)
            if k in ("in", "not_in") and isinstance(v, str) and v in lists:
                v = list(lists[v])
            out[str(k)] = _canonical(v, lists, named_raw)
        return out
    if isinstance(node, list | tuple):
        return [_canonical(v, lists, named_raw) for v in node]
    return node


def rule_version(
    node: Mapping[str, Any],
    window_ms: int,
    lists: Mapping[str, tuple[Any, ...]],
    named_raw: Mapping[str, Any],
    classification: Classification | None = None,
) -> str:
    """sha256 of a rule's canonical detection definition (SPEC 4.3).

    A rule whose conditions name a classified field (fr_kind, bio_kind, trait, ...) uses the
    classification, so all of it is part of the definition: any change to the section
    restarts that rule's windows. A rule that names none (FR-005, FR-010) keeps its version.
    """
    definition: dict[str, Any] = {
        "match": _canonical(node["match"], lists, named_raw),
        "group_by": node["group_by"],
        "window_ms": window_ms,
        "requires": _canonical(node["requires"], lists, named_raw),
    }
    if classification is not None and _names_classified_field(
        [definition["match"], definition["requires"]]
    ):
        definition["classification"] = classification.canonical()
    text = json.dumps(definition, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _rule(
    node: object,
    idx: int,
    file: str,
    lists: Mapping[str, tuple[Any, ...]],
    named: Mapping[str, Predicate],
    named_raw: Mapping[str, Any],
    classification: Classification | None = None,
) -> Rule:
    if not isinstance(node, dict):
        raise _fail(file, None, f"rules[{idx}]", "a rule is a mapping")
    rid = node.get("id")
    if not isinstance(rid, str) or not _RULE_ID.match(rid):
        raise _fail(file, f"#{idx + 1}", "id", "id must be 1-64 letters, digits, _ . : -")
    unknown = set(node) - _RULE_KEYS
    if unknown:
        raise _fail(file, rid, sorted(unknown)[0], "unknown field")
    for key in _REQUIRED_RULE_KEYS:
        if key not in node:
            raise _fail(file, rid, key, "required field is missing")
    severity = node["severity"]
    if severity not in SEVERITIES:
        raise _fail(file, rid, "severity", f"severity must be one of {', '.join(SEVERITIES)}")
    group_by = node["group_by"]
    if group_by not in GROUP_BY:
        raise _fail(file, rid, "group_by", f"group_by must be one of {', '.join(GROUP_BY)}")
    window = node["window"]
    try:
        if not isinstance(window, str):
            raise ValueError("window must be a duration string such as 1h")
        window_ms = parse_duration_ms(window)
    except ValueError as exc:
        raise _fail(file, rid, "window", str(exc)) from None
    if window_ms > MAX_WINDOW_MS:
        raise _fail(file, rid, "window", "window may be at most 7d")
    close_after = node.get("close_after", "5m")
    try:
        if not isinstance(close_after, str):
            raise ValueError("close_after must be a duration string such as 5m")
        close_after_ms = parse_duration_ms(close_after)
    except ValueError as exc:
        raise _fail(file, rid, "close_after", str(exc)) from None
    if close_after_ms > RETENTION_MS:
        # a window is closed before its state is dropped (SPEC 4.1, 5)
        raise _fail(file, rid, "close_after", "close_after may be at most 24h")
    tags = node.get("tags", [])
    if not isinstance(tags, list) or any(not isinstance(t, str) for t in tags):
        raise _fail(file, rid, "tags", "tags must be a list of strings")
    try:
        match = compile_condition(node["match"], "match", lists, named)
    except ConditionError as exc:
        raise _fail(file, rid, exc.path, str(exc)) from None
    reqs = node["requires"]
    if not isinstance(reqs, list) or not reqs:
        raise _fail(file, rid, "requires", "requires must be a non-empty list")
    requires = tuple(_requirement(r, i, file, rid, lists, named) for i, r in enumerate(reqs))
    gates = necessary_sets(node["match"], lists, named_raw)
    return Rule(
        id=rid,
        title=_text(node, "title", file, rid),
        clause=_text(node, "clause", file, rid),
        severity=severity,
        tags=tuple(tags),
        group_by=group_by,
        window_ms=window_ms,
        match=match,
        requires=requires,
        source=node,
        kinds=gates.get("fr_kind"),
        operations=gates.get("operation"),
        intent_labels=gates.get("intent.label"),
        bio_kinds=gates.get("bio_kind"),
        traits=gates.get("trait"),
        version=rule_version(node, window_ms, lists, named_raw, classification),
        close_after_ms=close_after_ms,
    )


def parse_rules(data: bytes, file: str) -> RuleSet:
    """Validate and compile a rules file's bytes.

    RulesError on a problem; the classification section and each rule are checked on their
    own, so that one error carries every problem of those (`RulesError.problems`).
    """
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise _fail(file, None, None, f"not valid YAML{where}: {problem}") from None
    if not isinstance(doc, dict):
        raise _fail(file, None, None, "a rules file is a mapping with version and rules")
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise _fail(file, None, sorted(unknown)[0], "unknown top-level field")
    if type(doc.get("version")) is not int or doc.get("version") != 1:
        raise _fail(file, None, "version", "version must be 1")
    raw_lists = doc.get("lists") or {}
    if not isinstance(raw_lists, dict):
        raise _fail(file, None, "lists", "lists must map names to lists")
    lists: dict[str, tuple[Any, ...]] = {}
    for name, items in raw_lists.items():
        if not isinstance(items, list) or not items:
            raise _fail(file, None, f"lists.{name}", "a list must be a non-empty list of values")
        lists[str(name)] = tuple(items)
    named: dict[str, Predicate] = {}
    raw_conds = doc.get("conditions") or {}
    if not isinstance(raw_conds, dict):
        raise _fail(file, None, "conditions", "conditions must map names to conditions")
    for name, node in raw_conds.items():
        try:
            named[str(name)] = compile_condition(node, f"conditions.{name}", lists, named)
        except ConditionError as exc:
            raise _fail(file, None, exc.path, str(exc)) from None
    problems: list[RulesError] = []
    if SECTION in doc:
        classification, found = parse_classification(doc[SECTION])
        problems.extend(_fail(file, None, path, message) for path, message in found)
    else:
        classification = builtin_classification()
    raw_rules = doc.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise RulesError.of(
            [*problems, _fail(file, None, "rules", "rules must be a non-empty list")]
        )
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, node in enumerate(raw_rules):
        try:
            enabled = node.get("enabled", True) if isinstance(node, dict) else True
            if type(enabled) is not bool:
                raise _fail(file, str(node.get("id")), "enabled", "enabled must be true or false")
            rule = _rule(node, i, file, lists, named, raw_conds, classification)
            if rule.id in seen:
                raise _fail(file, rule.id, "id", "duplicate rule id")
        except RulesError as exc:
            problems.append(exc)
            continue
        seen.add(rule.id)
        if enabled:
            rules.append(rule)
    if problems or classification is None:
        raise RulesError.of(problems)
    return RuleSet(tuple(rules), file, hashlib.sha256(data).hexdigest(), classification)


@lru_cache(maxsize=1)
def builtin_classification() -> Classification:
    """The built-in catalog's classification: what a rules file without the section uses."""
    doc = yaml.safe_load(builtin_rules_bytes())
    classification, problems = parse_classification(doc[SECTION])
    if classification is None:  # pragma: no cover - the shipped catalog is tested
        raise RuntimeError(f"built-in classification is invalid: {problems}")
    return classification


def builtin_rules_bytes() -> bytes:
    """The shipped policy catalog (FR-001..FR-010)."""
    return resources.files("streams.core").joinpath(BUILTIN_NAME).read_bytes()


def load_rules(path: str | None = None) -> RuleSet:
    """Load a rules file, or the built-in catalog when `path` is None."""
    if path is None:
        return parse_rules(builtin_rules_bytes(), "builtin:" + BUILTIN_NAME)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise _fail(path, None, None, f"cannot read: {exc.strerror or exc}") from None
    return parse_rules(data, path)
