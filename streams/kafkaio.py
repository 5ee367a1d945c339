"""Small aiokafka helpers shared by the worker's feed, the CLI and the benchmark."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import AIOKafkaClient
from aiokafka.cluster import ClusterMetadata
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError
from aiokafka.protocol.metadata import MetadataRequest

from streams.kafka_config import (
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    KafkaClientConfig,
    load_kafka_config,
)
from streams.settings import Settings

# one parse (and one TLS context) per file and password override, for every client
_loaded: dict[tuple[str | None, str | None, str | None], KafkaClientConfig] = {}


def kafka_client_config(settings: Settings) -> KafkaClientConfig:
    """The checked client configuration of FRWATCH_KAFKA_CONFIG (raises KafkaConfigError)."""
    key = (settings.kafka_config, os.environ.get(PASSWORD_ENV), os.environ.get(PASSWORD_FILE_ENV))
    if key not in _loaded:
        _loaded[key] = load_kafka_config(settings.kafka_config)
    return _loaded[key]


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Security keyword arguments for every aiokafka client frwatch creates."""
    return kafka_client_config(settings).aiokafka_kwargs()


def faust_kwargs(settings: Settings) -> dict[str, Any]:
    """Security keyword arguments for the Faust app (`broker_credentials`)."""
    return kafka_client_config(settings).faust_kwargs()


async def topic_partitions(
    consumer: AIOKafkaConsumer, topic: str, timeout: float = 60.0
) -> list[TopicPartition]:
    """The topic's partitions, refreshing metadata until the topic is known or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic!r} not found within {timeout:.0f}s")
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.2)


async def assign_from_beginning(
    consumer: AIOKafkaConsumer, topic: str, timeout: float = 60.0
) -> dict[TopicPartition, int]:
    """Assign every partition, seek to the beginning; returns the current end offsets."""
    tps = await topic_partitions(consumer, topic, timeout)
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return dict(await consumer.end_offsets(tps))


class KafkaAccessError(Exception):
    """The cluster refused this client (login, certificate or ACL); the message is one line."""


LOGIN_TIMEOUT_S = 20.0


async def check_login(settings: Settings, timeout: float = LOGIN_TIMEOUT_S) -> None:
    """Fail fast with one line naming the broker when TLS or SASL refuses this client.

    aiokafka reports a refused login as "Unable to bootstrap" and its worker retries it
    forever, so every command and the worker try one connection first: the handshake and
    the SASL exchange are aiokafka's (`create_conn`), only the reason is read here. A broker
    that cannot be reached at all is not decided here: the usual path reports or waits.
    """
    cfg = kafka_client_config(settings)
    if cfg.protocol == "plaintext":
        return
    kwargs = cfg.aiokafka_kwargs()
    for hostport in settings.bootstrap_servers:
        host, _, port = hostport.rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(
                    host,
                    int(port),
                    client_id="frwatch-login-check",
                    request_timeout_ms=int(timeout * 1000),
                    **kwargs,
                ),
                timeout,
            )
        except ssl.SSLCertVerificationError as exc:
            raise KafkaAccessError(
                f"broker {hostport}: its TLS certificate is not accepted: {exc.verify_message} "
                "(see ssl.ca.location and ssl.endpoint.identification.algorithm)"
            ) from None
        except ssl.SSLError as exc:
            raise KafkaAccessError(
                f"broker {hostport}: TLS handshake failed: {exc.reason or exc}"
            ) from None
        except (TimeoutError, ConnectionRefusedError, socket.gaierror):
            continue  # not reachable: another bootstrap server, or the usual path
        except (KafkaError, OSError) as exc:
            raise KafkaAccessError(
                f"broker {hostport}: {_refusal(exc, cfg)} ({cfg.describe()})"
            ) from None
        else:
            conn.close()
            return


def _refusal(exc: BaseException, cfg: KafkaClientConfig) -> str:
    text = " ".join(str(exc).split())
    if "certificate required" in text.lower() or (cfg.protocol == "ssl" and "closed" in text):
        return (
            "the broker closed the TLS connection: does it require a client certificate "
            "(ssl.certificate.location) or not trust this one?"
        )
    if isinstance(exc, KafkaError) and "uthentication" in type(exc).__name__ + text:
        return f"authentication failed: {text}"
    if cfg.uses_sasl:
        return f"authentication failed: {text or type(exc).__name__}"
    return f"connection refused by the broker: {text or type(exc).__name__}"


AUTHORIZATION_ERRORS = (
    "TopicAuthorizationFailedError",
    "GroupAuthorizationFailedError",
    # the idempotent producer's InitProducerId: refused without Write on some topic
    "ClusterAuthorizationFailedError",
    "TransactionalIdAuthorizationFailed",
)


def refused(exc: BaseException, operation: str) -> str | None:
    """One line for an ACL refusal (`operation` e.g. "read topic T"), None for other errors."""
    name = type(exc).__name__
    if name in AUTHORIZATION_ERRORS:
        return f"not authorised to {operation} ({name})"
    return None


class TopicMissingError(KafkaAccessError):
    """A topic that frwatch reads or writes does not exist (frwatch never creates it by use)."""


async def check_topics(
    settings: Settings, topics: list[str], timeout: float = 20.0, hidden_too: bool = True
) -> None:
    """Fail with one line when any of `topics` does not exist, or the cluster hides it from
    this client (no ACL).

    Every command checks the topics it uses before its clients touch them: aiokafka asks for
    metadata with allow_auto_topic_creation=true, so against a broker that creates topics on
    request its producer would make the topic with the broker's defaults (one partition,
    no compaction). This request asks with false. The worker checks its topics at start,
    before Faust's consumer would retry a refusal forever; an ACL that allows describing
    but not the operation is reported when used. A broker that cannot be reached is not
    decided here: the usual path reports or waits. With `hidden_too` false, a topic that the
    cluster hides is left to the usual path too, which names the operation refused.
    """
    client = AIOKafkaClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id="frwatch-topic-check",
        **client_kwargs(settings),
    )
    aiokafka_log = logging.getLogger("aiokafka")
    level = aiokafka_log.level
    aiokafka_log.setLevel(logging.CRITICAL)  # its warnings would say it again, per topic
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
        node = client.get_random_node()
        if node is None:
            return
        request = MetadataRequest(list(topics), allow_auto_topic_creation=False)
        response = await asyncio.wait_for(client.send(node, request), timeout)
        cluster = ClusterMetadata()
        cluster.update_metadata(response)  # it logs each missing topic: said once, below
    except (KafkaError, TimeoutError):
        return
    finally:
        await client.close()
        aiokafka_log.setLevel(level)
    hidden = sorted(set(topics) & set(cluster.unauthorized_topics))
    if hidden and hidden_too:
        raise KafkaAccessError(
            f"not authorised to use topic {', '.join(hidden)} "
            "(TopicAuthorizationFailedError; see `frwatch acls`)"
        )
    missing = [t for t in topics if t not in cluster.topics() and t not in hidden]
    if missing:
        which = (
            f"topic {missing[0]} does not exist"
            if len(missing) == 1
            else f"topics {', '.join(missing)} do not exist"
        )
        raise TopicMissingError(
            f"{which} on broker {settings.broker} (create the topics with `frwatch topics create`)"
        )


async def check_group(settings: Settings, group: str, timeout: float = 20.0) -> None:
    """Fail with one line when the cluster refuses this client the consumer group.

    Faust's consumer retries GroupAuthorizationFailedError forever, so the worker asks for
    the group's offsets once at start (FindCoordinator and OffsetFetch need what joining it
    needs first: Describe, which Read implies). Other errors are left to the usual path.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id="frwatch-group-check",
        request_timeout_ms=int(timeout * 1000),
        **client_kwargs(settings),
    )
    try:
        await asyncio.wait_for(admin.start(), timeout)
        await asyncio.wait_for(admin.list_consumer_group_offsets(group), timeout)
    except (KafkaError, TimeoutError, OSError) as exc:
        if type(exc).__name__ in AUTHORIZATION_ERRORS:
            raise KafkaAccessError(
                f"not authorised to use consumer group {group} "
                f"({type(exc).__name__}; see `frwatch acls`)"
            ) from None
    finally:
        await admin.close()


# Kafka's default message.max.bytes: what a topic created without the setting takes
BROKER_DEFAULT_MAX_MESSAGE_BYTES = 1048588


async def max_message_bytes(settings: Settings, topic: str, timeout: float = 20.0) -> int | None:
    """The topic's `max.message.bytes`; Kafka's default for a topic not created yet.

    None when the broker does not say (unreachable, or no DescribeConfigs right): the
    caller keeps its own bound, and a refusal is reported when a write meets it.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id="frwatch-topic-config",
        request_timeout_ms=int(timeout * 1000),
        **client_kwargs(settings),
    )
    try:
        await asyncio.wait_for(admin.start(), timeout)
        if topic not in await asyncio.wait_for(admin.list_topics(), timeout):
            return BROKER_DEFAULT_MAX_MESSAGE_BYTES
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})
        responses = await asyncio.wait_for(admin.describe_configs([resource]), timeout)
    except (KafkaError, TimeoutError, OSError):
        return None
    finally:
        await admin.close()
    for response in responses:
        for _code, _msg, _type, _name, entries in response.resources:
            for entry in entries:
                if entry[0] == "max.message.bytes" and entry[1] is not None:
                    return int(entry[1])
    return None
