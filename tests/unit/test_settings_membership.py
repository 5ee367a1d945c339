"""FRWATCH_DATA_DIR and FRWATCH_INSTANCE_ID: where a worker keeps its data, who it is in the group."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from streams.app.faust_app import build_app
from streams.core.rules import load_rules
from streams.settings import SettingsError, settings_from_env


def test_the_data_directory_defaults_to_app_id_data_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert settings_from_env({"FRWATCH_APP_ID": "fw"}).data_path == tmp_path / "fw-data"
    given = settings_from_env({"FRWATCH_DATA_DIR": "state"})
    assert given.data_path == tmp_path / "state"
    assert given.data_path.is_absolute()


def test_the_default_instance_id_is_the_host_and_the_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    one = settings_from_env({"FRWATCH_DATA_DIR": "w1"}).group_instance_id
    assert one is not None
    # the same worker started again: the same id
    assert settings_from_env({"FRWATCH_DATA_DIR": str(tmp_path / "w1")}).group_instance_id == one
    # a second worker on the same host (its own data directory): another id
    assert settings_from_env({"FRWATCH_DATA_DIR": "w2"}).group_instance_id != one
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,249}", one)
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())
    assert one.startswith(host + "-")


def test_an_explicit_instance_id_is_used_and_none_means_dynamic_membership() -> None:
    assert settings_from_env({"FRWATCH_INSTANCE_ID": " pod-7 "}).group_instance_id == "pod-7"
    assert settings_from_env({"FRWATCH_INSTANCE_ID": "none"}).group_instance_id is None


@pytest.mark.parametrize("bad", ["a b", "x/y", "é", "x" * 250])
def test_an_instance_id_kafka_would_refuse_is_refused(bad: str) -> None:
    with pytest.raises(SettingsError, match="FRWATCH_INSTANCE_ID"):
        settings_from_env({"FRWATCH_INSTANCE_ID": bad})


def test_the_app_gets_the_data_directory_and_the_instance_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = settings_from_env(
        {"FRWATCH_STORE": "rocksdb://", "FRWATCH_INSTANCE_ID": "w-1", "FRWATCH_DATA_DIR": "d"}
    )
    fw = build_app(settings, load_rules(None))
    assert Path(fw.app.conf.datadir) == tmp_path / "d"
    assert fw.app.conf.consumer_group_instance_id == "w-1"
    assert str(fw.app.conf.store) == "rocksdb:"


def test_input_format_setting() -> None:
    """FRWATCH_INPUT_FORMAT (SPEC 6): frwatch by default; flags override it."""
    assert settings_from_env({}).input_format == "frwatch"
    env = {"FRWATCH_INPUT_FORMAT": " azure-resource-log "}
    assert settings_from_env(env).input_format == "azure-resource-log"
    assert settings_from_env(env, {"input_format": "/etc/f.yaml"}).input_format == "/etc/f.yaml"


def test_frwatch_mode_is_live_or_replay() -> None:
    from streams.settings import SettingsError, settings_from_env

    assert settings_from_env({}).mode == "live"
    assert not settings_from_env({}).replay_mode
    assert settings_from_env({"FRWATCH_MODE": "replay"}).replay_mode
    assert settings_from_env({}, overrides={"mode": "replay"}).mode == "replay"
    try:
        settings_from_env({"FRWATCH_MODE": "offline"})
    except SettingsError as exc:
        assert "FRWATCH_MODE" in str(exc)
    else:
        raise AssertionError("an unknown mode must be refused")
