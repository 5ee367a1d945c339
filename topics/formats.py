"""Input formats (SPEC 2.4): load and validate a format; the names callers use.

A format is a YAML file (docs/input-formats.md): for each SPEC 2.1 field, where it comes
from in the source record and how it is transformed; how messages batch records; which
records are not requests (skipped). It is validated at load, every error reported with the
file and the field, and compiled to one function (`topics.format_compiler`); the mapping
itself is `topics.format_mapping`.

The default format, `frwatch`, is no mapping at all (`load_format` returns None): the
default path costs nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml

from topics.format_compiler import compile_mapper
from topics.format_mapping import (
    FIELDS,
    REQUIRED,
    SKIPPED,
    TIMESTAMPS,
    FieldSource,
    InputFormat,
    Path_,
    SkipWhen,
    parse_path,
    path_text,
)

__all__ = [
    "BUILTIN",
    "DEFAULT",
    "SKIPPED",
    "FormatError",
    "InputFormat",
    "describe_problem",
    "load_format",
    "parse_format",
    "parse_path",
]

DEFAULT: Final = "frwatch"
BUILTIN: Final = ("azure-resource-log",)
_TOP_KEYS = {"format", "description", "records", "json_strings", "skip", "fields"}
_FIELD_KEYS = {
    "path",
    "const",
    "digest",
    "segment_after",
    "lower",
    "upper",
    "map",
    "timestamp",
    "integer",
    "default",
}
_SKIP_KEYS = {"path", "in", "not_in", "exists"}


class FormatError(ValueError):
    """An invalid input format; the message names the file and the field.

    `problems` holds every error found (this one first); the message has one line each.
    """

    def __init__(self, file: str, field: str | None, message: str) -> None:
        where = file if field is None else f"{file}: field {field}"
        super().__init__(f"{where}: {message}")
        self.file, self.field = file, field
        self.problems: list[FormatError] = [self]

    @classmethod
    def of(cls, problems: list[FormatError]) -> FormatError:
        """One error that carries several."""
        first = problems[0]
        if len(problems) == 1:
            return first
        out = cls(first.file, first.field, "")
        out.args = ("\n".join(str(p) for p in problems),)
        out.problems = list(problems)
        return out


def builtin_format_bytes(name: str) -> bytes:
    """A shipped format's file."""
    return resources.files("topics").joinpath(f"input_formats/{name}.yaml").read_bytes()


def load_format(spec: str | None) -> InputFormat | None:
    """The format named `spec` (a built-in name or a file); None for `frwatch` (no mapping)."""
    if spec is None or spec.strip() in ("", DEFAULT):
        return None
    spec = spec.strip().removeprefix("builtin:")
    if spec in BUILTIN:
        return parse_format(builtin_format_bytes(spec), f"builtin:{spec}")
    try:
        data = Path(spec).read_bytes()
    except OSError as exc:
        known = ", ".join((DEFAULT, *BUILTIN))
        raise FormatError(
            spec, None, f"cannot read: {exc.strerror or exc} (built-in formats: {known})"
        ) from None
    return parse_format(data, spec)


def parse_format(data: bytes, file: str) -> InputFormat:
    """Validate a format file; raises FormatError with every problem found."""
    problems: list[FormatError] = []

    def fail(field: str | None, message: str) -> None:
        problems.append(FormatError(file, field, message))

    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise FormatError(file, None, f"not YAML: {exc}".replace("\n", " ")) from None
    if type(doc) is not dict:
        raise FormatError(file, None, "must be a mapping with format and fields")
    for key in doc:
        if key not in _TOP_KEYS:
            fail(str(key), f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
    name = doc.get("format")
    if type(name) is not str or not name.strip():
        fail("format", "must be the format's name (a non-empty string)")
        name = file
    records_key = doc.get("records")
    if records_key is not None and (type(records_key) is not str or not records_key):
        fail("records", "must be the key of a batch's array of records, or null")
        records_key = None
    json_strings: list[Path_] = []
    for i, text in enumerate(_as_list(doc.get("json_strings"), "json_strings", fail)):
        p = _path(text, f"json_strings[{i}]", fail)
        if p is not None:
            json_strings.append(p)
    skip = []
    for i, cond in enumerate(_as_list(doc.get("skip"), "skip", fail)):
        s = _skip_when(cond, f"skip[{i}]", fail)
        if s is not None:
            skip.append(s)
    fields: list[FieldSource] = []
    spec = doc.get("fields")
    if type(spec) is not dict:
        fail("fields", "must map SPEC 2.1 fields to their sources")
        spec = {}
    for fname, fspec in spec.items():
        if fname not in FIELDS:
            fail(f"fields.{fname}", f"not a request field (fields: {', '.join(FIELDS)})")
            continue
        f = _field_source(str(fname), fspec, fail)
        if f is not None:
            fields.append(f)
    for req in REQUIRED:
        if req not in spec:
            fail(f"fields.{req}", "required field is not mapped")
    for parent in ("gallery", "capture", "intent"):
        if parent in spec and any(k.startswith(parent + ".") for k in spec):
            fail(f"fields.{parent}", f"map {parent} whole or its members, not both")
    if problems:
        raise FormatError.of(problems)
    fmt = InputFormat(
        str(name).strip(),
        file,
        hashlib.sha256(data).hexdigest(),
        records_key,
        tuple(json_strings),
        tuple(skip),
        tuple(fields),
        map_record=lambda rec: fmt.interpret(rec),
    )
    return dataclasses.replace(fmt, map_record=compile_mapper(fmt))


Fail = Callable[[str | None, str], None]


def _as_list(v: Any, field: str, fail: Fail) -> list[Any]:
    if v is None:
        return []
    if type(v) is not list:
        fail(field, "must be a list")
        return []
    return v


def _path(text: Any, field: str, fail: Fail) -> Path_ | None:
    if type(text) is not str:
        fail(field, "a path must be a string such as properties.modelName")
        return None
    try:
        return parse_path(text)
    except ValueError as exc:
        fail(field, str(exc))
        return None


def _skip_when(cond: Any, field: str, fail: Fail) -> SkipWhen | None:
    if type(cond) is not dict:
        fail(field, "must be a mapping such as {path: category, in: [Audit]}")
        return None
    bad = [k for k in cond if k not in _SKIP_KEYS]
    if bad:
        fail(field, f"unknown key {bad[0]} (known: {', '.join(sorted(_SKIP_KEYS))})")
        return None
    path = _path(cond.get("path"), f"{field}.path", fail)
    tests = [k for k in ("in", "not_in", "exists") if k in cond]
    if not tests:
        fail(field, "needs in, not_in or exists")
        return None
    sets: dict[str, frozenset[Any]] = {}
    for k in ("in", "not_in"):
        if k in cond:
            values = cond[k]
            if type(values) is not list or not all(
                type(x) in (str, int, float, bool) for x in values
            ):
                fail(f"{field}.{k}", "must be a list of strings or numbers")
                return None
            sets[k] = frozenset(values)
    exists = cond.get("exists")
    if "exists" in cond and type(exists) is not bool:
        fail(f"{field}.exists", "must be true or false")
        return None
    if path is None:
        return None
    return SkipWhen(path, sets.get("in"), sets.get("not_in"), exists)


def _field_source(name: str, spec: Any, fail: Fail) -> FieldSource | None:
    field = f"fields.{name}"
    if type(spec) is str:
        spec = {"path": spec}  # `model: properties.modelName`, the short form
    if type(spec) is not dict:
        fail(field, "must be a path or a mapping such as {path: ..., lower: true}")
        return None
    ok = True
    for k in spec:
        if k not in _FIELD_KEYS:
            fail(f"{field}.{k}", f"unknown key (known: {', '.join(sorted(_FIELD_KEYS))})")
            ok = False
    raw_paths = spec.get("path")
    texts = raw_paths if type(raw_paths) is list else ([] if raw_paths is None else [raw_paths])
    paths = []
    for i, text in enumerate(texts):
        p = _path(text, f"{field}.path" + (f"[{i}]" if type(raw_paths) is list else ""), fail)
        if p is None:
            ok = False
        else:
            paths.append(p)
    if type(raw_paths) is list and not raw_paths:
        fail(f"{field}.path", "must name at least one path")
        ok = False
    const = spec.get("const")
    digest = spec.get("digest")
    if digest is not None and digest != "sha256":
        fail(f"{field}.digest", "the only digest is sha256 (of the record's canonical JSON)")
        ok = False
    if not paths and const is None and digest is None:
        fail(field, "needs a path, a const or a digest")
        ok = False
    if const is not None and (paths or digest is not None):
        fail(f"{field}.const", "a constant takes no path or digest")
        ok = False
    segment = spec.get("segment_after")
    if segment is not None and (type(segment) is not str or not segment or "/" in segment):
        fail(f"{field}.segment_after", "must be a path segment name such as subscriptions")
        ok = False
    case = None
    for k in ("lower", "upper"):
        if k in spec:
            if type(spec[k]) is not bool:
                fail(f"{field}.{k}", "must be true or false")
                ok = False
            elif spec[k]:
                if case is not None:
                    fail(field, "lower and upper exclude each other")
                    ok = False
                case = k
    table = spec.get("map")
    if table is not None and (
        type(table) is not dict
        or not all(type(k) in (str, int) and type(v) in (str, int) for k, v in table.items())
    ):
        fail(f"{field}.map", "must map source values (strings, integers) to field values")
        ok = False
    timestamp = spec.get("timestamp")
    if timestamp is not None and timestamp not in TIMESTAMPS:
        fail(f"{field}.timestamp", f"must be one of {', '.join(TIMESTAMPS)}")
        ok = False
    if timestamp is not None and name != "ts":
        fail(f"{field}.timestamp", "only ts is a timestamp")
        ok = False
    integer = spec.get("integer", False)
    if type(integer) is not bool:
        fail(f"{field}.integer", "must be true or false")
        ok = False
    if name in REQUIRED and "default" in spec:
        fail(
            f"{field}.default", "a required field has no default: a record without it is malformed"
        )
        ok = False
    if not ok:
        return None
    described = " or ".join(path_text(p) for p in paths) or (
        "a constant" if const is not None else "the record's sha256"
    )
    if segment:
        described += f" (the segment after {segment})"
    if digest is not None and paths:
        described += ", else the record's sha256"
    return FieldSource(
        name,
        tuple(paths),
        described,
        const,
        digest is not None,
        segment.lower() if segment else None,
        case,
        dict(table) if table else None,
        timestamp,
        bool(integer),
        spec.get("default"),
    )


def describe_problem(exc: FormatError) -> str:
    """Every problem on one line (for commands that print one line)."""
    return "; ".join(str(p) for p in exc.problems)
