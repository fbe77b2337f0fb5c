"""One scenario suite, run against every platform through the real ``evie run``.

Each test takes the ``driver`` fixture, so it runs once per platform: Telegram
(fake Bot API + aiogram), Discord (fake REST + gateway + discord.py) and the
terminal (its stdin/stdout). The fake pi plays the agent. Scenarios that need a
real signal and a real exit run ``evie run`` as a subprocess; the others run the
same daemon in process. A new platform gets all of it by adding a driver to
``scenario_drivers.py`` and its name to ``PLATFORMS``.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from evie.chat.commands import REFUSAL
from tests.scenario_drivers import (
    STRANGER,
    Driver,
    Evie,
    evie_in_process,
    evie_process,
    handles_sigterm,
    open_driver,
    running,
)

pytestmark = pytest.mark.anyio
PLATFORMS = ["telegram", "discord", "terminal"]


@pytest.fixture(params=PLATFORMS)
async def driver(request: pytest.FixtureRequest) -> AsyncIterator[Driver]:
    async with open_driver(request.param) as d:
        yield d


def script(*steps: dict[str, object]) -> str:
    return "script:" + json.dumps(list(steps))


def held(release: Path, before: str = "working on it", after: str = " ALLDONE") -> str:
    """A turn that streams ``before``, waits for ``release`` to exist, then ends with ``after``."""
    return script({"text": before}, {"wait_file": str(release)}, {"text": after})


async def turn_held_open(driver: Driver, evie: Evie, release: Path) -> None:
    """Start a :func:`held` turn and wait until the chat shows it working."""
    await driver.send(held(release))
    await evie.shows("working on it")


# -- conversation ---------------------------------------------------------------------------


async def test_hello(driver: Driver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with evie_in_process(driver, tmp_path, monkeypatch) as evie:
        await driver.send("hello there")
        await evie.shows("echo: hello there")
        # the turn ends just after its reply is shown (pi's get_state barrier follows
        # agent_end), so its outcome is recorded a moment later
        with anyio.fail_after(10):
            while (await evie.status())[driver.key()]["last_outcome"] is None:
                await anyio.sleep(0.02)
        status = await evie.status()
        assert status[driver.key()]["last_outcome"] == "done"


async def test_status_mid_turn(
    driver: Driver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = tmp_path / "release"
    async with evie_in_process(driver, tmp_path, monkeypatch) as evie:
        await turn_held_open(driver, evie, release)
        await driver.send("/status")
        await evie.shows("Turn running for")
        assert (await evie.status())[driver.key()]["state"] == "running"
        release.touch()
        await evie.shows("ALLDONE")


async def test_stranger_refused(
    driver: Driver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not driver.refuses_strangers():
        pytest.skip(f"{driver.name}: whoever has the terminal is its owner; there are no strangers")
    async with evie_in_process(driver, tmp_path, monkeypatch) as evie:
        for i in range(3):
            await driver.send(f"let me in {i}", user=STRANGER)
        await driver.send("/status", user=STRANGER)
        await evie.shows(REFUSAL, user=STRANGER)
        await driver.send("hi")  # handled after the stranger's messages
        await evie.shows("echo: hi")
        assert driver.texts(STRANGER) == [REFUSAL]  # once, not per message
        assert list(await evie.status()) == [driver.key()]  # no session for the stranger


async def test_mid_turn_message_is_queued_and_answered(
    driver: Driver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = tmp_path / "release"
    async with evie_in_process(driver, tmp_path, monkeypatch) as evie:
        await turn_held_open(driver, evie, release)
        await driver.send("and also this")
        await evie.shows("queued", "#1")
        release.touch()
        await evie.shows("echo: and also this")
    text = "\n".join(driver.texts())
    assert text.index("ALLDONE") < text.index("echo: and also this")


async def test_stop(driver: Driver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with evie_in_process(driver, tmp_path, monkeypatch) as evie:
        await driver.send(held(tmp_path / "never", before="long job"))
        await evie.shows("long job")
        await driver.send("/stop")
        await evie.shows("Stopping…")
        await evie.shows(driver.stopped)
        assert (await evie.status())[driver.key()]["last_outcome"] == "aborted"
        await driver.send("/stop")
        await evie.says(lambda texts: "\n".join(texts).count("Nothing is running.") == 1)


async def test_new(driver: Driver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with evie_in_process(driver, tmp_path, monkeypatch) as evie:
        await driver.send("first")
        await evie.shows("echo: first")
        old = (await evie.status())[driver.key()]["session_id"]
        await driver.send("/new")
        await evie.shows("Started a new session")
        new = (await evie.status())[driver.key()]["session_id"]
        assert new != old
        assert new in "\n".join(driver.texts())
        await driver.send("second")
        await evie.shows("echo: second")


async def test_long_reply_is_chunked(
    driver: Driver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = [f"Part {i}: " + "lorem ipsum " * 40 for i in range(30)]  # ~15 000 characters
    async with evie_in_process(driver, tmp_path, monkeypatch) as evie:
        await driver.send(script({"text": "\n\n".join(parts), "chunk": 1000}))
        await evie.shows("Part 29:")  # shown as it streams: the turn may still be ending
        with anyio.fail_after(20):
            while (await evie.status())[driver.key()]["last_outcome"] != "done":
                await anyio.sleep(0.05)
    texts = driver.texts()
    if driver.max_length is not None:
        assert len(texts) > 2  # the prompt's echo is not shown: these are all the reply
        assert all(len(t) <= driver.max_length for t in texts)
    joined = " ".join(" ".join(texts).split())
    positions = [joined.find(" ".join(p.split())) for p in parts]
    assert -1 not in positions  # every part whole, never cut inside a part's words...
    assert positions == sorted(positions)  # ...and in order


# -- signals and the shutdown timeline (a real process, a real exit) --------------------------


async def stopped(evie: Evie, seconds: float = 30) -> int:
    assert evie.process is not None
    with anyio.fail_after(seconds):
        return await evie.process.wait()


async def sigterm_after(evie: Evie, driver: Driver, message: str, shown: str) -> None:
    """Send ``message``; once the chat shows ``shown``, SIGTERM evie."""
    await running(evie)
    await driver.send(message)
    await evie.shows(shown)
    assert evie.process is not None
    evie.process.send_signal(signal.SIGTERM)


def assert_ended_cleanly(evie: Evie, driver: Driver, outcome: str) -> None:
    """The turn's outcome is on disk and nothing was logged as a crash."""
    assert evie.persisted(driver.key())["last_outcome"] == outcome
    assert "Traceback" not in evie.log()


async def test_idle_sigterm_waits_for_no_grace(driver: Driver, tmp_path: Path) -> None:
    """With nothing running, SIGTERM ends evie at once: no grace (30 s) or abort grace (10 s)
    is waited out. (How fast is the bench's business; the bound only separates the two.)"""
    async with evie_process(driver, tmp_path, grace=30, abort_grace=10) as evie:
        await sigterm_after(evie, driver, "hello", "echo: hello")
        sent = time.monotonic()
        assert evie.process is not None
        code = await evie.process.wait()
        elapsed = time.monotonic() - sent
        assert code == 0, evie.log()
        assert elapsed < 8.0, f"idle SIGTERM took {elapsed:.2f}s: it waited for a grace"
    assert "Traceback" not in evie.log()
    assert evie.persisted(driver.key())["running"] is False


async def test_sigterm_during_a_turn_lets_it_finish_then_exits(
    driver: Driver, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    async with evie_process(driver, tmp_path, grace=30) as evie:
        await sigterm_after(evie, driver, held(release), "working on it")
        await anyio.sleep(0.3)
        assert evie.process is not None
        assert evie.process.returncode is None  # still finishing the turn
        release.touch()
        await evie.shows("ALLDONE")  # the chat got its whole answer
        ended = time.monotonic()
        assert await stopped(evie) == 0
        # the 30 s grace is not slept out: the exit follows the turn's end (generous bound)
        assert time.monotonic() - ended < 10
    assert_ended_cleanly(evie, driver, "done")


async def test_sigterm_aborts_a_turn_after_the_grace_and_tells_the_chat(
    driver: Driver, tmp_path: Path
) -> None:
    async with evie_process(driver, tmp_path, grace=0.5, abort_grace=30) as evie:
        await sigterm_after(evie, driver, held(tmp_path / "never"), "working on it")
        await evie.shows(driver.stopped)
        told = time.monotonic()
        assert await stopped(evie) == 0
        assert time.monotonic() - told < 10  # the 30 s abort grace is not slept out
    assert_ended_cleanly(evie, driver, "aborted")


async def test_sigterm_when_pi_ignores_the_abort_still_tells_the_chat(
    driver: Driver, tmp_path: Path
) -> None:
    async with evie_process(driver, tmp_path, grace=0.3, abort_grace=0.5) as evie:
        deaf = script({"hang": True, "say": "not listening"})
        await sigterm_after(evie, driver, deaf, "not listening")
        # the turn watchdog kills a pi that ignores the abort after abort_grace
        await evie.shows("pi did not stop, so I stopped it")
        assert await stopped(evie) == 0
    assert_ended_cleanly(evie, driver, "aborted")


async def test_sigterm_during_start_up_is_graceful(driver: Driver, tmp_path: Path) -> None:
    gate = driver.stall_start_up()
    async with evie_process(driver, tmp_path) as evie:
        assert evie.process is not None
        pid = evie.process.pid
        with anyio.fail_after(40):
            while not (handles_sigterm(pid) and driver.started_connecting()):
                await anyio.sleep(0.005)
        evie.process.send_signal(signal.SIGTERM)
        assert await stopped(evie) == 0, evie.log()
        if gate is not None:
            # it was still connecting (``run`` reports started at once, adr/0011)
            assert "polling as" not in evie.log()
            assert "connected as" not in evie.log()
            gate.set()
    assert "Traceback" not in evie.log()
