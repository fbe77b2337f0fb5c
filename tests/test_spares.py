"""Warm spares (adr/0016) against the fake pi: who gets one, and what they see."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import anyio
import attrs
import pytest

from evie.agent.events import Outcome, TextDelta, TurnFinished
from evie.agent.reaper import marked_processes
from evie.sessions.manager import SessionManager, SessionSettings
from tests.conftest import FakeLauncher, Recorder, fake_launcher, script

pytestmark = pytest.mark.anyio


async def ready_spare(manager: SessionManager, not_pid: int | None = None) -> int:
    pool = manager.spares
    assert pool is not None
    with anyio.fail_after(20):
        while not [p for p in pool.ready if p != not_pid]:
            await anyio.sleep(0.01)
    return next(p for p in pool.ready if p != not_pid)


def pid_of(manager: SessionManager, key: str) -> int:
    status = manager.get_status(key)
    assert status is not None
    assert status.pid is not None
    return status.pid


def reply(rec: Recorder) -> str:
    return rec.text()


def fixed_cwd(tmp_path: Path) -> FakeLauncher:
    launcher = fake_launcher(tmp_path)
    (tmp_path / "project").mkdir(exist_ok=True)  # a configured cwd must exist
    return attrs.evolve(launcher, base=attrs.evolve(launcher.base, cwd=tmp_path / "project"))


async def test_a_new_session_takes_the_spare_in_its_own_work_dir(tmp_path: Path) -> None:
    settings = SessionSettings(warm_spares=1)
    async with SessionManager(fake_launcher(tmp_path), settings) as manager:
        spare = await ready_spare(manager)
        rec = Recorder()
        result = await manager.send("chat", script({"pwd": True}), rec)
        assert result == TurnFinished(Outcome.DONE)
        assert pid_of(manager, "chat") == spare
        status = manager.get_status("chat")
        assert status is not None
        work = (tmp_path / "work" / status.session_id).resolve()
        assert reply(rec) == f"cwd={work}"  # the spare was booted as this session
        session_file = tmp_path / "state" / "sessions" / f"{status.session_id}.jsonl"
        assert json.loads(session_file.read_text().splitlines()[0])["cwd"] == str(work)
        assert manager.metrics.spares_taken == 1
        # the pool is refilled with another process
        assert await ready_spare(manager, not_pid=spare) != spare
    # the spare waiting at shutdown leaves no empty work dir behind
    assert os.listdir(tmp_path / "work") == [status.session_id]


async def test_the_pool_refills_only_after_the_first_turn_of_the_spare_it_gave(
    tmp_path: Path,
) -> None:
    """A pi booting beside a session's first turn would slow the reply the spare is for."""
    settings = SessionSettings(warm_spares=1)
    release = tmp_path / "release"
    async with SessionManager(fake_launcher(tmp_path), settings) as manager:
        pool = manager.spares
        assert pool is not None
        spare = await ready_spare(manager)
        rec = Recorder()
        async with anyio.create_task_group() as tg:
            steps = script({"text": "working"}, {"wait_file": str(release)})
            tg.start_soon(manager.send, "chat", steps, rec)
            await rec.wait_for(lambda e: isinstance(e, TextDelta))
            assert pid_of(manager, "chat") == spare
            for _ in range(20):  # the pool's task runs many times meanwhile: it waits
                await anyio.sleep(0.01)
                assert pool.size == 0
            release.touch()
        assert await ready_spare(manager, not_pid=spare) != spare  # refilled after the turn


async def test_a_reclaimed_session_gets_its_history_back_from_a_spare(tmp_path: Path) -> None:
    settings = SessionSettings(warm_spares=1, max_processes=4)
    async with SessionManager(fixed_cwd(tmp_path), settings) as manager:
        await manager.send("chat", script({"text": "noted"}), Recorder())
        first = pid_of(manager, "chat")
        assert await manager.cleanup_idle(now=anyio.current_time() + 10**6) == 1
        spare = await ready_spare(manager)
        assert spare != first
        rec = Recorder()
        await manager.send("chat", script({"history": True}), rec)
        assert pid_of(manager, "chat") == spare
        texts = json.loads(reply(rec).removeprefix("history="))
        assert texts[0].startswith("script:")
        assert "noted" in texts[0]
        assert len(texts) == 2


async def test_new_takes_a_spare_too(tmp_path: Path) -> None:
    settings = SessionSettings(warm_spares=1)
    async with SessionManager(fixed_cwd(tmp_path), settings) as manager:
        await manager.send("chat", script({"text": "old"}), Recorder())
        spare = await ready_spare(manager)
        await manager.new_session("chat")
        rec = Recorder()
        await manager.send("chat", script({"history": True}), rec)
        assert pid_of(manager, "chat") == spare
        assert len(json.loads(reply(rec).removeprefix("history="))) == 1  # a fresh history


async def test_a_spare_never_serves_a_session_that_lives_in_another_dir(tmp_path: Path) -> None:
    """Private work dirs: an existing session's dir is its own, so it starts pi cold."""
    settings = SessionSettings(warm_spares=1, max_processes=4)
    async with SessionManager(fake_launcher(tmp_path), settings) as manager:
        spare = await ready_spare(manager)
        await manager.send("chat", script({"text": "one"}), Recorder())  # takes the spare
        assert pid_of(manager, "chat") == spare
        await manager.cleanup_idle(now=anyio.current_time() + 10**6)
        second = await ready_spare(manager, not_pid=spare)
        rec = Recorder()
        await manager.send("chat", script({"pwd": True}, {"history": True}), rec)
        assert pid_of(manager, "chat") != second  # started cold
        assert second in (manager.spares.ready if manager.spares else [])
        status = manager.get_status("chat")
        assert status is not None
        work = (tmp_path / "work" / status.session_id).resolve()
        assert reply(rec).startswith(f"cwd={work}")
        assert manager.metrics.spares_missed >= 1


async def test_a_spare_with_another_command_line_is_not_used(tmp_path: Path) -> None:
    launcher = fake_launcher(tmp_path, ("special", ("--startup-delay", "0")))
    async with SessionManager(launcher, SessionSettings(warm_spares=1)) as manager:
        spare = await ready_spare(manager)
        rec = Recorder()
        manager._known["chat"] = "special-1"  # a session launched with extra flags
        await manager.send("chat", script({"text": "hi"}), rec)
        assert pid_of(manager, "chat") != spare
        assert manager.spares is not None
        assert spare in manager.spares.ready


async def test_spares_respect_max_processes(tmp_path: Path) -> None:
    owner = str((tmp_path / "state").resolve())
    settings = SessionSettings(warm_spares=1, max_processes=1)
    async with SessionManager(fixed_cwd(tmp_path), settings) as manager:
        spare = await ready_spare(manager)
        await manager.send("a", script({"text": "a"}), Recorder())
        assert pid_of(manager, "a") == spare
        await anyio.sleep(0.3)  # the pool has had time to (wrongly) start another
        assert len(marked_processes(owner)) == 1
        await manager.send("b", script({"text": "b"}), Recorder())  # a's pi is stopped for b
        with anyio.fail_after(10):
            while len(marked_processes(owner)) > 1:
                await anyio.sleep(0.02)
        await manager.cleanup_idle(now=anyio.current_time() + 10**6)
        await ready_spare(manager)  # room again: a spare comes back
        assert len(marked_processes(owner)) == 1


async def test_a_spare_that_dies_is_replaced(tmp_path: Path) -> None:
    async with SessionManager(fixed_cwd(tmp_path), SessionSettings(warm_spares=1)) as manager:
        spare = await ready_spare(manager)
        os.kill(spare, signal.SIGKILL)
        replacement = await ready_spare(manager, not_pid=spare)
        rec = Recorder()
        assert await manager.send("chat", script({"text": "hi"}), rec) == TurnFinished(Outcome.DONE)
        assert pid_of(manager, "chat") == replacement


async def test_stopping_while_a_spare_boots_stops_it_at_once(tmp_path: Path) -> None:
    """A booting spare is stopped by the manager's exit, not waited for until its timeout."""
    launcher = fake_launcher(tmp_path, ("", ("--startup-delay", "60")))
    launcher = attrs.evolve(launcher, base=attrs.evolve(launcher.base, startup_timeout=120))
    owner = str((tmp_path / "state").resolve())
    with anyio.fail_after(15):  # far below the 60 s boot and the 120 s start-up timeout
        async with SessionManager(launcher, SessionSettings(warm_spares=1)) as manager:
            pool = manager.spares
            assert pool is not None
            while not marked_processes(owner):
                await anyio.sleep(0.01)
            assert pool.size == 1  # still booting
            assert pool.ready == []
    assert marked_processes(owner) == []
