"""The ``evie`` command line."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from evie import __version__
from evie.agent.undumpable import make_undumpable
from evie.errors import ConfigError, EvieError
from evie.gc_policy import pause_gc
from evie.logs import RedactSecrets, setup_logging

if TYPE_CHECKING:
    from collections.abc import Callable

    from evie.config import Config
    from evie.config_file import FirstLook

DEFAULT_CONFIG = Path(os.path.expanduser("~/.config/evie/config.toml"))


def _config_path(arg: str | None) -> Path | None:
    if arg:
        return Path(arg)
    env = os.environ.get("EVIE_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


def _load(args: argparse.Namespace) -> Config:
    from evie.config import load_config  # attrs and tomllib: after pause_gc (see main)

    config = load_config(_config_path(args.config))
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return config


def _first_look(args: argparse.Namespace) -> tuple[FirstLook, Callable[[], Config]]:
    """``evie chat``: what its greeting and line editor need, from the config file read now
    (a file that cannot be read, or one of those values wrong: the whole config is validated
    now and its error raised), and how to validate the rest beside the first prompt (attrs
    and the config's classes: ~30-45 ms before the prompt otherwise, adr/0015)."""
    from evie.config_file import file_warnings, first_look, read_config_file

    path = _config_path(args.config)
    data = read_config_file(path) if path is not None else {}
    first = first_look(data)
    if first is None:
        _load(args)  # raises the file's ConfigError, every problem listed
        raise AssertionError("first_look reads what the config accepts")  # pragma: no cover
    for warning in file_warnings(path, data) if path is not None else ():
        print(f"warning: {warning}", file=sys.stderr)

    def load() -> Config:
        from evie.config import config_from_file, parse_config

        config = parse_config({}) if path is None else config_from_file(data, path)
        _setup_logging(config, quiet=True)
        return config

    return first, load


def _setup_logging(config: Config, *, quiet: bool) -> None:
    level = "warning" if quiet and config.log.level in ("debug", "info") else config.log.level
    secrets = (config.telegram.token or "", config.discord.token or "", config.http.token or "")
    setup_logging(level, config.log.format, secrets)


def _status(config: Config) -> int:
    import json
    import urllib.error
    import urllib.request

    from evie.config import split_listen

    if not config.http.listen:
        raise ConfigError("`evie status` needs [http] listen in the config of the running evie")
    host, port = split_listen(config.http.listen)
    request = urllib.request.Request(f"http://{host}:{port}/status")
    if config.http.token:
        request.add_header("Authorization", f"Bearer {config.http.token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status = json.loads(response.read())
    except (urllib.error.URLError, OSError) as exc:
        print(f"evie: no running evie answered on {config.http.listen} ({exc})", file=sys.stderr)
        return 1
    sessions = status["sessions"] if isinstance(status, dict) else status
    for platform in status.get("platforms", []) if isinstance(status, dict) else []:
        print(f"platform {platform['summary']}")
    if not sessions:
        print("running; no sessions yet")
    for s in sessions:
        line = f"{s['key']:<24} {s['state']:<9} {s['session_id']}"
        if s.get("turn_elapsed") is not None:
            line += f"  turn {s['turn_elapsed']:.1f}s"
            if s.get("current_tool"):
                line += f" ({s['current_tool']})"
        if s.get("last_outcome"):
            line += f"  last: {s['last_outcome']}"
        print(line)
    return 0


def _init(path: Path) -> int:
    from evie.config import example_config

    if path.exists():
        print(f"{path} already exists; not overwriting it.", file=sys.stderr)
        return 1
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(example_config())
    flag = "" if path == DEFAULT_CONFIG else f" --config {path}"
    print(
        f"wrote {path} (mode 600; every key documented, all commented out).\n"
        "next steps:\n"
        f"  evie{flag} setup      choose a model and connect Telegram/Discord, step by step\n"
        f"  evie{flag} doctor     check everything, with a real test turn\n"
        f"  evie{flag} chat       talk to pi from this terminal"
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    config_help = f"config file (default: $EVIE_CONFIG or {DEFAULT_CONFIG})"
    # --config is accepted before or after the sub-command: each sub-parser knows it too
    # (SUPPRESS keeps a sub-parser from overwriting a value given before the sub-command)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=config_help)
    parser = argparse.ArgumentParser(prog="evie", description=__doc__)
    parser.add_argument("--version", action="version", version=f"evie {__version__}")
    parser.add_argument("--config", help=config_help)
    sub = parser.add_subparsers(dest="command")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    command("chat", "talk to pi from this terminal, in the current directory (needs no tokens)")
    run = command("run", "serve every configured interface until SIGTERM/SIGINT")
    run.add_argument("--terminal", action="store_true", help="also chat on this terminal")
    for name in ("doctor", "check"):
        doctor = command(name, "check the set-up item by item, with a real test turn")
        doctor.add_argument("--no-turn", action="store_true", help="skip the test turn")
    command("status", "ask a running `evie run` for its sessions (needs [http])")
    init = command("init", "write the documented example config (0600, never overwrites)")
    init.add_argument("path", nargs="?", help=f"where (default --config or {DEFAULT_CONFIG})")
    from evie.setup.options import add_arguments as add_setup_arguments

    add_setup_arguments(command("setup", "choose a model and connect the bots, step by step"))
    service = command("service", "run `evie run` as a systemd user service")
    service.add_argument("action", choices=("install", "uninstall", "status"))
    return parser


def _plain_chat(argv: list[str]) -> argparse.Namespace | None:
    """``evie``, ``evie chat``, each with one ``--config``: read as :func:`_parser` reads
    them, without building it (ten parsers and ~60 options, a gettext look-up each: ~10 ms
    of CPU before the chat's first prompt, adr/0015); None for any other command line,
    which argparse reads (``tests/test_cli_args.py`` holds both to the same answers)."""
    config: str | None = None
    command: str | None = None
    words = iter(argv)
    for word in words:
        if word == "chat" and command is None:
            command = word
            continue
        if word == "--config" and config is None:
            value = next(words, "")
        elif word.startswith("--config=") and config is None:
            value = word.removeprefix("--config=")
        else:
            return None
        if not value or value.startswith("-"):
            return None
        config = value
    return argparse.Namespace(config=config, command=command)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    plain = _plain_chat(argv)
    return plain if plain is not None else _parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # same-user processes (pi's tools, without the sandbox) cannot read our /proc environ
    make_undumpable()
    command = args.command or "chat"
    paused = command == "chat" and pause_gc()  # settled once the chat's runtime is up
    try:
        if command == "init":
            target = args.path or args.config or os.environ.get("EVIE_CONFIG")
            return _init(Path(target) if target else DEFAULT_CONFIG)
        if command == "setup":
            from evie.setup.wizard import run_setup

            return run_setup(args, _config_path(args.config) or DEFAULT_CONFIG)
        if command == "chat":
            from evie.platforms.tls_later import import_asyncio_without_tls

            first, load = _first_look(args)
            import_asyncio_without_tls()  # ssl is attached beside the first prompt
            from evie.repl import run_chat  # the first prompt first; the runtime beside it

            run_chat(first, load)
            return 0
        config = _load(args)
        if command == "service":
            from evie.setup.service import service_command

            return service_command(args.action, config)
        quiet = command in ("doctor", "check") or getattr(args, "terminal", False)
        _setup_logging(config, quiet=quiet)
        if command in ("doctor", "check"):
            import anyio

            from evie.setup.doctor import run_doctor

            return anyio.run(lambda: run_doctor(config, turn=not args.no_turn))
        if command == "status":
            return _status(config)
        if command == "run":
            import anyio

            from evie.daemon import run_daemon

            anyio.run(lambda: run_daemon(config, terminal=args.terminal))
            return 0
        raise AssertionError(f"no such command: {command}")  # argparse knows them all
    except EvieError as exc:
        print(f"evie: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:  # from a task group: report evie's own errors plainly
        matched, rest = group.split(EvieError)
        if matched is None or rest is not None:
            return _unexpected(group)
        for leaf in _leaves(matched):
            print(f"evie: {leaf}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        return _unexpected(exc)
    finally:
        if paused:
            gc.enable()  # the chat ended before its runtime was up: never leave it off


def _unexpected(exc: BaseException) -> int:
    """One line for an error evie did not foresee; the traceback only at debug level."""
    leaves = _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        return 130
    first = leaves[0] if leaves else exc
    words = RedactSecrets().redact(" ".join(str(first).split())[:300])
    print(
        f"evie: unexpected {type(first).__name__}: {words} "
        '(set [log] level = "debug" for the traceback)',
        file=sys.stderr,
    )
    import logging

    if logging.getLogger().isEnabledFor(logging.DEBUG):
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    return 1


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def run_as_program() -> None:
    """The ``evie`` program: :func:`main`, then exit without the interpreter's teardown.

    By the time ``main`` returns, pi is stopped, state is flushed and every
    connection is closed; tearing down aiogram's, discord.py's and pydantic's
    module state only adds about a second to every stop on a busy machine.
    """
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more to say anyway
            pass
    os._exit(code)


if __name__ == "__main__":
    run_as_program()
