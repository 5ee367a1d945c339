"""The Kafka client properties file (SPEC 6.1): librdkafka's names, the file `kcat -F` reads.

One file configures every Kafka client frwatch creates: it is parsed and checked once,
then turned into aiokafka keyword arguments and into Faust's `broker_credentials`.
TLS comes from the standard library (through aiokafka's helper), SASL from aiokafka:
nothing here speaks either protocol itself. Secrets (the SASL password and the key
password) never appear in a message, a repr or a log line.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.helpers import create_ssl_context

PASSWORD_ENV = "FRWATCH_SASL_PASSWORD"
PASSWORD_FILE_ENV = "FRWATCH_SASL_PASSWORD_FILE"

PROTOCOLS = ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SECRET_KEYS = frozenset({"sasl.password", "ssl.key.password"})
# librdkafka's name first; `sasl.mechanisms` is its older spelling, also read by kcat
KEYS = frozenset(
    {
        "security.protocol",
        "sasl.mechanism",
        "sasl.mechanisms",
        "sasl.username",
        "sasl.password",
        "ssl.ca.location",
        "ssl.certificate.location",
        "ssl.key.location",
        "ssl.key.password",
        "ssl.endpoint.identification.algorithm",
    }
)
SSL_KEYS = ("ssl.ca.location", "ssl.certificate.location", "ssl.key.location", "ssl.key.password")
SASL_KEYS = ("sasl.mechanism", "sasl.username", "sasl.password")


class KafkaConfigError(ValueError):
    """An unreadable properties file, an unknown key or a bad value; one line naming the key."""


@dataclass(frozen=True, slots=True)
class KafkaClientConfig:
    """How frwatch's Kafka clients connect: protocol, SASL login and TLS context."""

    source: str  # the properties file, "" for the default (plaintext, no file)
    protocol: str = "plaintext"
    mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    @property
    def uses_tls(self) -> bool:
        """True for ssl and sasl_ssl."""
        return self.protocol in ("ssl", "sasl_ssl")

    @property
    def uses_sasl(self) -> bool:
        """True for sasl_plaintext and sasl_ssl."""
        return self.protocol.startswith("sasl_")

    def describe(self) -> str:
        """A short, secret-free description for log lines and error messages."""
        if self.uses_sasl:
            return f"{self.protocol.upper()} {self.mechanism} user {self.username!r}"
        return self.protocol.upper()

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol.upper()}
        if self.ssl_context is not None:
            kwargs["ssl_context"] = self.ssl_context
        if self.uses_sasl:
            kwargs["sasl_mechanism"] = self.mechanism
            kwargs["sasl_plain_username"] = self.username
            kwargs["sasl_plain_password"] = self.password
        return kwargs

    def faust_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for faust.App: `broker_credentials` (none for plaintext).

        Faust's aiokafka driver turns them into the same aiokafka arguments for its
        consumer, its producers and the topic creation done through the producer's
        client (`credentials_to_aiokafka_auth`, faust-streaming 0.15.3).
        """
        import faust  # here, not at import time: the CLI's replay path needs no Faust

        if self.protocol == "plaintext":
            return {}
        if self.protocol == "ssl":
            return {"broker_credentials": faust.SSLCredentials(self.ssl_context)}
        return {
            "broker_credentials": faust.SASLCredentials(
                username=self.username,
                password=self.password,
                ssl_context=self.ssl_context,  # None: SASL_PLAINTEXT, else SASL_SSL
                mechanism=self.mechanism,
            )
        }


PLAINTEXT = KafkaClientConfig(source="")


def parse_properties(text: str, source: str) -> dict[str, str]:
    """`key=value` lines as kcat reads them: `#` comments and blank lines skipped, last wins."""
    props: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            # the line may be a pasted secret: say where it is, never what it holds
            raise KafkaConfigError(f"{source}:{n}: not a key=value line")
        props[key] = value.strip()
    return props


def _readable(source: str, key: str, path: str) -> str:
    if not os.path.isfile(path):
        raise KafkaConfigError(f"{source}: {key}: no such file {path!r}")
    if not os.access(path, os.R_OK):
        raise KafkaConfigError(f"{source}: {key}: cannot read {path!r}")
    return path


def _password_override(source: str, env: Mapping[str, str]) -> str | None:
    direct = env.get(PASSWORD_ENV)
    path = env.get(PASSWORD_FILE_ENV)
    if direct is not None and path is not None:
        raise KafkaConfigError(f"set only one of {PASSWORD_ENV} and {PASSWORD_FILE_ENV}")
    if direct is not None:
        if not direct:
            raise KafkaConfigError(f"{PASSWORD_ENV} is empty")
        return direct
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            secret = fh.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
        raise KafkaConfigError(f"{PASSWORD_FILE_ENV}: cannot read {path!r}: {reason}") from None
    if not secret:
        raise KafkaConfigError(f"{PASSWORD_FILE_ENV}: {path!r} is empty")
    return secret


def build_config(
    props: Mapping[str, str], source: str, env: Mapping[str, str] | None = None
) -> KafkaClientConfig:
    """Check the properties and build the client configuration (and its TLS context)."""
    env = os.environ if env is None else env
    for key in props:
        if key not in KEYS:
            # only the name: a misspelt `sasl.pasword=` must not print the password
            raise KafkaConfigError(f"{source}: unknown key {key!r} (supported: {_key_list()})")
    for key, value in props.items():
        if not value:
            raise KafkaConfigError(f"{source}: {key}: empty value")
    if "sasl.mechanism" in props and "sasl.mechanisms" in props:
        raise KafkaConfigError(f"{source}: sasl.mechanisms: set only one of it and sasl.mechanism")
    values = dict(props)
    if "sasl.mechanisms" in values:
        values["sasl.mechanism"] = values.pop("sasl.mechanisms")

    protocol = values.get("security.protocol", "plaintext").lower()
    if protocol not in PROTOCOLS:
        raise KafkaConfigError(
            f"{source}: security.protocol: {values['security.protocol']!r} is not one of "
            + ", ".join(PROTOCOLS)
        )
    tls = protocol in ("ssl", "sasl_ssl")
    sasl = protocol.startswith("sasl_")
    override = _password_override(source, env)

    if not tls:
        for key in (*SSL_KEYS, "ssl.endpoint.identification.algorithm"):
            if key in values:
                raise KafkaConfigError(
                    f"{source}: {key}: set, but security.protocol is {protocol} (no TLS)"
                )
    if not sasl:
        for key in SASL_KEYS:
            if key in values:
                raise KafkaConfigError(
                    f"{source}: {key}: set, but security.protocol is {protocol} (no SASL)"
                )
        if override is not None:
            raise KafkaConfigError(
                f"{PASSWORD_ENV}/{PASSWORD_FILE_ENV}: set, but security.protocol is "
                f"{protocol} (no SASL)"
            )

    mechanism = username = password = None
    if sasl:
        mechanism = values.get("sasl.mechanism", "").upper()
        if mechanism not in MECHANISMS:
            shown = repr(values["sasl.mechanism"]) if "sasl.mechanism" in values else "not set"
            raise KafkaConfigError(
                f"{source}: sasl.mechanism: {shown}, must be one of " + ", ".join(MECHANISMS)
            )
        username = values.get("sasl.username")
        if not username:
            raise KafkaConfigError(f"{source}: sasl.username: not set ({protocol} needs it)")
        password = override if override is not None else values.get("sasl.password")
        if not password:
            raise KafkaConfigError(
                f"{source}: sasl.password: not set (nor {PASSWORD_ENV} / {PASSWORD_FILE_ENV})"
            )

    context = _ssl_context(values, source) if tls else None
    return KafkaClientConfig(
        source=source,
        protocol=protocol,
        mechanism=mechanism,
        username=username,
        password=password,
        ssl_context=context,
    )


def _ssl_context(values: Mapping[str, str], source: str) -> ssl.SSLContext:
    algorithm = values.get("ssl.endpoint.identification.algorithm", "https").lower()
    if algorithm not in ("https", "none"):
        raise KafkaConfigError(
            f"{source}: ssl.endpoint.identification.algorithm: "
            f"{values['ssl.endpoint.identification.algorithm']!r} is not https or none"
        )
    ca = values.get("ssl.ca.location")
    cert = values.get("ssl.certificate.location")
    key = values.get("ssl.key.location")
    if (cert is None) != (key is None):
        missing = "ssl.key.location" if key is None else "ssl.certificate.location"
        raise KafkaConfigError(f"{source}: {missing}: not set (a client certificate needs both)")
    if "ssl.key.password" in values and key is None:
        raise KafkaConfigError(f"{source}: ssl.key.password: set, but no ssl.key.location")
    for name, path in (("ssl.ca.location", ca), ("ssl.certificate.location", cert)):
        if path is not None:
            _readable(source, name, path)
    if key is not None:
        _readable(source, "ssl.key.location", key)
    try:
        context: ssl.SSLContext = create_ssl_context(cafile=ca)
    except (ssl.SSLError, ValueError) as exc:
        raise KafkaConfigError(
            f"{source}: ssl.ca.location: {ca!r} holds no usable CA certificate ({_reason(exc)})"
        ) from None
    if cert is not None:
        try:
            # a callable: OpenSSL asks for it only when the key is encrypted
            context.load_cert_chain(cert, key, password=lambda: values.get("ssl.key.password", ""))
        except ssl.SSLError as exc:
            hint = "not a PEM certificate and its key, or a wrong or missing ssl.key.password"
            raise KafkaConfigError(
                f"{source}: ssl.certificate.location/ssl.key.location: cannot load "
                f"{cert!r} with {key!r} ({hint}: {_reason(exc)})"
            ) from None
    # hostname checks follow librdkafka: on unless the file says "none"; the
    # certificate chain itself is always verified
    context.check_hostname = algorithm == "https"
    return context


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or type(exc).__name__)


def _key_list() -> str:
    return ", ".join(sorted(KEYS - {"sasl.mechanisms"}))


def load_kafka_config(path: str | None, env: Mapping[str, str] | None = None) -> KafkaClientConfig:
    """The client configuration from the properties file at `path` (None: plaintext)."""
    env = os.environ if env is None else env
    if not path:
        if env.get(PASSWORD_ENV) is not None or env.get(PASSWORD_FILE_ENV) is not None:
            raise KafkaConfigError(
                f"{PASSWORD_ENV}/{PASSWORD_FILE_ENV}: set, but no FRWATCH_KAFKA_CONFIG file"
            )
        return PLAINTEXT
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise KafkaConfigError(f"FRWATCH_KAFKA_CONFIG: cannot read {path!r}: {reason}") from None
    return build_config(parse_properties(text, path), path, env)
