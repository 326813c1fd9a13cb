"""Every configuration value is checked against its type and range: one line naming the file,
the key and what is expected, exit code 2, never a traceback (issue 14, Low 16)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from gateway.config import (
    COMMAND_LINE,
    RANGES,
    Config,
    ConfigError,
    PushSettings,
    Trunk,
    load_config,
)
from tests.gateway.test_cli import ws2sip

# A value of the wrong type for each annotation the schema uses (TOML spelling in comments).
WRONG_VALUES: dict[str, list[Any]] = {
    "str": [5, True, ["x"]],  # 5, true, ["x"]
    "int": ["3600", 1.5, True, [1]],  # "3600", 1.5, true, [1]
    "float": ["30", True, [1.0]],
    "bool": ["yes", 1, [True]],
    "tuple[str, ...]": ["0.0.0.0:5060", [5], 7],
}
TOML_SPELLING = {True: "true", False: "false"}


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return TOML_SPELLING[value]
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return repr(value)


def refusal(path: Path, text: str) -> str:
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    return str(caught.value)


TABLES = ("trunks", "push")  # settings that are tables, checked key by key below


def test_the_schema_has_a_type_check_for_every_annotation() -> None:
    annotations = {str(f.type) for f in fields(Config) if f.name not in TABLES}
    annotations |= {str(f.type) for f in fields(Trunk)}
    annotations |= {str(f.type) for f in fields(PushSettings)}
    assert annotations <= set(WRONG_VALUES), annotations - set(WRONG_VALUES)
    names = {f.name for table in (Config, Trunk, PushSettings) for f in fields(table)}
    assert set(RANGES) <= names, set(RANGES) - names


@pytest.mark.parametrize("setting", list(fields(PushSettings)), ids=lambda f: f.name)
def test_every_push_key_refuses_a_value_of_the_wrong_type(setting: Any, tmp_path: Path) -> None:
    path = tmp_path / "ws2sip.toml"
    for wrong in WRONG_VALUES[str(setting.type)]:
        message = refusal(path, f"[push]\n{setting.name} = {toml_value(wrong)}\n")
        assert message.startswith(f"{path}: push.{setting.name}: expected "), message


def test_push_flags_set_the_push_table_and_are_range_checked() -> None:
    config = load_config(None, {"push_wait": 8.0, "push_repeat": 2.0})
    assert (config.push.wait, config.push.repeat) == (8.0, 2.0)
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"push_wait": 0.0})
    assert str(caught.value) == f"{COMMAND_LINE}: push.wait: expected a number 1-600, got 0.0"
    with pytest.raises(ConfigError, match="needs push.apns_key_id"):
        load_config(None, {"push_apns_key_file": "/dev/null"})


@pytest.mark.parametrize("setting", [f for f in fields(Config) if f.name not in TABLES],
                         ids=lambda f: f.name)
def test_every_setting_refuses_a_value_of_the_wrong_type(setting: Any, tmp_path: Path) -> None:
    path = tmp_path / "ws2sip.toml"
    for wrong in WRONG_VALUES[str(setting.type)]:
        message = refusal(path, f"{setting.name} = {toml_value(wrong)}\n")
        assert message.startswith(f"{path}: {setting.name}: expected "), message
        assert "\n" not in message


@pytest.mark.parametrize("setting", list(fields(Trunk)), ids=lambda f: f.name)
def test_every_trunk_key_refuses_a_value_of_the_wrong_type(setting: Any, tmp_path: Path) -> None:
    path = tmp_path / "ws2sip.toml"
    required = {"name": '"pbx"', "address": '"127.0.0.1:5060"'}
    for wrong in WRONG_VALUES[str(setting.type)]:
        entries = {**required, setting.name: toml_value(wrong)}
        body = "".join(f"{key} = {value}\n" for key, value in entries.items())
        message = refusal(path, f"[[trunks]]\n{body}")
        assert message.startswith(f"{path}: trunks[0].{setting.name}: expected "), message


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("max_expires", "0", "an integer 1-86400"),
    ("max_expires", "90000", "an integer 1-86400"),
    ("media_workers", "-1", "an integer 0-64"),
    ("ws_ping_interval", "-0.5", "a number 0-86400"),
    ("max_message_size", "100", "an integer 1024-1048576"),
])
def test_numbers_out_of_range_are_refused(key: str, value: str, expected: str,
                                          tmp_path: Path) -> None:
    path = tmp_path / "ws2sip.toml"
    assert refusal(path, f"{key} = {value}\n") == f"{path}: {key}: expected {expected}, got {value}"


def test_flags_are_range_checked_too() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"max_expires": 0})
    assert str(caught.value) == f"{COMMAND_LINE}: max_expires: expected an integer 1-86400, got 0"


def test_a_string_where_a_number_belongs_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "ws2sip.toml"
    config.write_text('max_expires = "3600"\n')
    refused = ws2sip("run", "--no-demo-users", "--tcp", "127.0.0.1:0", "--config", str(config))
    assert refused.code == 2
    assert refused.stderr == (
        f'ws2sip: {config}: max_expires: expected an integer 1-86400, got "3600"\n')
