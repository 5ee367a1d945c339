"""Alerts to Kafka with acks=all and idempotence, retried until acknowledged."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from mode import Service

log = logging.getLogger(__name__)

# errors that retrying cannot fix; everything else (timeouts, leader moves) is retried
PERMANENT = (
    "MessageSizeTooLargeError",
    "TopicAuthorizationFailedError",
    "InvalidTopicError",
    "RecordTooLargeError",
    "UnsupportedVersionError",
)


class AlertPublisher(Service):
    """A dedicated producer, so an alert's acknowledgement can be awaited on its own."""

    def __init__(
        self,
        bootstrap: list[str],
        topic: str,
        client: Mapping[str, Any] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.bootstrap = bootstrap
        self.client = dict(client or {})  # security settings (streams.kafkaio.client_kwargs)
        self.topic = topic
        self._producer: AIOKafkaProducer | None = None

    async def on_start(self) -> None:
        """Connect (retrying while the broker is unreachable)."""
        while True:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                enable_idempotence=True,
                linger_ms=0,
                client_id="frwatch-alerts",
                **self.client,
            )
            try:
                await producer.start()
            except KafkaError as exc:
                log.warning("alert producer cannot connect (%s); retrying", exc)
                await producer.stop()
                await asyncio.sleep(1.0)
                continue
            self._producer = producer
            return

    async def on_stop(self) -> None:
        """Flush and close."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def _send(self, key: bytes, value: bytes) -> object:
        assert self._producer is not None, "publisher not started"
        fut = await self._producer.send(self.topic, value=value, key=key)
        return await fut

    async def publish(self, messages: list[tuple[bytes, bytes]]) -> float:
        """Send (key, value) pairs; returns the wall-clock time when all were acknowledged."""
        pending = list(messages)
        delay = 0.2
        while pending:
            results = await asyncio.gather(
                *(self._send(k, v) for k, v in pending), return_exceptions=True
            )
            failed = []
            for msg, res in zip(pending, results, strict=True):
                if isinstance(res, BaseException):
                    if type(res).__name__ in PERMANENT:
                        raise res
                    log.warning("alert send failed (%r); retrying", res)
                    failed.append(msg)
            pending = failed
            if pending:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        return time.time()
