"""`frwatch.dlq`: rejected input, with the reason, the field and the original text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

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
        """Serialize as the DLQ topic's value."""
        return orjson.dumps(
            {
                "reason": self.rejection.reason,
                "field": self.rejection.field,
                "detail": self.rejection.detail,
                "raw": self.raw,
                "topic": self.topic,
                "partition": self.partition,
                "offset": self.offset,
            }
        )


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
