"""A screening process for the tests: dies on messages holding `die-here`, raises on `raise-here`.

Run as `python screening_child.py FD [RULES]`, like `python -m streams.app.screening`.
"""

from __future__ import annotations

import os
import sys

from streams.app import screening
from streams.app.routing import Screen, Screened


class DyingScreen(Screen):
    """The real screen, except for the two marked messages."""

    def screen(self, value: bytes | None, now_ms: int) -> Screened:
        if value is not None and b"die-here" in value:
            os._exit(3)
        if value is not None and b"raise-here" in value:
            raise ValueError("screening raised")
        return super().screen(value, now_ms)


if __name__ == "__main__":
    sys.exit(screening.main(sys.argv[1:], DyingScreen))
