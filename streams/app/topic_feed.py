"""A compacted topic read whole by every worker: all partitions, caught up before requests flow.

The accounts feed and the rules feed are both this: read every partition from the beginning
up to its end offsets before `ready` is set, then follow, applying each record in order.
Not a Faust GlobalTable on purpose: a GlobalTable applies raw changelog values, so a
rejected record would overwrite the previous state, and its recovery has known stalls (see
docs/operations.md, "The live path"). A feed validates every record and keeps the last valid
state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from mode import Service

from streams.kafkaio import assign_from_beginning

log = logging.getLogger(__name__)


class CompactedTopicFeed(Service):
    """Applies every record of a topic in order; `ready` once the start-up end is reached."""

    #: what the feed's consumer calls itself to the broker
    client_id = "frwatch-feed"
    #: what the log calls the feed
    what = "topic"

    def __init__(
        self,
        bootstrap: list[str],
        topic: str,
        catch_up_timeout: float = 120.0,
        client: Mapping[str, Any] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.bootstrap = bootstrap
        self.client = dict(client or {})  # security settings (streams.kafkaio.client_kwargs)
        self.topic = topic
        self.catch_up_timeout = catch_up_timeout
        self.ready = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None

    def apply(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Apply one record (validated by the subclass; a rejected one changes nothing)."""
        raise NotImplementedError

    def applied(self) -> None:
        """After a poll that applied records, and once at the end of the catch-up."""

    async def on_start(self) -> None:
        """Read every partition from the beginning up to its end offset before returning."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            group_id=None,
            auto_offset_reset="earliest",
            client_id=self.client_id,
            **self.client,
        )
        await consumer.start()
        self._consumer = consumer
        ends = await assign_from_beginning(consumer, self.topic, self.catch_up_timeout)
        started = time.monotonic()
        while await self._behind(consumer, ends):
            await self._poll_once(consumer)
            if time.monotonic() - started > self.catch_up_timeout:
                raise RuntimeError(f"{self.what} topic {self.topic} catch-up timed out")
        self.applied()
        self.ready.set()
        log.info("%s topic %s caught up", self.what, self.topic)

    async def _behind(self, consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
        for tp, end in ends.items():
            if await consumer.position(tp) < end:
                return True
        return False

    async def _poll_once(self, consumer: AIOKafkaConsumer) -> None:
        batches = await consumer.getmany(timeout_ms=200, max_records=5000)
        for records in batches.values():
            for rec in records:
                self.apply(rec)
        if batches:
            self.applied()

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
                log.exception("%s feed poll failed; retrying", self.what)
                await asyncio.sleep(1.0)

    async def on_stop(self) -> None:
        """Close the consumer."""
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
