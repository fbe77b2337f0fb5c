"""Every turn ends: /stop on a pi that ignores abort, runaway turns, retiring processes."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from evie.agent.events import Outcome, Prompt, TurnFinished
from evie.agent.reaper import marked_processes
from evie.http import render_metrics
from evie.sessions.manager import SessionManager, SessionSettings
from evie.sessions.watchdog import KILLED
from tests.conftest import Recorder, fake_launcher, pid_alive, script
from tests.harness import TelegramHarness, serving_telegram

pytestmark = pytest.mark.anyio

GRACE = 1.0
HUNG = script({"hang": "hard", "say": "working"})  # ignores abort and SIGTERM


def owner(tmp_path: Path) -> str:
    return str((tmp_path / "state").resolve())


async def started(rec: Recorder) -> None:
    with anyio.fail_after(15):
        await rec.streaming()


async def test_stop_ends_a_turn_whose_pi_ignores_abort(tmp_path: Path) -> None:
    settings = SessionSettings(abort_grace=GRACE)
    async with SessionManager(fake_launcher(tmp_path), settings) as manager:
        rec = Recorder()
        results: list[object] = []

        async def run() -> None:
            results.append(await manager.send("chat", HUNG, rec))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await started(rec)
            slot = manager._slots["chat"]
            assert slot.process is not None
            hung_pid = slot.process.pid
            status = manager.get_status("chat")
            assert status is not None
            assert status.last_event_ago is not None
            assert await manager.abort("chat")
            with anyio.fail_after(GRACE + 2):  # the bound: abort_grace + 2 s
                while not results:
                    await anyio.sleep(0.02)
        assert results == [TurnFinished(Outcome.ABORTED, KILLED)]
        assert rec.events[-1] == results[0]
        assert not pid_alive(hung_pid)
        assert manager.metrics.turns["aborted"] == 1
        status = manager.get_status("chat")
        assert status is not None
        assert status.last_outcome is Outcome.ABORTED
        # the session carries on in a new pi, on the same session
        session_id = status.session_id
        assert await manager.send("chat", Prompt("again"), Recorder()) == TurnFinished(Outcome.DONE)
        assert manager._slots["chat"].session_id == session_id


async def test_a_pi_that_stops_in_time_is_not_killed(tmp_path: Path) -> None:
    settings = SessionSettings(abort_grace=5)
    async with SessionManager(fake_launcher(tmp_path), settings) as manager:
        rec = Recorder()
        async with anyio.create_task_group() as tg:
            tg.start_soon(manager.send, "chat", script({"text": "x"}, {"sleep": 30}), rec)
            await started(rec)
            process = manager._slots["chat"].process
            assert process is not None
            pid = process.pid
            await manager.abort("chat")
        assert rec.events[-1] == TurnFinished(Outcome.ABORTED)
        assert pid_alive(pid)  # the same pi serves the next turn
        await manager.send("chat", Prompt("next"), Recorder())
        serving = manager._slots["chat"].process
        assert serving is not None
        assert serving.pid == pid


@pytest.mark.parametrize(
    ("settings", "steps", "why"),
    [
        (
            SessionSettings(abort_grace=GRACE, max_turn_seconds=0.5),
            [{"text": "tick", "chunk": 1, "delay": 0.05}] * 100,  # busy, never silent
            "max_turn_seconds",
        ),
        (
            SessionSettings(abort_grace=GRACE, stall_timeout=0.5),
            [{"text": "working"}, {"sleep": 30}],  # silent, but answers abort
            "stall_timeout",
        ),
        (
            SessionSettings(abort_grace=GRACE, stall_timeout=0.5),
            [{"hang": "hard", "say": "working"}],  # silent and deaf
            "stall_timeout",
        ),
    ],
)
async def test_runaway_turns_are_stopped_and_the_reason_given(
    tmp_path: Path, settings: SessionSettings, steps: list[dict[str, object]], why: str
) -> None:
    async with SessionManager(fake_launcher(tmp_path), settings) as manager:
        rec = Recorder()
        with anyio.fail_after(15):
            result = await manager.send("chat", script(*steps), rec)
        assert isinstance(result, TurnFinished)
        assert result.outcome is Outcome.ABORTED
        assert why in (result.error or "")
        hung = steps[-1].get("hang") is not None
        assert (KILLED in (result.error or "")) is hung


async def test_new_on_hung_pis_never_leaks_a_process(tmp_path: Path) -> None:
    """Ten /new on a hung pi: live pi processes stay within max_processes + 1; none remain."""
    most = 2
    settings = SessionSettings(abort_grace=0.5, max_processes=most)
    peak = 0
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            found = await anyio.to_thread.run_sync(marked_processes, owner(tmp_path))
            peak = max(peak, len(found))
            await anyio.sleep(0.01)

    finished: list[object] = []
    async with anyio.create_task_group() as outer:
        outer.start_soon(sample)
        async with SessionManager(fake_launcher(tmp_path), settings) as manager:
            async with anyio.create_task_group() as tg:

                async def one() -> None:
                    rec = Recorder()
                    done = anyio.Event()

                    async def run() -> None:
                        finished.append(await manager.send("chat", HUNG, rec))
                        done.set()

                    tg.start_soon(run)
                    await started(rec)
                    retiring_before = manager.retiring_processes()
                    await manager.new_session("chat")
                    assert manager.retiring_processes() == retiring_before + 1
                    assert "evie_pi_processes_retiring" in render_metrics(manager, manager.metrics)

                for _ in range(10):
                    await one()
                with anyio.fail_after(10):
                    while len(finished) < 10:
                        await anyio.sleep(0.02)
            with anyio.fail_after(10):
                while manager.live_processes():
                    await anyio.sleep(0.02)
        sampling = False
    assert finished == [TurnFinished(Outcome.ABORTED, KILLED)] * 10
    assert 0 < peak <= most + 1
    assert marked_processes(owner(tmp_path)) == []


async def test_retiring_processes_show_in_status_and_metrics(tmp_path: Path) -> None:
    settings = SessionSettings(abort_grace=3)
    async with SessionManager(fake_launcher(tmp_path), settings) as manager:
        rec = Recorder()
        async with anyio.create_task_group() as tg:
            tg.start_soon(manager.send, "chat", script({"hang": True, "say": "x"}), rec)
            await started(rec)
            await manager.new_session("chat")
            assert manager.retiring_processes() == 1
            metrics = render_metrics(manager, manager.metrics)
            assert "evie_pi_processes_retiring 1" in metrics
            assert "evie_pi_processes 1" in metrics
            from evie.chat.commands import run_command

            assert "Stopping 1 earlier pi process" in await run_command(manager, "chat", "status")
        assert rec.events[-1] == TurnFinished(Outcome.ABORTED, KILLED)
        assert manager.retiring_processes() == 0


# -- the user is told, end to end through Telegram ---------------------------------------


@pytest.fixture
async def tg(tmp_path: Path) -> AsyncIterator[TelegramHarness]:
    settings = SessionSettings(abort_grace=GRACE)
    async with serving_telegram(fake_launcher(tmp_path), settings=settings) as h:
        yield h


async def test_stop_in_telegram_tells_the_user_pi_was_restarted(tg: TelegramHarness) -> None:
    tg.fake.push_message("script:" + json.dumps([{"hang": "hard", "say": "working"}]))
    await tg.fake.wait_for(lambda: any("working" in t for t in tg.fake.chat_view(42)))
    tg.fake.push_message("/stop")
    with anyio.fail_after(GRACE + 2):
        await tg.fake.wait_for(lambda: any(KILLED in t for t in tg.fake.chat_view(42)))
    tg.fake.push_message("/status")
    await tg.fake.wait_for(lambda: any("Last turn: aborted" in t for t in tg.fake.chat_view(42)))


#: a launcher that starts pi in a session of its own with the same pipes, and exits once
#: its first argument names a file that exists: bubblewrap's outer process dying while its
#: inner one (and pi) live on, holding pi's output open and waiting on its input
OUTER_DIES = """
import os, subprocess, sys, time
flag, argv = sys.argv[1], sys.argv[2:]
subprocess.Popen(argv, start_new_session=True)
while not os.path.exists(flag):
    time.sleep(0.02)
"""


async def test_a_pi_whose_launcher_dies_first_is_given_up_and_its_orphan_ends(
    tmp_path: Path,
) -> None:
    """pi's own process exits while what it started keeps pi's stdout open: the turn ends
    as crashed within the drain bound (not never), the user is told, and closing pi's
    stdin ends the orphan (the autouse fixture fails the test if it lives on)."""
    import attrs

    from evie.agent.process import EXIT_DRAIN_S
    from tests.conftest import FAKE_PI

    flag = tmp_path / "outer-dies"
    base = fake_launcher(tmp_path)
    launcher = attrs.evolve(
        base,
        base=attrs.evolve(
            base.base,
            command=(sys.executable, "-c", OUTER_DIES, str(flag), sys.executable, str(FAKE_PI)),
        ),
    )
    async with SessionManager(launcher, SessionSettings()) as manager:
        rec = Recorder()
        results: list[object] = []

        async def run() -> None:
            results.append(
                await manager.send("chat", script({"hang": True, "say": "working"}), rec)
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await started(rec)
            flag.touch()  # the launcher exits; pi, in its own session, goes on
            with anyio.fail_after(EXIT_DRAIN_S + 5):
                while not results:
                    await anyio.sleep(0.02)
        assert isinstance(results[0], TurnFinished)
        assert results[0].outcome is Outcome.CRASHED
        assert "pi stopped unexpectedly" in (results[0].error or "")
        with anyio.fail_after(5):  # its stdin was closed: pi exits, as it does on EOF
            while marked_processes(owner(tmp_path)):
                await anyio.sleep(0.05)
        flag.unlink()  # the next message starts pi again (and its launcher stays)
        assert await manager.send("chat", script({"say": "back"}), rec) == TurnFinished(
            Outcome.DONE
        )
