"""``evie doctor``: one line per item — ✓ fine, ! worth knowing, ✗ broken (with the fix).

Each check looks at the real thing (pi's binary, the model through a real
turn, the bot tokens through the platforms' own APIs, the directories) rather
than at the config alone. Any ✗ makes the exit status 1.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import socket
import subprocess
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import attrs

from evie.config import Config, split_listen
from evie.errors import ConfigError
from evie.runtime import choose_sandbox
from evie.setup import bots
from evie.setup.probe import pi_version, probe_turn

OK, WARN, FAIL = "✓", "!", "✗"


@attrs.frozen
class Finding:
    mark: str
    text: str

    def line(self) -> str:
        return f"{self.mark} {self.text}"


async def run_doctor(
    config: Config, *, turn: bool = True, echo: Callable[[str], None] = print
) -> int:
    findings = await diagnose(config, turn=turn, echo=echo)
    broken = sum(f.mark == FAIL for f in findings)
    echo(f"{broken} problem(s) to fix." if broken else "All good.")
    return 1 if broken else 0


async def diagnose(
    config: Config, *, turn: bool = True, echo: Callable[[str], None] = print
) -> list[Finding]:
    out: list[Finding] = []

    def add(mark: str, text: str) -> None:
        finding = Finding(mark, text)
        out.append(finding)
        echo(finding.line())

    add(*_config(config))
    for warning in config.warnings:
        add(WARN, warning)
    pi_ok = await _pi(config, add)
    agent_dir_ok = await anyio.to_thread.run_sync(_agent_dir, config, add)
    if not pi_ok:
        add(FAIL, "model: not checked, pi could not run")
    elif not agent_dir_ok:  # (starting pi would create it: a typo must not become a login)
        add(FAIL, "model: not checked, the agent dir is missing")
    else:
        await _turn(config, add, turn)
    add(*await anyio.to_thread.run_sync(_state_dir, config.state.dir))
    add(*await anyio.to_thread.run_sync(_cwd, config))
    await _platforms(config, add)
    add(*await anyio.to_thread.run_sync(_sandbox, config))
    add(*await anyio.to_thread.run_sync(_http, config))
    add(*renderer())
    return out


def _config(config: Config) -> tuple[str, str]:
    if config.source is None:
        return (
            WARN,
            "config: none found, using the defaults (`evie init` or `evie setup` writes one)",
        )
    return OK, f"config: {config.source}"


async def _pi(config: Config, add: Callable[[str, str], None]) -> bool:
    command = " ".join(config.pi_command)
    try:
        version = await anyio.to_thread.run_sync(pi_version, config)
    except FileNotFoundError:
        add(
            FAIL,
            f"pi: {command} not found: run `npm ci` in evie's checkout, or set [agent] command",
        )
        return False
    except PermissionError:
        add(FAIL, f"pi: {command} is not executable: check [agent] command")
        return False
    except subprocess.TimeoutExpired:
        add(FAIL, f"pi: `{command} --version` did not finish in 20s: check [agent] command")
        return False
    except (subprocess.CalledProcessError, OSError) as exc:
        add(FAIL, f"pi: `{command} --version` failed ({exc}): check [agent] command and Node")
        return False
    add(OK, f"pi {version}: {command}")
    return True


def _agent_dir(config: Config, add: Callable[[str, str], None]) -> bool:
    agent_dir = config.agent_dir
    where = "[agent] agent_dir" if config.agent.agent_dir else "default <state>/agent"
    models = agent_dir / "models.json"
    auth = agent_dir / "auth.json"
    if config.agent.agent_dir is not None and not agent_dir.is_dir():
        add(FAIL, f"agent dir {agent_dir} ({where}) does not exist: fix [agent] agent_dir")
        return False
    found = [p.name for p in (models, auth, agent_dir / "settings.json") if p.exists()]
    add(OK, f"agent dir: {agent_dir} ({where}); " + (", ".join(found) or "empty"))
    if not models.exists():
        return True
    try:
        data = json.loads(models.read_text(encoding="utf-8"))
        providers = sorted(data.get("providers", {}))
    except (OSError, ValueError, AttributeError) as exc:
        add(FAIL, f"{models} is not valid ({exc}): fix it or run `evie setup`")
        return True
    add(OK, f"models.json: providers {', '.join(providers) or 'none'}")
    provider = config.agent.provider
    if provider and provider not in providers and not auth.exists():
        add(WARN, f"provider {provider!r} is not in models.json: pi must know it as a built-in")
    return True


async def _turn(config: Config, add: Callable[[str, str], None], turn: bool) -> None:
    result = await probe_turn(config, turn=turn)
    fix = (
        "run `evie setup`, or set [agent] provider and model with the provider's API key "
        "in the environment (see README, Choose a model)"
    )
    if result.model is None:
        detail = (
            f" ({result.answer})" if result.answer and result.answer != "pi has no model" else ""
        )
        add(FAIL, f"model: pi has no usable model{detail}: {fix}")
        return
    if not turn:
        add(OK, f"model: {result.model}")
        add(WARN, "test turn: skipped (--no-turn)")
        return
    if result.ok:
        answer = " ".join(result.answer.split())
        add(
            OK, f"model: {result.model}; test turn answered in {result.seconds:.1f}s: {answer[:80]}"
        )
    else:
        add(FAIL, f"model: {result.model}; the test turn failed: {result.answer[:200]}: {fix}")


def _state_dir(path: Path) -> tuple[str, str]:
    probe = None
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".doctor-")
        os.close(fd)
    except OSError as exc:
        return FAIL, (
            f"state dir {path} is not writable ({exc.strerror}): fix its owner/permissions "
            "or set [state] dir"
        )
    finally:
        if probe is not None:
            os.unlink(probe)
    return OK, f"state dir: {path} (writable)"


def _cwd(config: Config) -> tuple[str, str]:
    cwd = config.agent.cwd
    if cwd is None:
        return OK, (
            "working dir: `evie chat` works where it is started; `evie run` gives each "
            "session a private dir (set [agent] cwd to choose one)"
        )
    if not cwd.is_dir():
        return (
            FAIL,
            f"working dir {cwd} does not exist: create it (mkdir -p {cwd}) or change [agent] cwd",
        )
    if not os.access(cwd, os.W_OK):
        return WARN, f"working dir {cwd} is not writable: the agent cannot edit files there"
    return OK, f"working dir: {cwd}"


async def _platforms(config: Config, add: Callable[[str, str], None]) -> None:
    tg, dc = config.telegram, config.discord
    if not tg.token and not dc.token:
        add(
            WARN, "telegram, discord: no token, only `evie chat` works (`evie setup` connects them)"
        )
    if tg.token:
        try:
            me = await bots.telegram_me(tg.api_url, tg.token)
            add(OK, f"telegram: token valid, bot @{me.username}")
        except bots.BotCheckFailed as exc:
            add(FAIL, f"telegram: {exc}")
        add(*_allowed("telegram", tg.allowed_user_ids))
    if dc.token:
        try:
            me = await bots.discord_me(dc.api_url or bots.DISCORD_API, dc.token)
            add(OK, f"discord: token valid, bot {me.username}")
        except bots.BotCheckFailed as exc:
            add(FAIL, f"discord: {exc}")
        add(*_allowed("discord", dc.allowed_user_ids))


def _allowed(name: str, ids: frozenset[int]) -> tuple[str, str]:
    if not ids:
        return FAIL, (
            f"{name}: allowed_user_ids is empty, so everyone is refused: run `evie setup` "
            f"(it captures your id) or add it to [{name}] allowed_user_ids"
        )
    shown = ", ".join(str(i) for i in sorted(ids))
    return OK, f"{name}: allowed users {shown} (each has a shell on this machine through the agent)"


def _sandbox(config: Config) -> tuple[str, str]:
    """The sandbox pi would run in: ``[agent] sandbox`` resolved as ``evie run`` does."""
    try:
        choice = choose_sandbox(config)
    except ConfigError as exc:
        return FAIL, f"sandbox: {exc}"
    if choice.bwrap is None:
        return WARN, (
            f"sandbox: {choice.note}: the agent runs commands as you, with your files, "
            "evie's config included (see README, Security)"
        )
    return OK, f"sandbox: {choice.note}"


def renderer() -> tuple[str, str]:
    """Whether the reply renderer runs compiled (adr/0018); as plain Python it works, slower."""
    from evie.chat.render.compiled import COMPILED

    modules = [importlib.import_module(name) for name in COMPILED]
    if any((module.__file__ or "").endswith(".py") for module in modules):
        return WARN, (
            "renderer: plain Python (long replies take about twice the CPU): install a C "
            "compiler (e.g. gcc) and run ./dev again to compile it"
        )
    return OK, "renderer: compiled (mypyc)"


def _http(config: Config) -> tuple[str, str]:
    listen = config.http.listen
    if not listen:
        return OK, "http: off (set [http] listen for /healthz and /metrics)"
    host, port = split_listen(listen)
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2) as response:
            if b'"ok"' in response.read(200):
                return OK, f"http: a running evie answers on {listen}"
    except OSError:
        pass
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (
                    FAIL,
                    f"http: {listen} is used by another program: choose another [http] listen port",
                )
            return FAIL, f"http: cannot listen on {listen} ({exc.strerror}): fix [http] listen"
    return OK, f"http: {listen} is free for `evie run`"
