"""`ws2sip` command line: run the gateway, manage users."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from sip.tasks import TaskSet

from .config import Config, ConfigError, add_run_arguments, load_config
from .logsafe import NetworkTextFilter
from .users import UnknownUser, UserExists, UserStore, generate_password, open_user_store

log = logging.getLogger(f"ws2sip.{__name__}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ws2sip",
        description="SIP-over-WebSocket gateway: registrar, proxy and WebRTC-to-RTP media bridge",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="start the gateway",
        description="Start the gateway. Every flag can also be set in the TOML file given with "
        "--config, under the same name with underscores (e.g. public_address = \"203.0.113.7\"); "
        "flags win over the file. With no listener flags it listens on UDP and TCP 5060 and on "
        "HTTP/WebSocket 8080 (SIP over WebSocket at ws://HOST:8080/ws).",
    )
    add_run_arguments(run)
    commands.add_parser(
        "selfcheck",
        help="check this install: import every compiled module, create every compiled class",
        description="Imports every module the install compiles (gateway/compiled.py) and "
        "creates an instance of each of their classes, in this fresh interpreter; says how the "
        "install runs (compiled or pure Python). Reports every broken one and exits 1.",
    )
    drain = commands.add_parser(
        "drain",
        help="drain a running node (as SIGTERM does): its calls finish, then it exits",
        description="Asks the node whose private metrics listener is --metrics (or `metrics` in "
        "--config) to drain: /healthz turns 503, new WebSockets and calls are refused, idle "
        "WebSockets close with 1001 after drain_grace, calls may go on up to drain_timeout, "
        "then the node exits 0. With --wait, returns once the node has exited.",
    )
    drain.add_argument("--config", metavar="FILE", help="the node's TOML configuration file")
    drain.add_argument("--metrics", metavar="HOST:PORT", help="the node's metrics listener")
    drain.add_argument("--wait", action="store_true",
                       help="wait until the node has exited (a Kubernetes preStop hook)")
    user = commands.add_parser("user", help="manage users and their credentials (HA1 only)")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    for name, help_text in (
        ("add", "add a user (prints a generated password when none is given)"),
        ("passwd", "change a user's password"),
        ("del", "delete a user"),
        ("list", "list users"),
    ):
        sub = user_commands.add_parser(name, help=help_text)
        if name != "list":
            sub.add_argument("username")
        if name in ("add", "passwd"):
            sub.add_argument("--password", help="the password (default: prompt, or generate)")
        sub.add_argument("--domain", help="SIP domain (realm); default from config")
        sub.add_argument("--config", metavar="FILE", help="TOML configuration file")
        sub.add_argument("--redis", metavar="URL", help="Redis URL of the user store")
        sub.add_argument("--users-file", metavar="PATH", help="users file (embedded default)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "selfcheck":
        from .selfcheck import main as selfcheck

        return selfcheck()
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    try:
        config = load_config(args.config, overrides)
    except ConfigError as error:
        print(f"ws2sip: {error}", file=sys.stderr)
        return 2
    if args.command == "run":
        return _run(config, lambda: load_config(args.config, overrides))
    if args.command == "drain":
        from .drain_client import drain_node

        return asyncio.run(drain_node(config, wait=args.wait))
    return asyncio.run(_user_command(args, config))


def _run(config: Config, reload_config: Callable[[], Config]) -> int:
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(NetworkTextFilter())
    try:
        import uvloop
    except ImportError:  # uvloop is optional (not on every platform)
        runner: Any = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(_serve(config, reload_config))
    except KeyboardInterrupt:
        pass
    except OSError as error:
        log.error("cannot start: %s", error)
        return 1
    return 0


async def _serve(config: Config, reload_config: Callable[[], Config]) -> None:
    """Until SIGINT (stop now), or SIGTERM / `ws2sip drain` (drain first: gateway.lifecycle;
    a second SIGTERM stops at once). SIGHUP reloads the configuration."""
    from .app import Gateway  # imported here so that `ws2sip user` stays light
    from .lifecycle import ConfigReload

    gateway = Gateway(config)
    reloader = ConfigReload(gateway, reload_config)
    stop = asyncio.Event()
    reloads = TaskSet(log, "reloading the configuration")
    loop = asyncio.get_running_loop()

    def terminate() -> None:
        if gateway.drain.draining:
            log.warning("SIGTERM while draining: stopping now")
            stop.set()
        gateway.drain.start()

    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, terminate)
    loop.add_signal_handler(signal.SIGHUP, lambda: reloads.spawn(reloader.reload()))
    try:
        await gateway.start()
        drained = asyncio.ensure_future(gateway.drain.finished())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait((drained, stopped), return_when=asyncio.FIRST_COMPLETED)
        drained.cancel()
        stopped.cancel()
        log.info("stopping")
    finally:
        reloads.cancel_all()
        await gateway.stop()


async def _user_command(args: argparse.Namespace, config: Config) -> int:
    store: UserStore = open_user_store(config.redis or None, config.users_path)
    domain = config.domain
    try:
        if args.user_command == "list":
            for record in await store.list(None if args.domain is None else domain):
                print(f"{record.username}@{record.domain}")
            return 0
        if args.user_command == "del":
            if await store.delete(args.username, domain):
                print(f"deleted {args.username}@{domain}")
                return 0
            print(f"ws2sip: no user {args.username}@{domain}", file=sys.stderr)
            return 1
        password, generated = _password(args.password)
        if args.user_command == "add":
            await store.add(args.username, domain, password)
            print(f"added {args.username}@{domain}")
        else:
            await store.set_password(args.username, domain, password)
            print(f"changed the password of {args.username}@{domain}")
        if generated:
            print(f"password: {password}  (shown only this once)")
        return 0
    except UserExists:
        print(f"ws2sip: user {args.username}@{domain} exists (use `user passwd`)", file=sys.stderr)
        return 1
    except UnknownUser:
        print(f"ws2sip: no user {args.username}@{domain}", file=sys.stderr)
        return 1
    finally:
        await store.close()


def _password(given: str | None) -> tuple[str, bool]:
    if given:
        return given, False
    if sys.stdin.isatty():
        first = getpass.getpass("password (empty: generate one): ")
        if first:
            if getpass.getpass("again: ") != first:
                raise SystemExit("ws2sip: passwords differ")
            return first, False
    return generate_password(), True
