"""An input format's mapping (SPEC 2.4): one source record -> a frwatch-format record.

A mapped record is a frwatch-format dict, checked by the one validator of
`topics.requests`; it carries its `Origin`, so that a dead letter holds the record as sent
and names the source path of the field at fault. Formats are loaded and validated by
`topics.formats` and compiled by `topics.format_compiler`.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

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
_TO_MS = {"epoch_s": 1000, "epoch_ms": 1, "epoch_us": 0.001, "epoch_ns": 0.000001}
_DIVISOR = {"epoch_us": 1000, "epoch_ns": 1_000_000}

Path_ = tuple[str | int, ...]


class Unmappable(Exception):
    """A transform that cannot apply to the value found (raised inside a mapping)."""

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


def walk(value: Any, keys: Path_) -> Any:
    """The value at `keys` in `value`, or None."""
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
        """The field's value in `rec` (None: absent); raises Unmappable."""
        v = None
        for keys in self.paths:
            v = walk(rec, keys)
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
            raise Unmappable(WRONG_TYPE, f"{v[:40]!r} is not an integer")
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
            raise Unmappable(WRONG_TYPE, "must be a string (a resource path)")
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
        raise Unmappable(MISSING_FIELD, f"no segment after {self.segment_after!r} in {v[:200]!r}")

    def _epoch_ms(self, v: Any) -> int:
        unit = self.timestamp
        assert unit is not None
        if type(v) is str and v.isascii() and v.isdigit():
            n: int | float = int(v)
        elif type(v) in (int, float):
            n = v
        else:
            raise Unmappable(WRONG_TYPE, f"must be a number of {unit[6:]} since the epoch")
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
        v = walk(rec, self.path)
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
    #: (`topics.format_compiler`), or `interpret` until it is
    map_record: Callable[[Any], Any] = field(compare=False, repr=False)

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
            held = walk(view, keys)
            if type(held) is str:
                try:
                    decoded = orjson.loads(held)
                except orjson.JSONDecodeError as exc:
                    return self.unmapped(rec, keys, f"is a string that is not JSON ({exc})")
                view = _replaced(view, keys, decoded)
        for cond in self.skip:
            if cond.holds(view):
                return SKIPPED
        out: dict[str, Any] = {ORIGIN: Origin(rec, sources or self.sources)}
        for f in self.fields:
            try:
                v = f.value(view, rec)
            except Unmappable as exc:
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

    def unmapped(self, rec: Any, keys: Path_, why: str) -> UnmappedRecord:
        """The record whose string at `keys` was no JSON, named by the field read through it."""
        held = path_text(keys)
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


def path_text(keys: Path_) -> str:
    """A path as a format file writes it."""
    out = ""
    for k in keys:
        if type(k) is int:
            out += f"[{k}]"
        elif re.fullmatch(r"[A-Za-z_$@][\w$@:-]*", str(k), re.A):
            out += f".{k}" if out else str(k)
        else:
            out += '["' + str(k).replace("\\", "\\\\").replace('"', '\\"') + '"]'
    return out
