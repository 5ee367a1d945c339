"""An input format compiled to one Python function (`InputFormat.interpret` spelled out).

Per record no loop over fields or path keys, no method call for what a format does not
declare. Only reprs of the format's own keys (strings, integers) and names of this module
appear in the generated source; every other value is passed in as a constant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from topics.dlq import MISSING_FIELD, Rejection
from topics.format_mapping import (
    REQUIRED,
    SKIPPED,
    InputFormat,
    Path_,
    SkipWhen,
    Unmappable,
)
from topics.requests import ORIGIN, Origin, UnmappedRecord

_HASHABLE = frozenset({str, int, float, bool})


def _walk_code(keys: Path_, start: str, json: tuple[Path_, ...] = ()) -> list[str]:
    """Statements that leave the value at `keys` in `v`, or None.

    `start` is the record (a dict); a path under one of the `json` prefixes starts from
    that prefix's decoded value instead (`J_<n>`, which may be anything).
    """
    for n in sorted(range(len(json)), key=lambda n: -len(json[n])):
        prefix = json[n]
        if keys[: len(prefix)] == prefix:
            rest = keys[len(prefix) :]
            return [f"v = J_{n}", *_steps(rest)]
    first = keys[0]
    out = [f"v = {start}.get({first!r})" if type(first) is str else "v = None"]
    return out + _steps(keys[1:])


def _steps(keys: Path_) -> list[str]:
    out = []
    for k in keys:
        if type(k) is int:
            out.append(f"v = (v[{k}] if len(v) > {k} else None) if type(v) is list else None")
        else:
            out.append(f"v = v.get({k!r}) if type(v) is dict else None")
    return out


def _skip_test(cond: SkipWhen, n: int) -> str:
    tests = []
    if cond.exists is True:
        tests.append("v is not None")
    elif cond.exists is False:
        tests.append("v is None")
    if cond.within is not None:
        tests.append(f"(type(v) in HASHABLE and v in IN_{n})")
    if cond.outside is not None:
        tests.append(f"(v is not None and not (type(v) in HASHABLE and v in OUT_{n}))")
    return " and ".join(tests)


def compile_mapper(fmt: InputFormat) -> Callable[[Any], Any]:
    """`fmt`'s mapping of one source record, compiled (`InputFormat.interpret` spelled out)."""
    env: dict[str, Any] = {
        "ORIGIN": ORIGIN,
        "Origin": Origin,
        "new": tuple.__new__,
        "SOURCES": fmt.sources,
        "SKIPPED": SKIPPED,
        "HASHABLE": _HASHABLE,
        "loads": orjson.loads,
        "JSONDecodeError": orjson.JSONDecodeError,
        "Unmappable": Unmappable,
        "UnmappedRecord": UnmappedRecord,
        "Rejection": Rejection,
        "MISSING_FIELD": MISSING_FIELD,
        "not_json": fmt.unmapped,
        "FIELDS": fmt.fields,
    }
    body = ["if type(rec) is not dict:", "    return rec"]
    # each string holding JSON is decoded once, into J_<n>; paths under it start there
    json = fmt.json_strings
    for j, keys in enumerate(json):
        env[f"JSON_{j}"] = keys
        body += _walk_code(keys, "rec", json[:j])
        body += [
            "if type(v) is str:",
            "    try:",
            "        v = loads(v)",
            "    except JSONDecodeError as exc:",
            f"        return not_json(rec, JSON_{j}, f'is a string that is not JSON ({{exc}})')",
            f"J_{j} = v",
        ]
    for n, cond in enumerate(fmt.skip):
        env[f"IN_{n}"], env[f"OUT_{n}"] = cond.within, cond.outside
        body += _walk_code(cond.path, "rec", json)
        body += [f"if {_skip_test(cond, n)}:", "    return SKIPPED"]
    body += ["out = {ORIGIN: new(Origin, (rec, SOURCES))}", "i = 0", "try:"]
    for i, f in enumerate(fmt.fields):
        env[f"F_{i}"] = f
        code = [f"i = {i}"]
        for a, keys in enumerate(f.paths):
            walk = _walk_code(keys, "rec", json)
            code += walk if a == 0 else ["if v is None:", *("    " + w for w in walk)]
        if not f.paths:
            code.append("v = None")
        absent = (
            [f"v = F_{i}.const"]
            if f.const is not None
            else [f"v = F_{i}._digest(rec)"]
            if f.digest
            else [f"v = F_{i}.default"]
            if f.default is not None
            else []
        )
        present = []
        if f.segment_after is not None:
            present.append(f"v = F_{i}._segment(v)")
        if f.case is not None:
            present += ["if type(v) is str:", f"    v = v.{f.case}()"]
        if f.table is not None:
            env[f"TABLE_{i}"] = f.table
            present.append(f"v = TABLE_{i}.get(v, v) if type(v) in HASHABLE else v")
        if f.timestamp is not None and f.timestamp != "rfc3339":
            present.append(f"v = F_{i}._epoch_ms(v)")
        if f.integer:
            present += ["if type(v) is str:", f"    v = F_{i}._integer(v)"]
        if f.paths:
            if absent and present:
                code += ["if v is None:", *("    " + c for c in absent), "else:"]
                code += ["    " + c for c in present]
            elif absent:
                code += ["if v is None:", *("    " + c for c in absent)]
            elif present:
                code += ["if v is not None:", *("    " + c for c in present)]
        else:
            code += absent
        name = f.field
        if "." in name:
            parent, _, member = name.partition(".")
            # the parent's dict exists once any member is set
            store = [
                f"if {parent!r} in out:",
                f"    out[{parent!r}][{member!r}] = v",
                "else:",
                f"    out[{parent!r}] = {{{member!r}: v}}",
            ]
        else:
            store = [f"out[{name!r}] = v"]
        if name in REQUIRED:
            code += [
                "if v is None:",
                f"    return UnmappedRecord(rec, Rejection(MISSING_FIELD, {name!r}, "
                f"{name + ' from ' + f.described + ': missing'!r}))",
                *store,
            ]
        else:
            code += ["if v is not None:", *("    " + c for c in store)]
        body += ["    " + c for c in code]
    body += [
        "except Unmappable as exc:",
        "    f = FIELDS[i]",
        "    return UnmappedRecord(rec, Rejection(exc.reason, f.field, "
        "f'{f.field} from {f.described}: {exc}'))",
        "return out",
    ]
    source = "def map_record(rec):\n" + "".join(f"    {line}\n" for line in body)
    exec(compile(source, f"<input format {fmt.name}>", "exec"), env)
    mapper: Callable[[Any], Any] = env["map_record"]
    mapper.source = source  # type: ignore[attr-defined]
    return mapper
