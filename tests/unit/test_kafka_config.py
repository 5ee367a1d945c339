"""The client properties file: parsing, checks, and what it turns into (SPEC 6.1)."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import faust
import pytest

from streams.kafka_config import (
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    PLAINTEXT,
    KafkaConfigError,
    load_kafka_config,
)

SECRET = "s3cr3t-Pa55"  # a test value; every message is checked not to hold it


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a client certificate and its key, plain and encrypted with SECRET (openssl)."""
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    run("req", "-x509", *ec, "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=test-ca")  # fmt: skip
    run("req", *ec, "-nodes", "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=c")
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "client.pem", "-days", "2")  # fmt: skip
    run("pkcs8", "-topk8", "-in", "client.key", "-out", "client-enc.key", "-passout",
        f"pass:{SECRET}")  # fmt: skip
    return {n: d / n for n in ("ca.pem", "client.pem", "client.key", "client-enc.key")}


def props(tmp_path: Path, text: str) -> str:
    path = tmp_path / "client.properties"
    path.write_text(text)
    return str(path)


def error_of(path: str | None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(KafkaConfigError) as info:
        load_kafka_config(path, env or {})
    message = str(info.value)
    assert "\n" not in message
    assert SECRET not in message
    return message


def test_no_file_is_plaintext() -> None:
    cfg = load_kafka_config(None, {})
    assert cfg is PLAINTEXT
    assert cfg.aiokafka_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert cfg.faust_kwargs() == {}


def test_sasl_ssl_scram(tmp_path: Path, pki: dict[str, Path]) -> None:
    path = props(
        tmp_path,
        "# a comment\n\nsecurity.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n"
        f"sasl.username=worker\nsasl.password={SECRET}\nssl.ca.location={pki['ca.pem']}\n",
    )
    cfg = load_kafka_config(path, {})
    kw = cfg.aiokafka_kwargs()
    assert kw["security_protocol"] == "SASL_SSL"
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("worker", SECRET)
    ctx = kw["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert SECRET not in repr(cfg) and SECRET not in cfg.describe()
    creds = cfg.faust_kwargs()["broker_credentials"]
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol.value == "SASL_SSL" and creds.mechanism.value == "SCRAM-SHA-512"
    assert SECRET not in repr(creds)


def test_faust_turns_the_credentials_into_the_same_aiokafka_arguments(
    tmp_path: Path, pki: dict[str, Path]
) -> None:
    """What Faust's aiokafka driver gives its consumers and producers (0.15.3)."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    for text in (
        f"security.protocol=sasl_ssl\nsasl.mechanisms=PLAIN\nsasl.username=u\n"
        f"sasl.password={SECRET}\nssl.ca.location={pki['ca.pem']}\n",
        f"security.protocol=sasl_plaintext\nsasl.mechanism=scram-sha-256\nsasl.username=u\n"
        f"sasl.password={SECRET}\n",
        f"security.protocol=ssl\nssl.ca.location={pki['ca.pem']}\n"
        f"ssl.certificate.location={pki['client.pem']}\nssl.key.location={pki['client.key']}\n",
    ):
        cfg = load_kafka_config(props(tmp_path, text), {})
        faust_side = dict(credentials_to_aiokafka_auth(cfg.faust_kwargs()["broker_credentials"]))
        ours = cfg.aiokafka_kwargs()
        if "ssl_context" not in ours:
            ours["ssl_context"] = None  # Faust passes None for SASL_PLAINTEXT
        assert faust_side == ours


def test_mtls_with_encrypted_key_and_hostname_check_off(
    tmp_path: Path, pki: dict[str, Path]
) -> None:
    path = props(
        tmp_path,
        f"security.protocol=ssl\nssl.ca.location={pki['ca.pem']}\n"
        f"ssl.certificate.location={pki['client.pem']}\n"
        f"ssl.key.location={pki['client-enc.key']}\nssl.key.password={SECRET}\n"
        "ssl.endpoint.identification.algorithm=none\n",
    )
    cfg = load_kafka_config(path, {})
    ctx = cfg.aiokafka_kwargs()["ssl_context"]
    assert not ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert isinstance(cfg.faust_kwargs()["broker_credentials"], faust.SSLCredentials)


def test_wrong_key_password(tmp_path: Path, pki: dict[str, Path]) -> None:
    path = props(
        tmp_path,
        f"security.protocol=ssl\nssl.certificate.location={pki['client.pem']}\n"
        f"ssl.key.location={pki['client-enc.key']}\nssl.key.password=wrong-{SECRET}\n",
    )
    assert "ssl.key.password" in error_of(path)


def test_password_overrides(tmp_path: Path) -> None:
    base = "security.protocol=sasl_plaintext\nsasl.mechanism=PLAIN\nsasl.username=u\n"
    path = props(tmp_path, base + "sasl.password=from-file\n")
    assert load_kafka_config(path, {PASSWORD_ENV: SECRET}).password == SECRET
    secret_file = tmp_path / "pw"
    secret_file.write_text(SECRET + "\n")
    assert load_kafka_config(path, {PASSWORD_FILE_ENV: str(secret_file)}).password == SECRET
    no_password = props(tmp_path, base)
    assert load_kafka_config(no_password, {PASSWORD_ENV: SECRET}).password == SECRET
    assert "sasl.password" in error_of(no_password)
    both = {PASSWORD_ENV: SECRET, PASSWORD_FILE_ENV: str(secret_file)}
    assert PASSWORD_FILE_ENV in error_of(path, both)
    assert PASSWORD_FILE_ENV in error_of(path, {PASSWORD_FILE_ENV: str(tmp_path / "none")})
    assert PASSWORD_ENV in error_of(None, {PASSWORD_ENV: SECRET})


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (f"sasl.pasword={SECRET}\n", "'sasl.pasword'"),
        (f"{SECRET}\n", ":1: not a key=value line"),
        ("security.protocol=tls\n", "security.protocol: 'tls'"),
        ("security.protocol=sasl_ssl\nsasl.mechanism=GSSAPI\n", "sasl.mechanism: 'GSSAPI'"),
        ("security.protocol=sasl_ssl\nsasl.username=u\n", "sasl.mechanism: not set"),
        ("security.protocol=sasl_ssl\nsasl.mechanism=PLAIN\n", "sasl.username"),
        (f"sasl.username=u\nsasl.password={SECRET}\n", "sasl.username: set, but"),
        ("ssl.ca.location=/x\n", "ssl.ca.location: set, but"),
        ("security.protocol=ssl\nssl.ca.location=/nonexistent.pem\n", "ssl.ca.location: no such"),
        ("security.protocol=ssl\nssl.endpoint.identification.algorithm=x\n", "algorithm: 'x'"),
        ("security.protocol=ssl\nssl.key.location=/k\n", "ssl.certificate.location: not set"),
        ("security.protocol=\n", "security.protocol: empty value"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, text: str, named: str) -> None:
    assert named in error_of(props(tmp_path, text))


def test_unreadable_file_and_bad_ca(tmp_path: Path) -> None:
    assert "FRWATCH_KAFKA_CONFIG" in error_of(str(tmp_path / "missing.properties"))
    not_a_ca = tmp_path / "ca.pem"
    not_a_ca.write_text("nothing here\n")
    message = error_of(props(tmp_path, f"security.protocol=ssl\nssl.ca.location={not_a_ca}\n"))
    assert "ssl.ca.location" in message
