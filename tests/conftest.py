"""Shared fixtures: the anyio backend, the fake pi, and a manager wired to it."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.abc
import attrs
import pytest

from evie.agent.events import Prompt, TurnEvent
from evie.agent.launcher import PiLauncher
from evie.agent.process import LaunchSpec
from evie.sessions.manager import SessionManager, SessionSettings
from tests.fake_discord import FakeDiscord, running_fake_discord
from tests.fake_llm import OPENAI, FakeLLM, running_fake_llm, write_agent_dir
from tests.fake_telegram import FakeTelegram, running_fake_telegram

FAKE_PI = Path(__file__).with_name("fake_pi.py")
PI = Path(__file__).resolve().parent.parent / "node_modules" / ".bin" / "pi"
# a daemon run in a test's event loop must not gc.freeze() the whole test process (adr/0016)
os.environ.setdefault("EVIE_GC", "default")


_FIGURES: list[str] = []


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def report_figure() -> Callable[[str], None]:
    """Counts a fault test wants in the run's output (shown after the results, even without -s)."""
    return _FIGURES.append


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("fault suite figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    """The fake LLM (OpenAI-compatible) on loopback, for the real pi."""
    async with running_fake_llm() as fake:
        yield fake


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    """The fake Bot API on loopback."""
    async with running_fake_telegram() as fake:
        yield fake


@pytest.fixture
async def discord() -> AsyncIterator[FakeDiscord]:
    """The fake Discord REST API and gateway on loopback."""
    async with running_fake_discord() as fake:
        yield fake


@pytest.fixture(autouse=True)
def private_data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Default work dirs ($XDG_DATA_HOME/evie/work/<id>) land in the test's tmp dir."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))


@pytest.fixture(autouse=True)
def no_process_left_behind(tmp_path: Path) -> Iterator[None]:
    """After every test, nothing started for its state dir (pi, fakes, tool children) runs."""
    yield
    from evie.agent.reaper import marked_processes, reap

    owner = str((tmp_path / "state").resolve())
    leftovers = marked_processes(owner)
    reap(owner)
    assert leftovers == [], f"processes left running by the test: {leftovers}"


@attrs.frozen
class FakeLauncher:
    """The real launcher with the fake pi as command; extra flags per session id prefix."""

    base: PiLauncher
    per_session: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def spec_for(self, session_id: str) -> LaunchSpec:
        spec = self.base.spec_for(session_id)
        extra: tuple[str, ...] = ()
        for prefix, flags in self.per_session:
            if session_id.startswith(prefix):
                extra += flags
        return attrs.evolve(spec, argv=spec.argv + extra)


def fake_launcher(tmp_path: Path, *per_session: tuple[str, tuple[str, ...]]) -> FakeLauncher:
    base = PiLauncher(
        command=(sys.executable, str(FAKE_PI)),
        state_dir=tmp_path / "state",
        agent_dir=tmp_path / "state" / "agent",
        work_root=tmp_path / "work",
        startup_timeout=10,
        stop_timeout=2,
    )
    return FakeLauncher(base, per_session)


_Event = TypeVar("_Event")


@attrs.define
class Recorder:
    """An event sink that records everything and lets tests wait for a kind of event."""

    events: list[TurnEvent] = attrs.Factory(list)
    _changed: anyio.Event = attrs.Factory(anyio.Event)
    delay: float = 0.0

    async def __call__(self, event: TurnEvent) -> None:
        if self.delay:
            await anyio.sleep(self.delay)
        self.events.append(event)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, predicate: Callable[[TurnEvent], bool]) -> TurnEvent:
        while True:
            for event in self.events:
                if predicate(event):
                    return event
            await self._changed.wait()

    async def streaming(self) -> None:
        """Wait until the turn has streamed some text (so it is surely running)."""
        from evie.agent.events import TextDelta

        await self.wait_for(lambda e: isinstance(e, TextDelta))

    def of(self, kind: type[_Event]) -> list[_Event]:
        """The events of one kind, typed as that kind (the filter is the check)."""
        return [e for e in self.events if isinstance(e, kind)]

    def text(self) -> str:
        from evie.agent.events import TextDelta

        return "".join(e.text for e in self.events if isinstance(e, TextDelta))


async def start_turn(
    tg: anyio.abc.TaskGroup, manager: SessionManager, key: str, prompt: Prompt
) -> Recorder:
    """Send ``prompt`` to ``key`` as a task of ``tg``; its recorder, once text streams."""
    rec = Recorder()
    tg.start_soon(manager.send, key, prompt, rec)
    await rec.streaming()
    return rec


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[SessionManager]:
    async with SessionManager(fake_launcher(tmp_path), SessionSettings(idle_timeout=600)) as m:
        yield m


def script(*steps: Mapping[str, object]) -> Prompt:
    import json

    return Prompt("script:" + json.dumps(list(steps)))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def real_launcher(tmp_path: Path, llm: FakeLLM, api: str = OPENAI) -> PiLauncher:
    """The real pi from node_modules, talking to the fake LLM through provider ``api``."""
    agent_dir = tmp_path / "state" / "agent"
    write_agent_dir(agent_dir, llm, api=api)
    return PiLauncher(
        command=(str(PI),),
        state_dir=tmp_path / "state",
        agent_dir=agent_dir,
        work_root=tmp_path / "work",
        provider="fake",
        model="fake-1",
        system_prompt="You are a test.",
    )
