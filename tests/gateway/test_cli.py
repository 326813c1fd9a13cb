"""The `ws2sip` command line as users run it: `python -m gateway ...` in a subprocess."""

from __future__ import annotations

import argparse
import os
import re
import secrets
import stat
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.config import Config, PushSettings, load_config
from gateway.users import FileUserStore, RedisUserStore, UserStore
from sip.digest import compute_ha1
from tests.fixtures.gateway import REPO_ROOT, GatewayProcess
from tests.support.ws_sip import WsSipUa

DOMAIN = "example.test"
COMMAND_TIMEOUT = 30.0
GENERATED = re.compile(r"^password: (\S+)  \(shown only this once\)$", re.MULTILINE)


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str


def ws2sip(*args: str, stdin: str | None = None) -> Outcome:
    completed = subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=COMMAND_TIMEOUT, input=stdin, stdin=None if stdin is not None else
        subprocess.DEVNULL,
        # Wide enough that argparse never wraps a help text (it breaks words at hyphens).
        env={**os.environ, "COLUMNS": "1000"},
    )
    return Outcome(completed.returncode, completed.stdout, completed.stderr)


@dataclass
class Store:
    """Where `ws2sip user` keeps users: the flags that select it, and how to read it back."""

    args: list[str]
    redis_url: str | None
    file: Path | None

    async def ha1_of(self, user: str) -> str | None:
        # A fresh store per look: the CLI wrote behind the back of any store opened earlier.
        reader: UserStore
        if self.redis_url:
            reader = RedisUserStore(self.redis_url)
        else:
            assert self.file is not None, "a store is Redis or a file"
            reader = FileUserStore(self.file)
        try:
            record = await reader.get(user, DOMAIN)
        finally:
            await reader.close()
        return None if record is None else record.ha1("MD5")


@pytest.fixture(params=["file", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return Store(["--redis", url], url, None)
    path = tmp_path / "ws2sip" / "users.json"
    return Store(["--users-file", str(path)], None, path)


async def test_user_add_generates_a_password_shown_once(store: Store) -> None:
    added = ws2sip("user", "add", "carol", "--domain", DOMAIN, *store.args)
    assert added.code == 0, added.stderr
    passwords = GENERATED.findall(added.stdout)
    assert len(passwords) == 1
    password = passwords[0]
    assert len(password) >= 12
    assert await store.ha1_of("carol") == compute_ha1("carol", DOMAIN, password)
    listed = ws2sip("user", "list", "--domain", DOMAIN, *store.args)
    assert listed.code == 0 and listed.stdout.splitlines() == [f"carol@{DOMAIN}"]
    assert password not in listed.stdout
    if store.file is not None:
        assert stat.S_IMODE(store.file.stat().st_mode) == 0o600
        assert password not in store.file.read_text()  # HA1 only


async def test_user_add_passwd_del_with_given_passwords(store: Store) -> None:
    assert ws2sip("user", "add", "dave", "--password", "first-pw", "--domain", DOMAIN,
                  *store.args).code == 0
    assert await store.ha1_of("dave") == compute_ha1("dave", DOMAIN, "first-pw")
    again = ws2sip("user", "add", "dave", "--password", "x", "--domain", DOMAIN, *store.args)
    assert again.code == 1 and "exists" in again.stderr
    assert await store.ha1_of("dave") == compute_ha1("dave", DOMAIN, "first-pw")

    changed = ws2sip("user", "passwd", "dave", "--password", "second-pw", "--domain", DOMAIN,
                     *store.args)
    assert changed.code == 0 and GENERATED.search(changed.stdout) is None
    assert await store.ha1_of("dave") == compute_ha1("dave", DOMAIN, "second-pw")
    regenerated = ws2sip("user", "passwd", "dave", "--domain", DOMAIN, *store.args)
    (new_password,) = GENERATED.findall(regenerated.stdout)
    assert await store.ha1_of("dave") == compute_ha1("dave", DOMAIN, new_password)

    nobody = ws2sip("user", "passwd", "nobody", "--password", "x", "--domain", DOMAIN,
                    *store.args)
    assert nobody.code == 1 and f"no user nobody@{DOMAIN}" in nobody.stderr
    assert ws2sip("user", "del", "dave", "--domain", DOMAIN, *store.args).code == 0
    assert await store.ha1_of("dave") is None
    gone = ws2sip("user", "del", "dave", "--domain", DOMAIN, *store.args)
    assert gone.code == 1 and f"no user dave@{DOMAIN}" in gone.stderr
    assert ws2sip("user", "list", "--domain", DOMAIN, *store.args).stdout == ""


def run_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subcommands.choices["run"]


def test_run_help_documents_every_flag() -> None:
    shown = ws2sip("run", "--help")
    assert shown.code == 0
    help_text = " ".join(shown.stdout.split())
    for action in run_parser()._actions:
        assert action.help, f"{action.option_strings} has no help text"
        for option in action.option_strings:
            assert option in help_text
        assert " ".join(action.help.split()) in help_text


def test_every_setting_has_a_run_flag() -> None:
    destinations = {action.dest for action in run_parser()._actions}
    settings = {field.name for field in fields(Config)} - {"trunks", "push"}  # TOML tables
    assert settings - destinations == set()
    # Each [push] key is a flag --push-<key>.
    push_keys = {f"push_{field.name}" for field in fields(PushSettings)}
    assert push_keys - destinations == set()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-expires", "0"], "min_expires"),
        (["--min-expires", "700"], "min_expires"),
        (["--udp", "nonsense"], "udp: expected HOST:PORT, got 'nonsense'"),
        (["--ws", "127.0.0.1:99999"], "ws: expected HOST:PORT"),
        (["--rtp-ports", "9000-3000"], "rtp_ports"),
        (["--rtp-probation-packets", "0"], "rtp_probation_packets"),
        (["--rtp-learn-seconds", "-1"], "rtp_learn_seconds"),
        (["--wss", "127.0.0.1:0"], "tls_cert and tls_key"),
        (["--max-message-size", "0"], "max_message_size"),
        (["--log-level", "loud"], "--log-level"),
        (["--min-expires", "soon"], "--min-expires"),
    ],
)
def test_bad_config_values_exit_2_with_a_clear_error(args: list[str], message: str) -> None:
    # Should a check be missing, the gateway starts on a free loopback port, not on 0.0.0.0.
    refused = ws2sip("run", "--no-demo-users", "--tcp", "127.0.0.1:0", *args)
    assert refused.code == 2, refused
    assert message in refused.stderr
    assert "Traceback" not in refused.stderr


def test_bad_config_file_exits_2_naming_the_setting(tmp_path: Path) -> None:
    config = tmp_path / "ws2sip.toml"
    config.write_text('domain = "example.test"\nmin_expire = 30\n')
    refused = ws2sip("run", "--config", str(config))
    assert refused.code == 2
    assert "unknown setting 'min_expire'" in refused.stderr and str(config) in refused.stderr
    config.write_text("domain = \n")
    broken = ws2sip("run", "--config", str(config))
    assert broken.code == 2 and str(config) in broken.stderr


def test_strict_source_settings_reach_the_media_relays_policy(tmp_path: Path) -> None:
    from webrtc.plain import LatchPolicy

    assert Config().latch_policy == LatchPolicy()
    config_file = tmp_path / "ws2sip.toml"
    config_file.write_text("rtp_learn_seconds = 5.0\nrtp_probation_packets = 6\n")
    config = load_config(str(config_file), {"rtp_alive_seconds": 2.5})
    assert config.latch_policy == LatchPolicy(learn_seconds=5.0, probation_packets=6,
                                              alive_seconds=2.5)


class DemoUsersGateway(GatewayProcess):
    """The fixture's gateway without --no-demo-users: a first start as a new user runs it."""

    def argv(self) -> list[str]:
        return [arg for arg in super().argv() if arg != "--no-demo-users"]


DEMO_LINE = re.compile(r"^\s+(\w+)@example\.test  password: (\S+)$", re.MULTILINE)


async def test_first_start_creates_alice_and_bob_with_passwords_printed_once(
    tmp_path: Path,
) -> None:
    log_path = tmp_path / "gateway.log"
    gateway = DemoUsersGateway(
        domain=DOMAIN, users={}, transports=("ws",), users_file=tmp_path / "users.json",
        redis_url=None, node_id=None, extra_args=[], log_path=log_path,
    )
    gateway.pick_ports()
    await gateway.start()
    try:
        created = dict(DEMO_LINE.findall(gateway.log_text()))
        assert set(created) == {"alice", "bob"}
        assert created["alice"] != created["bob"]
        client = await WsSipUa.connect(gateway.ws_url, domain=DOMAIN)
        try:
            assert (await client.register("alice", created["alice"])).status == 200
            assert (await client.register("bob", created["bob"])).status == 200
        finally:
            await client.close()
        await gateway.restart()
        assert dict(DEMO_LINE.findall(gateway.log_text())) == created  # not printed again
        assert len(DEMO_LINE.findall(gateway.log_text())) == 2
        listed = ws2sip("user", "list", "--users-file", str(tmp_path / "users.json"))
        assert sorted(listed.stdout.split()) == [f"alice@{DOMAIN}", f"bob@{DOMAIN}"]
    finally:
        await gateway.stop()


async def test_without_a_terminal_the_password_is_generated_not_read(tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    piped = secrets.token_hex(8)
    added = ws2sip("user", "add", "erin", "--users-file", str(users), "--domain", DOMAIN,
                   stdin=piped + "\n")
    assert added.code == 0
    (generated,) = GENERATED.findall(added.stdout)
    store = Store([], None, users)
    assert await store.ha1_of("erin") == compute_ha1("erin", DOMAIN, generated)
    assert generated != piped
