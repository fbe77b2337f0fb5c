"""Durable state: atomic writes, coalescing, corruption, interrupted turns, lock discipline."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread
import msgspec
import pytest

from evie.agent.events import Notice, Outcome, Prompt, TurnFinished
from evie.errors import StateError
from evie.sessions.manager import SessionManager
from evie.sessions.slot import Slot, SlotState
from evie.state import INTERRUPTED_NOTICE, StateFile, StateStore, atomic_write
from tests.conftest import Recorder, fake_launcher

pytestmark = pytest.mark.anyio


def running_slot(key: str, session_id: str) -> Slot:
    slot = Slot(key, session_id)
    slot.state = SlotState.RUNNING
    slot.turn = object()  # type: ignore[assignment]  # any turn object marks it busy
    return slot


async def test_records_round_trip_with_private_permissions(tmp_path: Path) -> None:
    path = tmp_path / "state" / "state.json"
    store = StateStore(path)
    store.load()
    slot = Slot("tg:42", "s-1")
    slot.last_outcome = Outcome.DONE
    slot.turns = 3
    store.session_changed(slot, terminal=True)
    await store.flush()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    records = StateStore(path).load()
    assert records["tg:42"].session_id == "s-1"
    assert records["tg:42"].last_outcome == "done"
    assert records["tg:42"].turns == 3


async def test_a_running_turn_comes_back_as_interrupted_and_is_told_once(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = StateStore(path)
    store.load()
    store.session_changed(running_slot("chat", "sess-1"), terminal=True)
    await store.flush()
    # evie "dies" here; a new process loads the file
    store2 = StateStore(path)
    records = store2.load()
    assert records["chat"].running is False
    assert records["chat"].last_outcome == Outcome.INTERRUPTED.value
    async with SessionManager(
        fake_launcher(tmp_path), observer=store2, known_sessions={"chat": "sess-1"}
    ) as manager:
        rec = Recorder()
        assert await manager.send("chat", Prompt("hi"), rec) == TurnFinished(Outcome.DONE)
        assert rec.events[0] == Notice(INTERRUPTED_NOTICE)
        assert manager._slots["chat"].session_id == "sess-1"  # the same session resumes
        rec2 = Recorder()
        await manager.send("chat", Prompt("again"), rec2)
        assert rec2.of(Notice) == []
    await store2.flush()
    assert StateStore(path).load()["chat"].notice is None  # told once, also across restarts


@pytest.mark.parametrize("content", [b"{not json", b'{"version": 1, "sess', b"\xff\xfe", b"[]"])
async def test_a_corrupt_state_file_is_kept_aside_and_reported(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(StateError) as info:
        StateStore(path).load()
    message = str(info.value)
    assert str(path) in message
    assert "moved to" in message
    backups = list(tmp_path.glob("state.json.corrupt-*"))
    assert len(backups) == 1
    assert backups[0].read_bytes() == content
    assert not path.exists()
    assert StateStore(path).load() == {}  # the next start begins empty, knowingly


async def test_bursts_of_changes_coalesce_into_few_writes(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json", coalesce=0.05)
    store.load()
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.run)
        for i in range(200):
            store.session_changed(Slot(f"chat-{i}", f"s-{i}"), terminal=False)
            if i % 20 == 0:
                await anyio.lowlevel.checkpoint()
        await anyio.sleep(0.2)
        tg.cancel_scope.cancel()
    assert 1 <= store.writes <= 5
    assert len(StateStore(tmp_path / "state.json").load()) == 200


async def test_neither_guard_nor_store_lock_is_held_during_disk_io(tmp_path: Path) -> None:
    in_write = threading.Event()
    release = threading.Event()

    def slow_writer(path: Path, data: bytes) -> None:
        in_write.set()
        release.wait(10)  # a filesystem that hangs
        atomic_write(path, data)

    store = StateStore(tmp_path / "state.json", writer=slow_writer)
    store.load()
    async with SessionManager(fake_launcher(tmp_path), observer=store) as manager:
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.run)
            await manager.send("a", Prompt("hi"), Recorder())  # triggers a write
            await anyio.to_thread.run_sync(in_write.wait, 5)
            assert not release.is_set()

            def touch_everything() -> None:
                # from another thread, so a lock held by the writer would block here
                manager.get_status("a")
                manager.slots()
                store.session_changed(Slot("b", "s-b"), terminal=False)

            with anyio.fail_after(2):
                await anyio.to_thread.run_sync(touch_everything)
                rec = Recorder()
                # a whole turn (with its own state updates) completes during the stuck write
                assert await manager.send("a", Prompt("more"), rec) == TurnFinished(Outcome.DONE)
            release.set()
            await store.flush()
            tg.cancel_scope.cancel()
    assert set(StateStore(tmp_path / "state.json").load()) == {"a", "b"}


WRITER = """
import sys, time
from pathlib import Path
from evie.sessions.slot import Slot
from evie.state import StateStore
import anyio

async def main():
    store = StateStore(Path(sys.argv[1]), coalesce=0)
    store.load()
    i = 0
    while True:
        i += 1
        for k in range(50):
            slot = Slot(f"chat-{k}", f"s-{k}-{i}")
            slot.last_error = "x" * (i % 997)
            store.session_changed(slot, terminal=True)
        await store.write_now()

anyio.run(main)
"""


def test_the_state_file_survives_kill_9_during_heavy_writes(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    for round_ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env)
        try:
            deadline = time.monotonic() + 10
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.05 + (round_ % 4) * 0.03)  # land the kill at varying points
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        state = msgspec.json.decode(path.read_bytes(), type=StateFile)
        assert len(state.sessions) == 50
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) <= 1  # at most the temp file of the killed write
