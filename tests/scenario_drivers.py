"""Drivers for the scenario suite: one per platform, all behind the same small interface.

A driver knows how to configure ``evie run`` for its platform (the fake it
points at, and who is allowed), how to send a message as a user, and what that
user sees. :func:`evie_in_process` runs the real daemon (``run_daemon``) in the
test's event loop; :func:`evie_process` runs ``python -m evie.cli run`` as a
subprocess, for the cases that need real signals and a real exit. A new
platform gets the whole suite in ``test_scenarios.py`` by adding a driver here
and one line to the ``driver`` fixture there.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TextIO

import anyio
import anyio.abc
import anyio.to_thread
import attrs
import pytest

from evie.config import load_config
from evie.daemon import run_daemon
from evie.runtime import Runtime
from tests.conftest import FAKE_PI
from tests.fake_discord import TOKEN as DISCORD_TOKEN
from tests.fake_discord import FakeDiscord, running_fake_discord
from tests.fake_telegram import TOKEN as TELEGRAM_TOKEN
from tests.fake_telegram import FakeTelegram, running_fake_telegram
from tests.harness import Screen, kept_discord_endpoints

ROOT = Path(__file__).resolve().parent.parent
OWNER = 42
STRANGER = 666


class Driver(Protocol):
    name: str
    #: run with ``evie run --terminal``
    terminal: bool
    #: longest message the platform accepts; None for a stream (the terminal)
    max_length: int | None
    #: what a user sees when the turn was aborted / pi was stopped under it
    stopped: str
    interrupted: str

    def config(self) -> str:
        """The platform's TOML section(s), pointing at its fake; OWNER allowed."""
        ...

    def key(self, user: int = OWNER) -> str:
        """The session key of ``user``'s chat."""
        ...

    async def send(self, text: str, *, user: int = OWNER) -> None: ...

    def texts(self, user: int = OWNER) -> list[str]:
        """What ``user`` sees, oldest first (a terminal is one long text)."""
        ...

    def refuses_strangers(self) -> bool: ...

    def stall_start_up(self) -> anyio.Event | None:
        """Make the platform's start hang until the event is set (None: nothing to stall)."""
        ...

    def started_connecting(self) -> bool:
        """True once the daemon has begun connecting (or has nothing to connect to)."""
        ...

    def attach(self, stdin: Callable[[str], Any] | None, output: Screen | None) -> None:
        """The terminal's input and output (ignored by chat platforms)."""
        ...


class ChatDriver:
    """What the chat platforms (not the terminal) have in common."""

    terminal = False
    stopped = "⏹ Stopped."
    interrupted = "⏹ Interrupted"

    def refuses_strangers(self) -> bool:
        return True

    def attach(self, stdin: Callable[[str], Any] | None, output: Screen | None) -> None:
        pass  # a chat has no terminal


@attrs.define
class TelegramDriver(ChatDriver):
    fake: FakeTelegram
    name: str = "telegram"
    max_length: int | None = 4096

    def config(self) -> str:
        return (
            f'[telegram]\ntoken = "{TELEGRAM_TOKEN}"\napi_url = "{self.fake.base_url}"\n'
            f"allowed_user_ids = [{OWNER}]\n"
        )

    def key(self, user: int = OWNER) -> str:
        return f"tg:{user}"

    async def send(self, text: str, *, user: int = OWNER) -> None:
        self.fake.push_message(text, user_id=user)

    def texts(self, user: int = OWNER) -> list[str]:
        return self.fake.chat_view(user)

    def stall_start_up(self) -> anyio.Event | None:
        return self.fake.hold("getMe")

    def started_connecting(self) -> bool:
        return bool(self.fake.method_calls("getMe"))


@attrs.define
class DiscordDriver(ChatDriver):
    fake: FakeDiscord
    name: str = "discord"
    max_length: int | None = 2000

    @staticmethod
    def channel(user: int) -> int:
        return 500 if user == OWNER else 700 + user % 100  # each user's DM channel

    def config(self) -> str:
        return (
            f'[discord]\ntoken = "{DISCORD_TOKEN}"\napi_url = "{self.fake.api_url}"\n'
            f'gateway_url = "{self.fake.gateway_url}"\nallowed_user_ids = [{OWNER}]\n'
        )

    def key(self, user: int = OWNER) -> str:
        return f"dc:{self.channel(user)}"

    async def send(self, text: str, *, user: int = OWNER) -> None:
        await self.fake.push_message(text, user_id=user, channel_id=self.channel(user))

    def texts(self, user: int = OWNER) -> list[str]:
        return self.fake.channel_view(self.channel(user))

    def stall_start_up(self) -> anyio.Event | None:
        return self.fake.hold("users/@me")  # discord.py's login

    def started_connecting(self) -> bool:
        return ("GET", "users/@me") in self.fake.calls


@attrs.define
class TerminalDriver:
    name: str = "terminal"
    terminal: bool = True
    max_length: int | None = None
    stopped: str = "[aborted]"
    interrupted: str = "[interrupted]"
    _write: Callable[[str], Any] | None = None
    _screen: Screen = attrs.Factory(Screen)

    def config(self) -> str:
        return ""

    def key(self, user: int = OWNER) -> str:
        return "terminal"

    async def send(self, text: str, *, user: int = OWNER) -> None:
        assert self._write is not None, "attach the terminal first"
        await self._write(text + "\n")

    def texts(self, user: int = OWNER) -> list[str]:
        return [self._screen.text]

    def refuses_strangers(self) -> bool:
        return False

    def stall_start_up(self) -> anyio.Event | None:
        return None  # nothing to connect to

    def started_connecting(self) -> bool:
        return True

    def attach(self, stdin: Callable[[str], Any] | None, output: Screen | None) -> None:
        self._write = stdin
        if output is not None:
            self._screen = output


@asynccontextmanager
async def open_driver(name: str) -> AsyncIterator[Driver]:
    """The driver for ``name`` with its fake running."""
    if name == "telegram":
        async with running_fake_telegram() as fake:
            yield TelegramDriver(fake)
    elif name == "discord":
        with kept_discord_endpoints():  # run_daemon points discord.py at the fake
            async with running_fake_discord() as dfake:
                yield DiscordDriver(dfake)
    elif name == "terminal":
        yield TerminalDriver()
    else:
        raise ValueError(name)


# -- the daemon --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.define
class Evie:
    """A running ``evie run`` and what the tests ask it."""

    driver: Driver
    state_dir: Path
    http: str
    process: anyio.abc.Process | None = None
    stderr: list[str] = attrs.Factory(list)

    async def says(
        self, predicate: Callable[[list[str]], bool], *, user: int = OWNER, seconds: float = 20
    ) -> None:
        """Wait until what ``user`` sees satisfies ``predicate``."""
        try:
            with anyio.fail_after(seconds):
                while not predicate(self.driver.texts(user)):
                    await anyio.sleep(0.01)
        except TimeoutError:
            seen = "\n---\n".join(self.driver.texts(user))
            raise AssertionError(f"not seen within {seconds}s; the chat shows:\n{seen}") from None

    async def shows(self, *needles: str, user: int = OWNER, seconds: float = 20) -> None:
        """Wait until one message ``user`` sees contains every needle."""
        await self.says(
            lambda texts: any(all(n in t for n in needles) for t in texts),
            user=user,
            seconds=seconds,
        )

    async def status(self) -> dict[str, dict[str, Any]]:
        """``/status`` of the HTTP endpoint, by session key."""

        def get() -> str:
            with urllib.request.urlopen(self.http + "/status", timeout=5) as response:
                return str(response.read().decode())

        body = json.loads(await anyio.to_thread.run_sync(get))
        return {s["key"]: s for s in body["sessions"]}

    async def connected(self, seconds: float = 40) -> None:
        """Until every platform is up: ``run`` reports started before it connects (adr/0011)."""

        def states() -> list[str]:
            with urllib.request.urlopen(self.http + "/status", timeout=5) as response:
                return [p["state"] for p in json.loads(response.read())["platforms"]]

        with anyio.fail_after(seconds):
            while True:
                try:
                    if all(state == "up" for state in await anyio.to_thread.run_sync(states)):
                        return
                except OSError:
                    pass
                await anyio.sleep(0.02)

    def persisted(self, key: str) -> dict[str, Any]:
        record: dict[str, Any] = json.loads((self.state_dir / "state.json").read_text())[
            "sessions"
        ][key]
        return record

    def log(self) -> str:
        return "".join(self.stderr)


def write_config(tmp_path: Path, driver: Driver, *, grace: float, abort_grace: float) -> Path:
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\ncommand = ["{sys.executable}", "{FAKE_PI}"]\n'
        f"[sessions]\nshutdown_grace = {grace}\nabort_grace = {abort_grace}\n"
        f'[state]\ndir = "{tmp_path / "state"}"\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\n' + driver.config()
    )
    config.chmod(0o600)
    return config


@asynccontextmanager
async def evie_in_process(
    driver: Driver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    grace: float = 30.0,
    abort_grace: float = 10.0,
) -> AsyncIterator[Evie]:
    """The real daemon in this event loop; cancelled at the end of the block."""
    path = write_config(tmp_path, driver, grace=grace, abort_grace=abort_grace)
    config = load_config(path)
    assert config.http.listen is not None
    evie = Evie(driver, config.state.dir, f"http://{config.http.listen}")
    async with AsyncExitStack() as stack:
        if driver.terminal:
            read_fd, write_fd = os.pipe()
            keyboard: TextIO = stack.enter_context(os.fdopen(write_fd, "w", buffering=1))
            stdin: TextIO = stack.enter_context(os.fdopen(read_fd))
            screen = Screen()
            monkeypatch.setattr(sys, "stdin", stdin)
            monkeypatch.setattr(sys, "stdout", screen)

            async def type_line(text: str) -> None:
                keyboard.write(text)

            driver.attach(type_line, screen)
            stack.callback(keyboard.close)  # EOF lets the reader thread end
        ready = anyio.Event()

        async def on_ready(_runtime: Runtime) -> None:
            ready.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(run_daemon, config, terminal=driver.terminal, on_ready=on_ready))
            with anyio.fail_after(20):
                await ready.wait()
            await evie.connected()
            yield evie
            tg.cancel_scope.cancel()


@asynccontextmanager
async def evie_process(
    driver: Driver, tmp_path: Path, *, grace: float = 30.0, abort_grace: float = 10.0
) -> AsyncIterator[Evie]:
    """``python -m evie.cli run`` as a subprocess; killed at the end if still running.

    Returns as soon as the process is started: wait with :func:`running` or
    :func:`handles_sigterm` as the test needs.
    """
    path = write_config(tmp_path, driver, grace=grace, abort_grace=abort_grace)
    port = path.read_text().split("127.0.0.1:")[1].split('"')[0]
    argv = [sys.executable, "-m", "evie.cli", "--config", str(path), "run"]
    if driver.terminal:
        argv.append("--terminal")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await anyio.open_process(argv, env=env)
    evie = Evie(driver, tmp_path / "state", f"http://127.0.0.1:{port}", proc)
    assert proc.stdout is not None
    assert proc.stderr is not None
    assert proc.stdin is not None
    screen = Screen()
    stdin = proc.stdin

    async def type_line(text: str) -> None:
        await stdin.send(text.encode())

    driver.attach(type_line, screen)

    async def drain(stream: anyio.abc.ByteReceiveStream, into: Callable[[str], Any]) -> None:
        async for chunk in stream:
            into(chunk.decode("utf-8", "replace"))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain, proc.stdout, screen.write)
            tg.start_soon(drain, proc.stderr, evie.stderr.append)
            yield evie
            tg.cancel_scope.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()
        with anyio.CancelScope(shield=True):
            await proc.wait()
            await proc.aclose()


async def running(evie: Evie) -> None:
    """Wait until the subprocess serves its platform."""
    ready = "/help for commands" if evie.driver.terminal else "evie is running"  # the banner
    with anyio.fail_after(40):  # a busy machine imports aiogram and discord.py slowly
        while ready not in (evie.driver.texts()[0] if evie.driver.terminal else evie.log()):
            await anyio.sleep(0.02)
    await evie.connected()


def handles_sigterm(pid: int) -> bool:
    """True once the process catches SIGTERM (its handler is installed)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    except OSError:
        pass
    return False
