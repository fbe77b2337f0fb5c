"""The ``evie`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

import anyio
import attrs

from evie import __version__
from evie.agent.process import PiProcess
from evie.agent.sandbox import make_undumpable
from evie.config import Config, load_config, split_listen, starter_config
from evie.errors import ConfigError, EvieError
from evie.logs import setup_logging
from evie.runtime import build_launcher, choose_sandbox, open_runtime

DEFAULT_CONFIG = Path(os.path.expanduser("~/.config/evie/config.toml"))


def _config_path(arg: str | None) -> Path | None:
    if arg:
        return Path(arg)
    env = os.environ.get("EVIE_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


def _load(args: argparse.Namespace) -> Config:
    config = load_config(_config_path(args.config))
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return config


def _setup_logging(config: Config, *, quiet: bool) -> None:
    level = "warning" if quiet and config.log.level in ("debug", "info") else config.log.level
    secrets = (config.telegram.token or "", config.discord.token or "", config.http.token or "")
    setup_logging(level, config.log.format, secrets)


async def _chat(config: Config) -> None:
    from evie.platforms.terminal import TerminalChat

    async with open_runtime(config) as runtime:
        notice = runtime.store.take_notice("terminal")
        await TerminalChat(runtime.manager, notice=notice, interrupts=True).run()


async def _check(config: Config) -> int:
    print(f"config: {config.source or 'built-in defaults'}")
    command = config.pi_command
    print(f"pi command: {' '.join(command)}")
    sandbox = await anyio.to_thread.run_sync(choose_sandbox, config)
    print(f"sandbox: {sandbox.note}")
    if sandbox.bwrap is None:
        print("warning: without the sandbox pi's tools can read evie's config and state")
    with tempfile.TemporaryDirectory(prefix="evie-check-") as tmp:
        probe = attrs.evolve(
            build_launcher(config, sandbox.bwrap), state_dir=Path(tmp), work_root=Path(tmp) / "w"
        )
        spec = probe.spec_for("evie-check")
        async with anyio.create_task_group() as tg:
            started = anyio.current_time()
            process = await PiProcess.spawn(spec, tg)
            elapsed = anyio.current_time() - started
            model = process.state.model
            await process.close()
    print(f"pi started in {elapsed:.2f}s; model {model.name if model else 'none'}")
    if model is None or model.id == "unknown":
        print(
            "warning: pi has no model: set [agent] provider and model, and the provider's "
            "API key in the environment (or [agent] agent_dir pointing at a pi login)"
        )
    if config.telegram.token and not config.telegram.allowed_user_ids:
        print("warning: [telegram] allowed_user_ids is empty: nobody can use the bot")
    if config.discord.token and not config.discord.allowed_user_ids:
        print("warning: [discord] allowed_user_ids is empty: nobody can use the bot")
    print("ok")
    return 0


def _status(config: Config) -> int:
    import json
    import urllib.error
    import urllib.request

    if not config.http.listen:
        raise ConfigError("`evie status` needs [http] listen in the config of the running evie")
    host, port = split_listen(config.http.listen)
    request = urllib.request.Request(f"http://{host}:{port}/status")
    if config.http.token:
        request.add_header("Authorization", f"Bearer {config.http.token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            sessions = json.loads(response.read())
    except (urllib.error.URLError, OSError) as exc:
        print(f"evie: no running evie answered on {config.http.listen} ({exc})", file=sys.stderr)
        return 1
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
    if path.exists():
        print(f"{path} already exists; not overwriting it.", file=sys.stderr)
        return 1
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(starter_config())
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="evie", description=__doc__)
    parser.add_argument("--version", action="version", version=f"evie {__version__}")
    parser.add_argument(
        "--config", help="config file (default: $EVIE_CONFIG or " + str(DEFAULT_CONFIG) + ")"
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("chat", help="talk to pi from this terminal (needs no tokens)")
    run = sub.add_parser("run", help="serve every configured interface until SIGTERM/SIGINT")
    run.add_argument("--terminal", action="store_true", help="also chat on this terminal")
    sub.add_parser("check", help="validate the config and probe a pi start")
    sub.add_parser("status", help="ask a running `evie run` for its sessions (needs [http])")
    init = sub.add_parser("init", help="write a commented starter config")
    init.add_argument("path", nargs="?", help=f"where (default {DEFAULT_CONFIG})")
    args = parser.parse_args(argv)
    # same-user processes (pi's tools, without the sandbox) cannot read our /proc environ
    make_undumpable()
    command = args.command or "chat"
    try:
        if command == "init":
            return _init(Path(args.path) if args.path else DEFAULT_CONFIG)
        config = _load(args)
        _setup_logging(config, quiet=command == "chat" or getattr(args, "terminal", False))
        if command == "check":
            return anyio.run(_check, config)
        if command == "status":
            return _status(config)
        if command == "run":
            from evie.daemon import run_daemon

            anyio.run(lambda: run_daemon(config, terminal=args.terminal))
            return 0
        anyio.run(_chat, config)
        return 0
    except EvieError as exc:
        print(f"evie: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:  # from a task group: report evie's own errors plainly
        matched, rest = group.split(EvieError)
        if matched is None or rest is not None:
            raise
        for leaf in _leaves(matched):
            print(f"evie: {leaf}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


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
