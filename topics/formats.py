"""Input formats (SPEC 2.4): map records of another log schema to request events.

A format is a YAML file (docs/input-formats.md): for each SPEC 2.1 field, where it comes
from in the source record and how it is transformed; how messages batch records; which
records are not requests (skipped). It is validated at load, every error reported with the
file and the field. A mapped record is a frwatch-format dict, checked by the one validator
of `topics.requests`; it carries its `Origin`, so that a dead letter holds the record as
sent and names the source path of the field at fault.

The default format, `frwatch`, is no mapping at all (`load_format` returns None): the
default path costs nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

import orjson
import yaml

from topics.dlq import MISSING_FIELD, WRONG_TYPE, Rejection, raw_text
from topics.requests import (
    ORIGIN,
    Origin,
    RejectedRecord,
    RequestEvent,
    UnmappedRecord,
    parse_request_record,
    rejected_record,
    request_records,
)

DEFAULT: Final = "frwatch"
BUILTIN: Final = ("azure-resource-log",)

#: the SPEC 2.1 fields a format maps to; `gallery.kind` and the like set one member
REQUIRED: Final = ("event_id", "ts", "account_id", "operation")
FIELDS: Final = (
    *REQUIRED,
    "api_key_id",
    "model",
    "region",
    "client_ip",
    "image_count",
    "audio_count",
    "faces_detected",
    "subject_ids",
    "gallery",
    "gallery.id",
    "gallery.kind",
    "capture",
    "capture.device",
    "capture.setting",
    "intent",
    "intent.label",
    "intent.score",
)
TIMESTAMPS: Final = ("rfc3339", "epoch_s", "epoch_ms", "epoch_us", "epoch_ns")
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
_TO_MS = {"epoch_s": 1000, "epoch_ms": 1, "epoch_us": 0.001, "epoch_ns": 0.000001}
_DIVISOR = {"epoch_us": 1000, "epoch_ns": 1_000_000}

Path_ = tuple[str | int, ...]


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


def _unset(rec: Any) -> Any:  # pragma: no cover - replaced in __post_init__
    raise AssertionError("not compiled")


class _Unmappable(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


#: the record that a format declares not to be a request (a RejectedRecord, so that the
#: callers' check for rejections sees it and valid events cost no extra check)
SKIPPED: Final = RejectedRecord(Rejection("skipped", None, "not a request"), "")

_KEY = re.compile(r"[A-Za-z_$@][\w$@:-]*", re.A)
_BRACKET = re.compile(r'\["((?:[^"\\]|\\.)*)"\]|\[(\d+)\]')


def parse_path(text: str) -> Path_:
    """`a.b["c.d"][0]` -> ("a", "b", "c.d", 0); ValueError for anything else."""
    keys: list[str | int] = []
    pos, n = 0, len(text)
    while pos < n:
        if text[pos] == "[":
            m = _BRACKET.match(text, pos)
            if m is None:
                break
            quoted, index = m.groups()
            keys.append(int(index) if index is not None else re.sub(r"\\(.)", r"\1", quoted))
        else:
            if keys:
                if text[pos] != ".":
                    break
                pos += 1
            m = _KEY.match(text, pos)
            if m is None:
                break
            keys.append(m.group())
        pos = m.end()
    if pos < n or not keys:
        raise ValueError(
            f'not a path at {text[pos:]!r} (keys a.b, a quoted key ["a.b"], an index [0])'
        )
    return tuple(keys)


def _walk(value: Any, keys: Path_) -> Any:
    for k in keys:
        t = type(value)
        if t is dict:
            value = value.get(k)
        elif t is list and type(k) is int and k < len(value):
            value = value[k]
        else:
            return None
        if value is None:
            return None
    return value


@dataclass(frozen=True, slots=True)
class FieldSource:
    """Where one SPEC 2.1 field comes from and how it is transformed."""

    field: str
    paths: tuple[Path_, ...]
    described: str  # the source path(s) as a dead letter names them
    const: Any = None
    digest: bool = False
    segment_after: str | None = None
    case: str | None = None  # "lower" or "upper"
    table: dict[Any, Any] | None = None
    timestamp: str | None = None
    integer: bool = False
    default: Any = None

    def value(self, rec: Any, source: dict[str, Any]) -> Any:
        """The field's value in `rec` (None: absent); raises _Unmappable."""
        v = None
        for keys in self.paths:
            v = _walk(rec, keys)
            if v is not None:
                break
        if v is None:
            if self.const is not None:
                return self.const
            if self.digest:
                return self._digest(source)
            return self.default
        if self.segment_after is not None:
            v = self._segment(v)
        if self.case is not None and type(v) is str:
            v = v.lower() if self.case == "lower" else v.upper()
        if self.table is not None:
            v = self._table(v)
        if self.timestamp is not None and self.timestamp != "rfc3339":
            v = self._epoch_ms(v)
        if self.integer and type(v) is str:
            v = self._integer(v)
        return v

    def _integer(self, v: str) -> int:
        text = v.strip()
        if not text.lstrip("-").isdigit() or not text.isascii():
            raise _Unmappable(WRONG_TYPE, f"{v[:40]!r} is not an integer")
        return int(text)

    def _table(self, v: Any) -> Any:
        table = self.table
        assert table is not None
        # an unhashable value (object, array) is in no table
        with contextlib.suppress(TypeError):
            return table.get(v, v)
        return v

    def _digest(self, source: Any) -> str:
        return hashlib.sha256(orjson.dumps(source, option=orjson.OPT_SORT_KEYS)).hexdigest()

    def _segment(self, v: Any) -> str:
        if type(v) is not str:
            raise _Unmappable(WRONG_TYPE, "must be a string (a resource path)")
        text = "/" + v
        lowered = text.lower()
        needle = f"/{self.segment_after}/"
        at = lowered.find(needle)
        while at >= 0:
            begin = at + len(needle)
            end = text.find("/", begin)
            segment = text[begin:] if end < 0 else text[begin:end]
            if segment:
                return segment
            at = lowered.find(needle, at + 1)
        raise _Unmappable(MISSING_FIELD, f"no segment after {self.segment_after!r} in {v[:200]!r}")

    def _epoch_ms(self, v: Any) -> int:
        unit = self.timestamp
        assert unit is not None
        if type(v) is str and v.isascii() and v.isdigit():
            n: int | float = int(v)
        elif type(v) in (int, float):
            n = v
        else:
            raise _Unmappable(WRONG_TYPE, f"must be a number of {unit[6:]} since the epoch")
        if type(n) is int and unit in _DIVISOR:
            return n // _DIVISOR[unit]  # exact: truncated to the millisecond, never rounded
        return int(n * _TO_MS[unit]) if unit != "epoch_ms" else int(n)


@dataclass(frozen=True, slots=True)
class SkipWhen:
    """A condition under which a source record is not a request."""

    path: Path_
    within: frozenset[Any] | None = None  # skip when the value is one of these
    outside: frozenset[Any] | None = None  # skip when present and none of these
    exists: bool | None = None  # skip when present (True) or absent (False)

    def holds(self, rec: Any) -> bool:
        """Whether `rec` is to be skipped by this condition."""
        v = _walk(rec, self.path)
        if self.exists is not None and (v is not None) != self.exists:
            return False
        try:
            if self.within is not None and v not in self.within:
                return False
            if self.outside is not None and (v is None or v in self.outside):
                return False
        except TypeError:  # an unhashable value is in no list
            return self.within is None
        return True


@dataclass(frozen=True, slots=True)
class InputFormat:
    """A validated input format; `map_record` is the whole mapping of one source record."""

    name: str
    path: str
    sha256: str
    records_key: str | None
    json_strings: tuple[Path_, ...]
    skip: tuple[SkipWhen, ...]
    fields: tuple[FieldSource, ...]
    #: one source record -> a frwatch-format dict, `SKIPPED`, an `UnmappedRecord`, or a
    #: non-object as it is (the validator says so): the format compiled to one function
    map_record: Callable[[Any], Any] = field(default=_unset, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.map_record is _unset:
            object.__setattr__(self, "map_record", compile_mapper(self))

    @property
    def sources(self) -> dict[str, str]:
        """Each mapped field's source path(s), as dead letters name them."""
        return {f.field: f.described for f in self.fields}

    def interpret(self, rec: Any, sources: dict[str, str] | None = None) -> Any:
        """`map_record`, interpreted from the definition: the reference the compiled one meets."""
        if type(rec) is not dict:
            return rec  # not an object: the validator says so
        view = rec
        for keys in self.json_strings:
            held = _walk(view, keys)
            if type(held) is str:
                try:
                    decoded = orjson.loads(held)
                except orjson.JSONDecodeError as exc:
                    return self._unmapped(rec, keys, f"is a string that is not JSON ({exc})")
                view = _replaced(view, keys, decoded)
        for cond in self.skip:
            if cond.holds(view):
                return SKIPPED
        out: dict[str, Any] = {ORIGIN: Origin(rec, sources or self.sources)}
        for f in self.fields:
            try:
                v = f.value(view, rec)
            except _Unmappable as exc:
                return UnmappedRecord(
                    rec, Rejection(exc.reason, f.field, f"{f.field} from {f.described}: {exc}")
                )
            name = f.field
            if v is None:
                if name in REQUIRED:
                    detail = f"{name} from {f.described}: missing"
                    return UnmappedRecord(rec, Rejection(MISSING_FIELD, name, detail))
                continue
            if "." in name:
                parent, _, member = name.partition(".")
                holder = out.get(parent)
                if type(holder) is not dict:
                    holder = out[parent] = {}
                holder[member] = v
            else:
                out[name] = v
        return out

    def _unmapped(self, rec: Any, keys: Path_, why: str) -> UnmappedRecord:
        held = _path_text(keys)
        reading = [f for f in self.fields if any(p[: len(keys)] == keys for p in f.paths)]
        name = reading[0].field if reading else None
        where = f"{name} from {reading[0].described}: " if reading else ""
        return UnmappedRecord(rec, Rejection(WRONG_TYPE, name, f"{where}{held} {why}"))

    def request_records(self, data: bytes | str) -> tuple[list[Any], bool, int] | RejectedRecord:
        """The mapped records of one message, whether it was a batch, and how many were skipped.

        Mapped records go to the validator of `topics.requests` like frwatch-format ones.
        """
        found = self._source_records(data)
        if type(found) is RejectedRecord:
            return found
        records, batched = found  # type: ignore[misc]
        mapped = []
        skipped = 0
        map_record = self.map_record
        for rec in records:
            m = map_record(rec)
            if m is SKIPPED:
                skipped += 1
            else:
                mapped.append(m)
        return mapped, batched, skipped

    def _source_records(self, data: bytes | str) -> tuple[list[Any], bool] | RejectedRecord:
        if self.records_key == "records":
            return request_records(data)  # frwatch's own split (deep records included)
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            return RejectedRecord(Rejection("not_json", None, f"not JSON: {exc}"), raw_text(data))
        key = self.records_key
        if key is not None and type(obj) is dict and key in obj:
            records = obj[key]
            if type(records) is not list:
                rej = Rejection(WRONG_TYPE, key, f"{key} must be an array of records")
                return RejectedRecord(rej, raw_text(data))
            return records, True
        return [obj], False

    def decode_message(self, data: bytes | str) -> list[RequestEvent | RejectedRecord]:
        """`topics.requests.decode_request_message` for this format; skipped ones are `SKIPPED`."""
        found = self._source_records(data)
        if type(found) is RejectedRecord:
            return [found]
        records, batched = found  # type: ignore[misc]
        out: list[RequestEvent | RejectedRecord] = []
        map_record = self.map_record
        for rec in records:
            m = map_record(rec)
            if m is SKIPPED:
                out.append(SKIPPED)
                continue
            r = parse_request_record(m)
            if type(r) is Rejection:
                out.append(rejected_record(r, m, data, batched))
            else:
                out.append(r)  # type: ignore[arg-type]
        return out


def _replaced(rec: dict[Any, Any], keys: Path_, value: Any) -> dict[Any, Any]:
    """A copy of `rec` with the value at `keys` replaced (the source record stays as sent)."""
    head, rest = keys[0], keys[1:]
    out = dict(rec)
    if not rest:
        out[head] = value
    else:
        inner = out.get(head)
        if type(inner) is dict:
            out[head] = _replaced(inner, rest, value)
    return out


def _path_text(keys: Path_) -> str:
    out = ""
    for k in keys:
        if type(k) is int:
            out += f"[{k}]"
        elif re.fullmatch(r"[A-Za-z_$@][\w$@:-]*", str(k), re.A):
            out += f".{k}" if out else str(k)
        else:
            out += '["' + str(k).replace("\\", "\\\\").replace('"', '\\"') + '"]'
    return out


# ---- the compiled mapper ----------------------------------------------------------------
#
# A format is compiled to the source of one Python function, then to code: per record no
# loop over fields or path keys, no method call for what a format does not declare. Only
# reprs of the format's own keys (strings, integers) and names of this module appear in the
# source; every other value is passed in as a constant.

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
        "Unmappable": _Unmappable,
        "UnmappedRecord": UnmappedRecord,
        "Rejection": Rejection,
        "MISSING_FIELD": MISSING_FIELD,
        "not_json": fmt._unmapped,
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


# ---- loading and validation -------------------------------------------------------------


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
    return InputFormat(
        str(name).strip(),
        file,
        hashlib.sha256(data).hexdigest(),
        records_key,
        tuple(json_strings),
        tuple(skip),
        tuple(fields),
    )


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
    described = " or ".join(_path_text(p) for p in paths) or (
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


def format_name(fmt: InputFormat | None) -> str:
    """How a format is named in logs and summaries."""
    return DEFAULT if fmt is None else fmt.name


def describe_problem(exc: FormatError) -> str:
    """Every problem on one line (for commands that print one line)."""
    return "; ".join(str(p) for p in exc.problems)
