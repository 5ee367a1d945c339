"""Match conditions of the rules file, compiled to plain predicates over an EnrichedEvent."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from streams.core.classify import EnrichedEvent

Predicate = Callable[[EnrichedEvent], bool]
Accessor = Callable[[EnrichedEvent], Any]


class ConditionError(ValueError):
    """A condition that cannot be compiled; `path` names the offending field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


def _event_attr(name: str) -> Accessor:
    return lambda ee: getattr(ee.event, name)


def _nested(obj: str, name: str) -> Accessor:
    def get(ee: EnrichedEvent) -> Any:
        holder = getattr(ee.event, obj)
        return getattr(holder, name) if holder is not None else None

    return get


def _account_attr(name: str) -> Accessor:
    def get(ee: EnrichedEvent) -> Any:
        acc = ee.account
        return getattr(acc, name) if acc is not None else None

    return get


# Every field a condition may name, with the type its values have.
FIELDS: dict[str, tuple[Accessor, str]] = {
    "event_id": (_event_attr("event_id"), "string"),
    "ts": (_event_attr("ts_ms"), "number"),
    "account_id": (_event_attr("account_id"), "string"),
    "operation": (_event_attr("operation"), "string"),
    "api_key_id": (_event_attr("api_key_id"), "string"),
    "model": (_event_attr("model"), "string"),
    "region": (_event_attr("region"), "string"),
    "client_ip": (_event_attr("client_ip"), "string"),
    "image_count": (_event_attr("image_count"), "number"),
    "audio_count": (_event_attr("audio_count"), "number"),
    "faces_detected": (_event_attr("faces_detected"), "number"),
    "subject_ids": (_event_attr("subject_ids"), "array"),
    "gallery.id": (_nested("gallery", "id"), "string"),
    "gallery.kind": (_nested("gallery", "kind"), "string"),
    "capture.device": (_nested("capture", "device"), "string"),
    "capture.setting": (_nested("capture", "setting"), "string"),
    "intent.label": (_nested("intent", "label"), "string"),
    "intent.score": (_nested("intent", "score"), "number"),
    "bio_kind": (lambda ee: ee.bio_kind, "string"),
    "trait": (lambda ee: ee.trait, "string"),
    "bio_use": (lambda ee: ee.bio_use, "boolean"),
    "bio_by": (lambda ee: ee.bio_by, "string"),
    "fr_kind": (lambda ee: ee.fr_kind, "string"),
    "fr_use": (lambda ee: ee.fr_use, "boolean"),
    "le_customer": (lambda ee: ee.le_customer, "boolean"),
    "account.known": (lambda ee: ee.account is not None, "boolean"),
    "account.org_id": (_account_attr("org_id"), "string"),
    "account.org_name": (_account_attr("org_name"), "string"),
    "account.sector": (_account_attr("sector"), "string"),
    "account.acting_for": (_account_attr("acting_for"), "string"),
    "account.country": (_account_attr("country"), "string"),
    "account.approved_uses": (lambda ee: ee.account.approved_uses if ee.account else (), "array"),
}

COMPARISONS = (
    "equals",
    "not_equals",
    "in",
    "not_in",
    "gte",
    "gt",
    "lte",
    "lt",
    "contains",
    "not_contains",
    "is_null",
)
COMBINATORS = ("all", "any", "not", "ref")


def _scalar_ok(value: object, kind: str) -> bool:
    if kind == "boolean":
        return type(value) is bool
    if kind == "number":
        return type(value) in (int, float)
    return type(value) is str


def _compile_comparison(
    node: Mapping[str, Any], path: str, lists: Mapping[str, tuple[Any, ...]]
) -> Predicate:
    field = node.get("field")
    if not isinstance(field, str):
        raise ConditionError(f"{path}.field", "field must name an event field")
    if field not in FIELDS:
        raise ConditionError(
            f"{path}.field", f"unknown field {field!r} (known: {', '.join(FIELDS)})"
        )
    get, kind = FIELDS[field]
    ops = [k for k in node if k != "field"]
    if len(ops) != 1:
        raise ConditionError(
            path, f"a comparison has exactly one operator of {', '.join(COMPARISONS)}"
        )
    op = ops[0]
    arg = node[op]
    where = f"{path}.{op}"
    if op not in COMPARISONS:
        raise ConditionError(where, f"unknown operator {op!r} (known: {', '.join(COMPARISONS)})")
    if op == "is_null":
        if type(arg) is not bool:
            raise ConditionError(where, "is_null takes true or false")
        return (lambda ee: get(ee) is None) if arg else (lambda ee: get(ee) is not None)
    if op in ("in", "not_in"):
        if isinstance(arg, str):
            if arg not in lists:
                raise ConditionError(where, f"unknown list {arg!r}")
            values = lists[arg]
        elif isinstance(arg, list) and arg:
            values = tuple(arg)
        else:
            raise ConditionError(where, f"{op} takes a non-empty list or the name of a list")
        if kind == "array":
            raise ConditionError(where, f"{field} is an array: use contains / not_contains")
        for v in values:
            if not _scalar_ok(v, kind):
                raise ConditionError(where, f"{v!r} is not a {kind}, the type of {field}")
        members = frozenset(values)
        if op == "in":
            return lambda ee: get(ee) in members
        return lambda ee: get(ee) not in members
    if op in ("contains", "not_contains"):
        if kind != "array":
            raise ConditionError(where, f"{op} applies to array fields, {field} is a {kind}")
        if type(arg) is not str:
            raise ConditionError(where, f"{op} takes a string")
        if op == "contains":
            return lambda ee: arg in get(ee)
        return lambda ee: arg not in get(ee)
    if kind == "array":
        raise ConditionError(where, f"{field} is an array: use contains / not_contains")
    if not _scalar_ok(arg, kind):
        raise ConditionError(where, f"{arg!r} is not a {kind}, the type of {field}")
    if op == "equals":
        return lambda ee: get(ee) == arg if type(arg) is not bool else get(ee) is arg
    if op == "not_equals":
        return lambda ee: get(ee) != arg
    if kind != "number":
        raise ConditionError(where, f"{op} applies to number fields, {field} is a {kind}")
    if op == "gte":
        return lambda ee: (v := get(ee)) is not None and v >= arg
    if op == "gt":
        return lambda ee: (v := get(ee)) is not None and v > arg
    if op == "lte":
        return lambda ee: (v := get(ee)) is not None and v <= arg
    return lambda ee: (v := get(ee)) is not None and v < arg


def _fold(parts: tuple[Predicate, ...], conjunction: bool) -> Predicate:
    # chained closures short-circuit without building a generator per event
    head, rest = parts[0], parts[1:]
    if not rest:
        return head
    tail = _fold(rest, conjunction)
    if conjunction:
        return lambda ee: head(ee) and tail(ee)
    return lambda ee: head(ee) or tail(ee)


def compile_condition(
    node: object,
    path: str,
    lists: Mapping[str, tuple[Any, ...]],
    named: Mapping[str, Predicate],
) -> Predicate:
    """Compile one condition node; raises ConditionError naming the path of a bad field."""
    if not isinstance(node, dict):
        raise ConditionError(path, "a condition is a mapping (all/any/not/ref or field + operator)")
    if "field" in node:
        return _compile_comparison(node, path, lists)
    if len(node) != 1:
        raise ConditionError(path, "use exactly one of all, any, not, ref, or field + operator")
    ((op, arg),) = node.items()
    where = f"{path}.{op}"
    if op == "ref":
        if not isinstance(arg, str) or arg not in named:
            raise ConditionError(where, f"unknown condition {arg!r}")
        return named[arg]
    if op == "not":
        inner = compile_condition(arg, where, lists, named)
        return lambda ee: not inner(ee)
    if op in ("all", "any"):
        if not isinstance(arg, list) or not arg:
            raise ConditionError(where, f"{op} takes a non-empty list of conditions")
        parts = tuple(
            compile_condition(c, f"{where}[{i}]", lists, named) for i, c in enumerate(arg)
        )
        if len(parts) == 1:
            return parts[0]
        return _fold(parts, op == "all")
    raise ConditionError(
        where, f"unknown operator {op!r} (known: {', '.join(COMBINATORS + COMPARISONS)})"
    )
