"""`api.requests`: the request event (SPEC 2), single or in a `{"records": [...]}` batch."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final, NamedTuple

import msgspec
import orjson

from topics.dlq import (
    MISSING_FIELD,
    NOT_JSON,
    NOT_OBJECT,
    OUT_OF_RANGE,
    WRONG_TYPE,
    Rejection,
    raw_text,
)
from topics.timestamps import MAX_TS_MS, TimestampError, parse_rfc3339_ms

GALLERY_KINDS = ("suspects", "inmates", "mugshots", "watchlist", "employees", "customers", "other")
CAPTURE_DEVICES = ("body_camera", "dash_camera", "mobile", "cctv", "uploaded", "other")
CAPTURE_SETTINGS = ("in_the_wild", "controlled", "other")
INTENT_LABELS = ("identify_person", "verify_identity", "describe_scene", "none")

#: SPEC 2.1's limits: characters of a string field (event_id: 128), items of an array
MAX_STRING_CHARS = 1024
MAX_EVENT_ID_CHARS = 128
MAX_ARRAY_ITEMS = 1000


class Gallery(NamedTuple):
    """The person group a request searched."""

    id: str | None
    kind: str | None


class Capture(NamedTuple):
    """Where the image came from."""

    device: str | None
    setting: str | None


class Intent(NamedTuple):
    """The upstream classifier's reading of a chat/vision request."""

    label: str | None
    score: float | None


class RequestEvent(NamedTuple):
    """One validated API request; `ts_ms` is event time in epoch milliseconds.

    A NamedTuple rather than a frozen dataclass: it is built once per record on the hot path,
    and tuple construction is several times cheaper.
    """

    event_id: str
    ts_ms: int
    account_id: str
    operation: str
    api_key_id: str | None = None
    model: str | None = None
    region: str | None = None
    client_ip: str | None = None
    image_count: int = 0
    faces_detected: int | None = None
    subject_ids: tuple[str, ...] = ()
    gallery: Gallery | None = None
    capture: Capture | None = None
    intent: Intent | None = None
    # last, so that positional construction of v1 fields is unchanged
    audio_count: int = 0

    def to_wire(self) -> dict[str, Any]:
        """A normalized JSON-able dict that `parse_request_record` reads back unchanged."""
        d: dict[str, Any] = {
            "event_id": self.event_id,
            "ts": self.ts_ms,
            "account_id": self.account_id,
            "operation": self.operation,
        }
        for name in ("api_key_id", "model", "region", "client_ip", "faces_detected"):
            v = getattr(self, name)
            if v is not None:
                d[name] = v
        if self.image_count:
            d["image_count"] = self.image_count
        if self.audio_count:
            d["audio_count"] = self.audio_count
        if self.subject_ids:
            d["subject_ids"] = list(self.subject_ids)
        if self.gallery is not None:
            d["gallery"] = {"id": self.gallery.id, "kind": self.gallery.kind}
        if self.capture is not None:
            d["capture"] = {"device": self.capture.device, "setting": self.capture.setting}
        if self.intent is not None:
            d["intent"] = {"label": self.intent.label, "score": self.intent.score}
        return d


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    """A malformed record and its original text (what goes to the DLQ)."""

    rejection: Rejection
    raw: str


class _Invalid(Exception):
    def __init__(self, reason: str, field: str | None, detail: str) -> None:
        super().__init__(detail)
        self.rejection = Rejection(reason, field, detail)


def _type_name(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _wrong(field: str, want: str, v: object) -> _Invalid:
    return _Invalid(WRONG_TYPE, field, f"{field} must be {want}, got {_type_name(v)}")


def _required_str(rec: dict[str, Any], field: str, max_len: int = MAX_STRING_CHARS) -> str:
    v = rec.get(field)
    if v is None:
        raise _Invalid(MISSING_FIELD, field, f"required field {field} is missing")
    if type(v) is not str:
        raise _wrong(field, "a string", v)
    if not v:
        raise _Invalid(OUT_OF_RANGE, field, f"{field} must not be empty")
    if len(v) > max_len:
        raise _Invalid(OUT_OF_RANGE, field, f"{field} is longer than {max_len} characters")
    return v


def _optional_str(obj: dict[str, Any], key: str, field: str) -> str | None:
    v = obj.get(key)
    if v is None:
        return v
    if type(v) is not str:
        raise _wrong(field, "a string", v)
    if len(v) > MAX_STRING_CHARS:
        raise _Invalid(OUT_OF_RANGE, field, f"{field} is longer than {MAX_STRING_CHARS} characters")
    return v


def _optional_count(rec: dict[str, Any], field: str) -> int | None:
    v = rec.get(field)
    if v is None:
        return None
    if type(v) is not int:
        raise _wrong(field, "an integer", v)
    if v < 0:
        raise _Invalid(OUT_OF_RANGE, field, f"{field} must be >= 0")
    return v


def _optional_object(rec: dict[str, Any], field: str) -> dict[str, Any] | None:
    v = rec.get(field)
    if v is None:
        return None
    if type(v) is not dict:
        raise _wrong(field, "an object", v)
    return v


def parse_event_time(v: object, field: str = "ts") -> int:
    """Event time in epoch ms from an RFC 3339 string or an integer of epoch ms."""
    if v is None:
        raise _Invalid(MISSING_FIELD, field, f"required field {field} is missing")
    if type(v) is int:
        if not 0 <= v <= MAX_TS_MS:
            raise _Invalid(OUT_OF_RANGE, field, f"{field} must lie in 0..{MAX_TS_MS}")
        return v
    if type(v) is str:
        try:
            ms = parse_rfc3339_ms(v)
        except TimestampError as exc:
            reason = OUT_OF_RANGE if exc.kind == "range" else WRONG_TYPE
            raise _Invalid(reason, field, f"{field}: {exc}") from None
        # the same bounds as integer ts, so every alert time stays a 4-digit-year RFC 3339 time
        if not 0 <= ms <= MAX_TS_MS:
            raise _Invalid(OUT_OF_RANGE, field, f"{field} must lie in 1970..9999 (UTC)")
        return ms
    raise _wrong(field, "an RFC 3339 string or integer epoch milliseconds", v)


def _validate(rec: dict[str, Any]) -> RequestEvent:
    event_id = _required_str(rec, "event_id", MAX_EVENT_ID_CHARS)
    ts_ms = parse_event_time(rec.get("ts"))
    account_id = _required_str(rec, "account_id")
    operation = _required_str(rec, "operation")
    get = rec.get
    image_count = _optional_count(rec, "image_count") or 0
    audio_count = _optional_count(rec, "audio_count") or 0
    faces = _optional_count(rec, "faces_detected")
    subjects: tuple[str, ...] = ()
    sv = get("subject_ids")
    if sv is not None:
        if type(sv) is not list:
            raise _wrong("subject_ids", "an array of strings", sv)
        if len(sv) > MAX_ARRAY_ITEMS:
            raise _Invalid(
                OUT_OF_RANGE, "subject_ids", f"subject_ids holds more than {MAX_ARRAY_ITEMS} items"
            )
        for s in sv:
            if type(s) is not str:
                raise _wrong("subject_ids", "an array of strings", s)
            if len(s) > MAX_STRING_CHARS:
                raise _Invalid(
                    OUT_OF_RANGE,
                    "subject_ids",
                    f"an item of subject_ids is longer than {MAX_STRING_CHARS} characters",
                )
        subjects = tuple(sv)
    gallery = capture = intent = None
    g = _optional_object(rec, "gallery")
    if g is not None:
        gallery = Gallery(
            _optional_str(g, "id", "gallery.id"), _optional_str(g, "kind", "gallery.kind")
        )
    c = _optional_object(rec, "capture")
    if c is not None:
        capture = Capture(
            _optional_str(c, "device", "capture.device"),
            _optional_str(c, "setting", "capture.setting"),
        )
    i = _optional_object(rec, "intent")
    if i is not None:
        score = i.get("score")
        if score is not None:
            if type(score) is not int and type(score) is not float:
                raise _wrong("intent.score", "a number", score)
            if not 0 <= score <= 1:
                raise _Invalid(OUT_OF_RANGE, "intent.score", "intent.score must lie in 0..1")
        intent = Intent(_optional_str(i, "label", "intent.label"), score)
    return RequestEvent(
        event_id,
        ts_ms,
        account_id,
        operation,
        _optional_str(rec, "api_key_id", "api_key_id"),
        _optional_str(rec, "model", "model"),
        _optional_str(rec, "region", "region"),
        _optional_str(rec, "client_ip", "client_ip"),
        image_count,
        faces,
        subjects,
        gallery,
        capture,
        intent,
        audio_count,
    )


_NUMBER = frozenset({int, float})


def accepted_ts(rec: dict[str, Any]) -> int:
    """The event time (epoch ms) of a record whose every field is valid; -1 for any other.

    Most records are valid, so acceptance is checked inline (no per-field calls, nothing
    built); `_validate` names the problem of the rest, and `build_event` builds the event of
    a record that is needed as one (the live router builds only the few that a rule gates in).
    """
    get = rec.get
    event_id = get("event_id")
    account_id = get("account_id")
    operation = get("operation")
    if (
        type(event_id) is not str
        or type(account_id) is not str
        or type(operation) is not str
        or not event_id
        or len(event_id) > MAX_EVENT_ID_CHARS
        or not account_id
        or not operation
        or len(account_id) > MAX_STRING_CHARS
        or len(operation) > MAX_STRING_CHARS
    ):
        return -1
    ts = get("ts")
    if type(ts) is str:
        try:
            ts = parse_rfc3339_ms(ts)
        except TimestampError:
            return -1
    elif type(ts) is not int:
        return -1
    if not 0 <= ts <= MAX_TS_MS:
        return -1
    for name in _OPTIONAL_STRINGS:
        v = get(name)
        if v is not None and (type(v) is not str or len(v) > MAX_STRING_CHARS):
            return -1
    n = get("image_count")
    if n is not None and (type(n) is not int or n < 0):
        return -1
    n = get("faces_detected")
    if n is not None and (type(n) is not int or n < 0):
        return -1
    n = get("audio_count")
    if n is not None and (type(n) is not int or n < 0):
        return -1
    i = get("intent")
    if i is not None:
        if type(i) is not dict or not _short_or_none(i.get("label")):
            return -1
        score = i.get("score")
        if score is not None and (type(score) not in _NUMBER or not 0 <= score <= 1):
            return -1
    sv = get("subject_ids")
    if sv is not None:
        if type(sv) is not list or len(sv) > MAX_ARRAY_ITEMS:
            return -1
        for x in sv:
            if type(x) is not str or len(x) > MAX_STRING_CHARS:
                return -1
    for name, a, b in _PAIRS:
        o = get(name)
        if o is not None and (
            type(o) is not dict or not _short_or_none(o.get(a)) or not _short_or_none(o.get(b))
        ):
            return -1
    return ts  # type: ignore[no-any-return]


_PAIRS = (("gallery", "id", "kind"), ("capture", "device", "setting"))
_OPTIONAL_STRINGS = ("api_key_id", "model", "region", "client_ip")


def _short_or_none(v: object) -> bool:
    return v is None or (type(v) is str and len(v) <= MAX_STRING_CHARS)


def build_event(rec: dict[str, Any], ts_ms: int) -> RequestEvent:
    """The event of a record that `accepted_ts` accepted (with the time it returned)."""
    get = rec.get
    g, c, i, sv = get("gallery"), get("capture"), get("intent"), get("subject_ids")
    # tuple.__new__ skips the generated __new__ (argument binding, defaults): the fields are
    # all given, in order, and already valid
    return _new(
        RequestEvent,
        (
            rec["event_id"],
            ts_ms,
            rec["account_id"],
            rec["operation"],
            get("api_key_id"),
            get("model"),
            get("region"),
            get("client_ip"),
            get("image_count") or 0,
            get("faces_detected"),
            tuple(sv) if sv else (),
            None if g is None else _new(Gallery, (g.get("id"), g.get("kind"))),
            None if c is None else _new(Capture, (c.get("device"), c.get("setting"))),
            None if i is None else _new(Intent, (i.get("label"), i.get("score"))),
            get("audio_count") or 0,
        ),
    )


_new = tuple.__new__


def parse_request_record(rec: object) -> RequestEvent | Rejection:
    """Validate one decoded record (SPEC 2.1): the event, or why it is malformed."""
    if type(rec) is dict:
        ev = checked_event(rec)
        if ev is not None:
            return ev
    return parse_request_record_strict(rec)


def parse_request_record_strict(rec: object) -> RequestEvent | Rejection:
    """`parse_request_record` in Python only: the reference the C-speed checks must equal."""
    if type(rec) is UnparsedRecord:
        return Rejection(NOT_JSON, None, f"record nested too deep to decode ({rec.detail})")
    if type(rec) is UnmappedRecord:
        return rec.rejection
    if type(rec) is not dict:
        return Rejection(NOT_OBJECT, None, f"record must be a JSON object, got {_type_name(rec)}")
    ts_ms = accepted_ts(rec)
    if ts_ms >= 0:
        return build_event(rec, ts_ms)
    try:
        return _validate(rec)
    except _Invalid as exc:
        return _traced(rec, exc.rejection)


#: the key under which a record mapped from another input format (`topics.formats`) holds
#: its `Origin`; no JSON value is an `Origin`, so a record sent with this key gains nothing
ORIGIN: Final = "\x00origin"


class Origin(NamedTuple):
    """Where a mapped record came from: the source record, and each field's source path."""

    source: Any
    sources: dict[str, str]


@dataclass(frozen=True, slots=True)
class UnmappedRecord:
    """A source record that its input format could not map (a required field is missing...)."""

    source: Any
    rejection: Rejection


def _traced(rec: dict[str, Any], rejection: Rejection) -> Rejection:
    """A mapped record's rejection names the source path its field came from."""
    origin = rec.get(ORIGIN)
    name = rejection.field
    if type(origin) is not Origin or name is None:
        return rejection
    src = origin.sources.get(name) or origin.sources.get(name.partition(".")[0])
    if src is None:
        return rejection
    return Rejection(rejection.reason, name, f"{name} from {src}: {rejection.detail}")


def batch_envelope(records: list[bytes]) -> bytes:
    """One batch message (`{"records": [...]}`) of records already serialized as JSON."""
    return b'{"records":[' + b",".join(records) + b"]}"


def is_batch(obj: dict[str, Any]) -> bool:
    """A batch envelope is an object with `records` and no `event_id`."""
    return "records" in obj and "event_id" not in obj


@dataclass(frozen=True, slots=True)
class UnparsedRecord:
    """A batch record that could not be decoded on its own (nested deeper than orjson reads)."""

    text: str
    detail: str


def request_records(data: bytes | str) -> tuple[list[Any], bool] | RejectedRecord:
    """The records of one message (its batch entries, or itself) and whether it was a batch.

    A message that holds no record at all (not JSON, a batch whose `records` is not an
    array) is one malformed record. A batch that orjson cannot read because one record is
    nested deeper than it reads (1,024 levels) is split without decoding it: each entry is
    decoded on its own, and an entry that still cannot be is an `UnparsedRecord` (malformed
    on its own, SPEC 2.1), so its neighbours go on.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc):
            entries = _batch_entries(data.encode() if isinstance(data, str) else data)
            if entries is not None:
                return [_decode_entry(e) for e in entries], True
        return RejectedRecord(Rejection(NOT_JSON, None, f"not JSON: {exc}"), raw_text(data))
    if type(obj) is dict and is_batch(obj):
        records = obj["records"]
        if type(records) is not list:
            rej = Rejection(WRONG_TYPE, "records", "records must be an array of request events")
            return RejectedRecord(rej, raw_text(data))
        return records, True
    return [obj], False


def _decode_entry(entry: bytes) -> Any:
    try:
        return orjson.loads(entry)
    except orjson.JSONDecodeError as exc:
        return UnparsedRecord(raw_text(entry), f"not JSON: {exc}")


# a JSON string (escapes included), or one structural character
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\],:]', re.S)
_WS = b" \t\r\n"


def _batch_entries(data: bytes) -> list[bytes] | None:
    """The texts of a batch's `records` entries, found without decoding them.

    None when `data` is not a batch object with a `records` array (then the message as a
    whole is not JSON). The scan only finds boundaries; each entry is validated later.
    """
    text = data.strip(_WS)
    if not text.startswith(b"{") or not text.endswith(b"}"):
        return None
    depth = 0
    prev = b""  # the previous token
    key: bytes | None = None
    in_records = False
    has_event_id = False
    found = False
    start = 0
    entries: list[bytes] = []
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok[0] == 0x22:  # a string
            if depth == 1 and prev in (b"{", b","):
                key = tok
                has_event_id = has_event_id or tok == b'"event_id"'
        elif tok in (b"{", b"["):
            depth += 1
            if depth == 2 and tok == b"[" and prev == b":" and key == b'"records"':
                in_records = found = True
                start = m.end()
        elif tok in (b"}", b"]"):
            if depth == 2 and in_records and tok == b"]":
                entry = text[start : m.start()].strip(_WS)
                if entry or entries:
                    entries.append(entry)
                in_records = False
            depth -= 1
            if depth < 0:
                return None
        elif tok == b"," and depth == 2 and in_records:
            entries.append(text[start : m.start()].strip(_WS))
            start = m.end()
        prev = tok
    if depth != 0 or not found or has_event_id:
        return None
    return entries


def record_text(rec: object, message: bytes | str, batched: bool) -> str:
    """A record's text as sent (what a dead letter carries): its batch entry, or the message."""
    if type(rec) is UnparsedRecord:
        return rec.text
    if not batched:
        return raw_text(message)
    if type(rec) is UnmappedRecord:
        rec = rec.source
    elif type(rec) is dict and type(origin := rec.get(ORIGIN)) is Origin:
        rec = origin.source  # what was sent, not what it was mapped to
    return _record_text(rec, message)


def rejected_record(
    rejection: Rejection, rec: object, message: bytes | str, batched: bool
) -> RejectedRecord:
    """A malformed record with its text as sent."""
    return RejectedRecord(rejection, record_text(rec, message, batched))


def decode_request_message(data: bytes | str) -> list[RequestEvent | RejectedRecord]:
    """Every record of one `api.requests` message (or archive line), validated on its own.

    A message of one record with SPEC 2.1's fields only is decoded and validated by msgspec
    (`fast_event`); a message of one record with other fields too is decoded by orjson and
    checked by msgspec (`checked_event`); the records of a batch, and any record these
    refuse, go through `parse_request_record`, which names the problem of an invalid one.
    The two fast paths are inlined here: this runs once per record of a replay.
    """
    if type(data) is bytes:
        try:
            w = _decode_closed(data)
            if not data.isascii():
                data.decode()  # orjson refuses invalid UTF-8 anywhere in the text
        except _UNDECODABLE:
            w = None
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                obj = None
            # an object with an event_id is one record (never a batch)
            if type(obj) is dict and "event_id" in obj:
                try:  # noqa: SIM105 - contextlib.suppress costs more, once a record
                    w = _convert(obj, _OPEN)
                except _Invalidated:
                    pass
        if w is not None:
            ev = _event_of(w)
            if ev is not None:
                return [ev]
    return _decode_records(data, parse_request_record)


def decode_request_message_strict(data: bytes | str) -> list[RequestEvent | RejectedRecord]:
    """`decode_request_message` by orjson and Python checks only (the reference)."""
    return _decode_records(data, parse_request_record_strict)


def _decode_records(
    data: bytes | str, parse: Callable[[object], RequestEvent | Rejection]
) -> list[RequestEvent | RejectedRecord]:
    found = request_records(data)
    if type(found) is RejectedRecord:
        return [found]
    records, batched = found  # type: ignore[misc]
    out: list[RequestEvent | RejectedRecord] = []
    for rec in records:
        r = parse(rec)
        if type(r) is Rejection:
            # a nested batch has no event_id, so it is rejected as missing_field
            out.append(rejected_record(r, rec, data, batched))
        else:
            out.append(r)  # type: ignore[arg-type]
    return out


def _record_text(rec: object, message: bytes | str) -> str:
    """One batch record as compact JSON; the whole message when it cannot be re-serialized."""
    try:
        return orjson.dumps(rec).decode()
    except orjson.JSONEncodeError:
        pass
    # orjson writes at most 254 levels of nesting but reads 1024: the standard library writes
    # as deep as Python's recursion limit
    try:
        return json.dumps(rec, ensure_ascii=False, separators=(",", ":"))
    except (RecursionError, ValueError, TypeError):
        return raw_text(message)


# SPEC 2.1 as a msgspec schema, checked in C: every type, length and range that
# `accepted_ts` checks in Python. It is only a fast path: whatever it refuses takes the
# strict path, which names the problem; what it accepts, the strict path accepts with the
# same event (property-tested).
_Str = Annotated[str, msgspec.Meta(max_length=MAX_STRING_CHARS)]
_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_STRING_CHARS)]
# orjson reads an integer beyond 64 bits as a float (not an integer); msgspec bounds are
# int64, so the few between 2**63 and 2**64 take the strict path
_Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
# int | float keeps an integer score an int, as orjson does (alert evidence shows it as sent)
_Score = Annotated[int, msgspec.Meta(ge=0, le=1)] | Annotated[float, msgspec.Meta(ge=0, le=1)]


def _wire_schema(closed: bool) -> Any:
    """The record's msgspec type; `closed`: a field outside SPEC 2.1 (at any depth) fails it."""

    def struct(name: str, fields: list[tuple[str, Any, Any]]) -> Any:
        return msgspec.defstruct(name, fields, gc=False, forbid_unknown_fields=closed)

    pair = [("", _Str | None, None)] * 2
    gallery = struct(
        "Gallery", [(n, t, d) for n, (_, t, d) in zip(("id", "kind"), pair, strict=True)]
    )
    capture = struct(
        "Capture", [(n, t, d) for n, (_, t, d) in zip(("device", "setting"), pair, strict=True)]
    )
    intent = struct("Intent", [("label", _Str | None, None), ("score", _Score | None, None)])
    optional = _Str | None
    return struct(
        "RequestEvent",
        [
            ("event_id", Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_EVENT_ID_CHARS)], msgspec.NODEFAULT),
            ("ts", Annotated[int, msgspec.Meta(ge=0, le=MAX_TS_MS)] | str, msgspec.NODEFAULT),
            ("account_id", _Name, msgspec.NODEFAULT),
            ("operation", _Name, msgspec.NODEFAULT),
            ("api_key_id", optional, None),
            ("model", optional, None),
            ("region", optional, None),
            ("client_ip", optional, None),
            ("image_count", _Count | None, None),
            ("audio_count", _Count | None, None),
            ("faces_detected", _Count | None, None),
            ("subject_ids", Annotated[tuple[_Str, ...], msgspec.Meta(max_length=MAX_ARRAY_ITEMS)] | None, None),
            ("gallery", gallery | None, None),
            ("capture", capture | None, None),
            ("intent", intent | None, None),
        ],
    )  # fmt: skip


#: msgspec skips the values of fields it does not know without checking their numbers (an
#: exponent orjson refuses as infinity), so JSON text is decoded by it only when it holds
#: nothing else; other records are checked after orjson decoded them
_decode_closed = msgspec.json.Decoder(_wire_schema(closed=True)).decode
_OPEN = _wire_schema(closed=False)
_convert = msgspec.convert
_Invalidated = msgspec.ValidationError
# ValidationError is a DecodeError; msgspec nests less deeply than orjson (RecursionError)
_UNDECODABLE = (msgspec.DecodeError, RecursionError, UnicodeDecodeError)


def fast_event(data: bytes) -> RequestEvent | None:
    """The event of a message holding one valid record of SPEC 2.1's fields only; else None."""
    try:
        w = _decode_closed(data)
        if not data.isascii():
            data.decode()  # orjson refuses invalid UTF-8 anywhere in the text
    except _UNDECODABLE:
        return None
    return _event_of(w)


def checked_event(rec: dict[str, Any]) -> RequestEvent | None:
    """The event of a decoded record that is valid, checked at C speed; None for any other."""
    try:
        w = _convert(rec, _OPEN)
    except _Invalidated:
        return None
    return _event_of(w)


def _event_of(w: Any) -> RequestEvent | None:
    ts = w.ts
    if type(ts) is str:
        try:
            ts = parse_rfc3339_ms(ts)
        except TimestampError:
            return None
        if not 0 <= ts <= MAX_TS_MS:
            return None
    g, c, i = w.gallery, w.capture, w.intent
    return _new(  # type: ignore[no-any-return]
        RequestEvent,
        (
            w.event_id,
            ts,
            w.account_id,
            w.operation,
            w.api_key_id,
            w.model,
            w.region,
            w.client_ip,
            w.image_count or 0,
            w.faces_detected,
            w.subject_ids or (),
            None if g is None else _new(Gallery, (g.id, g.kind)),
            None if c is None else _new(Capture, (c.device, c.setting)),
            None if i is None else _new(Intent, (i.label, i.score)),
            w.audio_count or 0,
        ),
    )
