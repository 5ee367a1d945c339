"""Every worker's copy of the accounts topic, caught up before requests flow."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import ConsumerRecord

from streams.app.topic_feed import CompactedTopicFeed
from topics.accounts import AccountDirectory, decode_account_message
from topics.dlq import Rejection

log = logging.getLogger(__name__)


class AccountFeed(CompactedTopicFeed):
    """Reads the compacted accounts topic into an AccountDirectory; `ready` once caught up."""

    client_id = "frwatch-accounts"
    what = "accounts"

    def __init__(
        self,
        bootstrap: list[str],
        topic: str,
        directory: AccountDirectory,
        on_change: Callable[[int], None],
        catch_up_timeout: float = 120.0,
        client: Mapping[str, Any] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(bootstrap, topic, catch_up_timeout, client, **kwargs)
        self.directory = directory
        self.on_change = on_change
        self.rejected = 0

    def apply(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Apply a valid account record; a rejected one leaves the account as it was."""
        update = decode_account_message(record.key, record.value)
        if isinstance(update, Rejection):
            # the audit agent dead-letters it (once per cluster); the account keeps its state
            self.rejected += 1
            return
        self.directory.apply(update)

    def applied(self) -> None:
        """Report the number of accounts known."""
        self.on_change(len(self.directory))
        if not self.ready.is_set():
            log.info("accounts caught up: %d known", len(self.directory))
