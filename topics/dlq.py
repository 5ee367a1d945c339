"""`frwatch.dlq`: rejected input, with the reason, the field and the original text."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

import orjson

NOT_JSON: Final = "not_json"
NOT_OBJECT: Final = "not_object"
MISSING_FIELD: Final = "missing_field"
WRONG_TYPE: Final = "wrong_type"
OUT_OF_RANGE: Final = "out_of_range"
FUTURE_TIMESTAMP: Final = "future_timestamp"
INTERNAL_ERROR: Final = "internal_error"

REASONS: Final = (
    NOT_JSON,
    NOT_OBJECT,
    MISSING_FIELD,
    WRONG_TYPE,
    OUT_OF_RANGE,
    FUTURE_TIMESTAMP,
    INTERNAL_ERROR,
)

#: the most of the original that a dead letter's `raw` holds (SPEC 2.3), in UTF-8 bytes
RAW_LIMIT_BYTES: Final = 64 * 1024
#: the most of a rejection's `detail` that a dead letter holds, in characters
DETAIL_LIMIT_CHARS: Final = 1024


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one input record was not evaluated."""

    reason: str
    field: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A DLQ record (SPEC 2.3): the rejection plus where the input came from."""

    rejection: Rejection
    raw: str
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None

    def to_json(self) -> bytes:
        """Serialize as the DLQ topic's value, bounded whatever the input (SPEC 2.3).

        `raw` holds at most `RAW_LIMIT_BYTES` of the original (cut at a character boundary);
        `raw_bytes` and `raw_sha256` describe the whole original as UTF-8 text (invalid bytes
        already replaced by `raw_text`). Even 64 KiB of control bytes, escaped six-fold by
        JSON, stays far below the topic's default 1 MB.
        """
        return orjson.dumps(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The DLQ value as a dict (see `to_json`)."""
        raw, truncated, n_bytes, sha256 = bounded_raw(self.raw)
        detail = self.rejection.detail
        if len(detail) > DETAIL_LIMIT_CHARS:
            detail = detail[:DETAIL_LIMIT_CHARS] + "…"
        return {
            "reason": self.rejection.reason,
            "field": self.rejection.field,
            "detail": detail,
            "raw": raw,
            "raw_truncated": truncated,
            "raw_bytes": n_bytes,
            "raw_sha256": sha256,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
        }


def bounded_raw(text: str, limit: int = RAW_LIMIT_BYTES) -> tuple[str, bool, int, str]:
    """`text` cut to `limit` UTF-8 bytes, whether it was cut, its whole size and sha256."""
    data = text.encode("utf-8", errors="replace")
    sha256 = hashlib.sha256(data).hexdigest()
    if len(data) <= limit:
        return text, False, len(data), sha256
    # a character cut in two at the limit is left out whole
    return data[:limit].decode("utf-8", errors="ignore"), True, len(data), sha256


def raw_text(data: bytes | str | None) -> str:
    """The original bytes as text for the `raw` field; invalid UTF-8 is replaced, never dropped."""
    if data is None:
        return ""
    if isinstance(data, str):
        try:
            data.encode("utf-8")
        except UnicodeEncodeError:
            # lone surrogates cannot be serialized into the DLQ record: replace them too
            return data.encode("utf-8", errors="surrogatepass").decode("utf-8", errors="replace")
        return data
    return data.decode("utf-8", errors="replace")
