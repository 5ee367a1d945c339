"""Message schemas for frwatch's topics."""

from __future__ import annotations

from typing import Any

import faust


class RawBytes(faust.Schema):  # type: ignore[misc,type-arg]
    """Keys and values exactly as the broker delivered them: frwatch decodes with orjson.

    Faust's raw codec still goes through its serializer registry for every message; this
    schema hands the bytes over directly.
    """

    def loads_key(
        self, app: Any, message: Any, *, loads: Any = None, serializer: Any = None
    ) -> Any:
        """The key bytes (or None)."""
        return message.key

    def loads_value(
        self, app: Any, message: Any, *, loads: Any = None, serializer: Any = None
    ) -> Any:
        """The value bytes (or None)."""
        return message.value
