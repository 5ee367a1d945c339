"""The worker puts the root logger back at its level once Faust's startup spinner is done."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

import pytest
from faust.utils.terminal import Spinner, SpinnerHandler

from streams.app.worker import quiet_root_logger


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    logger = logging.getLogger()
    saved = (logger.level, list(logger.handlers))
    try:
        yield logger
    finally:
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]


def test_spinner_handler_removed_and_level_restored(root: logging.Logger) -> None:
    stream = logging.StreamHandler(sys.stderr)
    stream.setLevel(logging.WARNING)
    # what Faust's worker leaves behind: the root at DEBUG so that every record turns it
    root.handlers[:] = [stream, SpinnerHandler(Spinner(file=sys.stderr), level=logging.DEBUG)]
    root.setLevel(logging.DEBUG)
    assert logging.getLogger("aiokafka.conn").isEnabledFor(logging.DEBUG)
    quiet_root_logger("warning")
    assert root.handlers == [stream]
    assert root.level == logging.WARNING
    assert not logging.getLogger("aiokafka.conn").isEnabledFor(logging.DEBUG)
    quiet_root_logger("info")
    assert root.level == logging.INFO
