"""Every worker's copy of the accounts topic: all partitions, caught up before requests flow.

Not a Faust GlobalTable on purpose: a GlobalTable applies raw changelog values, so a rejected
record would overwrite the account's previous state, and its recovery has known stalls
(see docs/operations.md, "The live path"). This feed validates every record and keeps the last valid state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from mode import Service

from streams.kafkaio import assign_from_beginning
from topics.accounts import AccountDirectory, decode_account_message
from topics.dlq import Rejection

log = logging.getLogger(__name__)


class AccountFeed(Service):
    """Reads the compacted accounts topic into an AccountDirectory; `ready` once caught up."""

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
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.bootstrap = bootstrap
        self.client = dict(client or {})  # security settings (streams.kafkaio.client_kwargs)
        self.topic = topic
        self.directory = directory
        self.on_change = on_change
        self.catch_up_timeout = catch_up_timeout
        self.ready = asyncio.Event()
        self.rejected = 0
        self._consumer: AIOKafkaConsumer | None = None

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        update = decode_account_message(key, value)
        if isinstance(update, Rejection):
            # the audit agent dead-letters it (once per cluster); the account keeps its state
            self.rejected += 1
            return
        self.directory.apply(update)

    async def on_start(self) -> None:
        """Read every partition from the beginning up to its end offset before returning."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            group_id=None,
            auto_offset_reset="earliest",
            client_id="frwatch-accounts",
            **self.client,
        )
        await consumer.start()
        self._consumer = consumer
        ends = await assign_from_beginning(consumer, self.topic, self.catch_up_timeout)
        started = time.monotonic()
        while await self._behind(consumer, ends):
            await self._poll_once(consumer)
            if time.monotonic() - started > self.catch_up_timeout:
                raise RuntimeError("accounts topic catch-up timed out")
        self.on_change(len(self.directory))
        self.ready.set()
        log.info("accounts caught up: %d known", len(self.directory))

    async def _behind(self, consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
        for tp, end in ends.items():
            if await consumer.position(tp) < end:
                return True
        return False

    async def _poll_once(self, consumer: AIOKafkaConsumer) -> None:
        batches = await consumer.getmany(timeout_ms=200, max_records=5000)
        for records in batches.values():
            for rec in records:
                self._apply(rec.key, rec.value)
        if batches:
            self.on_change(len(self.directory))

    @Service.task
    async def _follow(self) -> None:
        await self.ready.wait()
        while not self.should_stop:
            assert self._consumer is not None
            try:
                await self._poll_once(self._consumer)
            except asyncio.CancelledError:
                raise
            except Exception:
                # transient broker trouble: retry, never drop the feed
                log.exception("account feed poll failed; retrying")
                await asyncio.sleep(1.0)

    async def on_stop(self) -> None:
        """Close the consumer."""
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
