"""Durable state: atomic writes, coalescing, urgent writes, corruption, interrupted turns,
lock discipline."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread
import msgspec
import pytest

from evie.agent.events import Notice, Outcome, Prompt, TurnFinished
from evie.errors import StateError
from evie.sessions.facts import Change, SessionFacts
from evie.sessions.manager import SessionManager
from evie.state import (
    INTERRUPTED_NOTICE,
    URGENT,
    SessionRecord,
    StateFile,
    StateStore,
    atomic_write,
)
from tests.conftest import Recorder, fake_launcher, script

pytestmark = pytest.mark.anyio


def facts(key: str, session_id: str, **kw: object) -> SessionFacts:
    # (kw: any of SessionFacts' other fields, each of its own type; attrs checks the names)
    return SessionFacts(key=key, session_id=session_id, running=False, **kw)  # type: ignore[arg-type]


class CountingWriter:
    """The real atomic write, counted; each write's content is kept for inspection."""

    def __init__(self) -> None:
        self.files: list[StateFile] = []

    def __call__(self, path: Path, data: bytes) -> None:
        atomic_write(path, data)
        self.files.append(msgspec.json.decode(data, type=StateFile))

    @property
    def count(self) -> int:
        return len(self.files)


async def test_records_round_trip_with_private_permissions(tmp_path: Path) -> None:
    path = tmp_path / "state" / "state.json"
    store = StateStore(path)
    store.load()
    store.session_changed(
        facts("tg:42", "s-1", last_outcome=Outcome.DONE, turns=3), Change.TURN_ENDED
    )
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
    store.session_changed(SessionFacts("chat", "sess-1", running=True), Change.TURN_STARTED)
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
            store.session_changed(facts(f"chat-{i}", f"s-{i}"), Change.TURN_ENDED)
            if i % 20 == 0:
                await anyio.lowlevel.checkpoint()
        await anyio.sleep(0.2)
        tg.cancel_scope.cancel()
    assert 1 <= store.writes <= 5
    assert len(StateStore(tmp_path / "state.json").load()) == 200


async def wait_until(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    with anyio.fail_after(seconds):
        while not predicate():
            await anyio.sleep(0.005)


async def test_urgent_changes_are_written_at_once_and_the_rest_ride_along(tmp_path: Path) -> None:
    writer = CountingWriter()
    store = StateStore(tmp_path / "state.json", coalesce=60, writer=writer)
    store.load()
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.run)
        store.session_changed(SessionFacts("a", "s-a", running=True), Change.TURN_STARTED)
        await wait_until(lambda: writer.count == 1)  # not after the 60 s window
        assert writer.files[0].sessions["a"].running
        store.session_changed(SessionFacts("b", "s-b", running=False), Change.SESSION_REPLACED)
        await wait_until(lambda: writer.count == 2)
        # endings wake the writer, but it waits for company (up to 60 s) ...
        for i in range(50):
            store.session_changed(facts(f"c-{i}", f"s-{i}", turns=1), Change.TURN_ENDED)
            await anyio.lowlevel.checkpoint()
        store.session_changed(
            facts("a", "s-a", turns=1, last_outcome=Outcome.DONE), Change.TURN_ENDED
        )
        # ... and the next urgent change takes all of them along in one write
        store.session_changed(SessionFacts("z", "s-z", running=True), Change.TURN_STARTED)
        await wait_until(lambda: writer.count == 3)
        last = writer.files[2].sessions
        assert len(last) == 53
        assert last["a"] == SessionRecord(
            session_id="s-a", last_outcome="done", turns=1, updated_at=last["a"].updated_at
        )
        store.session_changed(facts("z", "s-z", turns=1), Change.TURN_ENDED)
        tg.cancel_scope.cancel()  # shutdown: the writer flushes what is pending
    assert writer.count == 4
    assert not StateStore(tmp_path / "state.json").load()["z"].running


async def test_one_write_per_turn_when_turns_follow_each_other(tmp_path: Path) -> None:
    """The start of each turn is on disk while it runs; its end rides with the next start."""
    writer = CountingWriter()
    store = StateStore(tmp_path / "state.json", coalesce=60, writer=writer)
    store.load()
    gate = tmp_path / "gate"
    async with SessionManager(fake_launcher(tmp_path), observer=store) as manager:
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.run)
            async with anyio.create_task_group() as turn:
                turn.start_soon(manager.send, "a", script({"wait_file": str(gate)}), Recorder())
                await wait_until(lambda: writer.count == 1)
                on_disk = msgspec.json.decode(store.path.read_bytes(), type=StateFile)
                assert on_disk.sessions["a"].running  # on disk while the turn runs
                gate.touch()
            turns = 6
            for n in range(2, turns + 1):
                assert await manager.send("a", Prompt(f"hi {n}"), Recorder()) == TurnFinished(
                    Outcome.DONE
                )

                def written(n: int = n) -> bool:
                    return writer.count >= n

                await wait_until(written)
                assert writer.count == n  # the previous turn's end did not cost a write
                assert writer.files[-1].sessions["a"].running
                assert writer.files[-1].sessions["a"].turns == n - 1  # ... it rode along
            tg.cancel_scope.cancel()
    assert writer.count == turns + 1  # the last end, flushed at shutdown
    assert writer.files[-1].sessions["a"].turns == turns
    assert not writer.files[-1].sessions["a"].running


async def test_chaos_every_urgent_change_is_written_promptly_and_the_last_facts_win(
    tmp_path: Path,
) -> None:
    rng = random.Random(11)
    files: list[StateFile] = []

    def slow_writer(path: Path, data: bytes) -> None:
        time.sleep(rng.random() * 0.003)  # one write at a time, so one thread uses rng here
        atomic_write(path, data)
        files.append(msgspec.json.decode(data, type=StateFile))

    store = StateStore(tmp_path / "state.json", coalesce=60, writer=slow_writer)
    store.load()
    expected: dict[str, int] = {}
    urgent = 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.run)
        for seq in range(150):
            key = f"chat-{rng.randrange(10)}"
            change = rng.choice(list(Change))
            running = change is Change.TURN_STARTED
            store.session_changed(SessionFacts(key, f"s-{seq}", running, turns=seq), change)
            expected[key] = seq
            if change in URGENT:
                urgent += 1
                # on disk without waiting for the 60 s window
                await wait_until(
                    lambda: any(key in f.sessions and f.sessions[key].turns >= seq for f in files),  # noqa: B023
                )
            elif rng.random() < 0.3:
                await anyio.sleep(rng.random() * 0.002)
        writes_before_shutdown = len(files)
        tg.cancel_scope.cancel()
    assert urgent > 20
    assert writes_before_shutdown <= urgent  # the other changes never caused a write
    assert {k: r.turns for k, r in files[-1].sessions.items()} == expected


async def test_a_file_joined_from_pieces_is_the_file_msgspec_would_write(tmp_path: Path) -> None:
    rng = random.Random(14)
    alphabet = 'ab"\\\u2028\u2029\x00\n é😀/:'
    path = tmp_path / "state.json"
    store = StateStore(path, coalesce=0)
    store.load()
    expected: dict[str, SessionFacts] = {}
    for _ in range(300):
        key = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 8)))
        error = rng.choice([None, "".join(rng.choice(alphabet) for _ in range(20))])
        outcome = rng.choice([None, *Outcome])
        change = rng.choice(list(Change))
        expected[key] = SessionFacts(
            key, f"s-{rng.randrange(99)}", rng.random() < 0.5, outcome, error, rng.randrange(9)
        )
        store.session_changed(expected[key], change)
    await store.write_now()
    state = msgspec.json.decode(path.read_bytes(), type=StateFile)
    assert state.version == 1
    assert {
        k: (r.session_id, r.running, r.last_outcome, r.last_error, r.turns)
        for k, r in state.sessions.items()
    } == {
        k: (f.session_id, f.running, f.last_outcome.value if f.last_outcome else None,
            f.last_error, f.turns)
        for k, f in expected.items()
    }  # fmt: skip


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
                store.session_changed(facts("b", "s-b"), Change.TURN_ENDED)

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
from evie.sessions.facts import Change, SessionFacts
from evie.state import StateStore
import anyio

async def main():
    store = StateStore(Path(sys.argv[1]), coalesce=0)
    store.load()
    i = 0
    while True:
        i += 1
        for k in range(50):
            error = "x" * (i % 997)
            facts = SessionFacts(f"chat-{k}", f"s-{k}-{i}", running=True, last_error=error)
            store.session_changed(facts, Change.TURN_STARTED)
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
