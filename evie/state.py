"""Durable state: which chat maps to which session, and how each last turn ended.

Rules (adr/0006): the snapshot is taken under a brief lock (a dict copy), then
serialised and written *outside* it, atomically (temp file, fsync, rename,
fsync of the directory), by one writer task. Bursts of changes coalesce into
one write; terminal transitions and shutdown are written at once. A corrupt
file is never silently replaced: it is moved aside and reported.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import msgspec

from evie.agent.events import Outcome
from evie.errors import StateError
from evie.metrics import Metrics
from evie.sessions.slot import Slot, SlotState

log = logging.getLogger(__name__)

STATE_VERSION = 1


class SessionRecord(msgspec.Struct, frozen=True):
    session_id: str
    running: bool = False  # a turn was in flight when this was written
    last_outcome: str | None = None
    last_error: str | None = None
    notice: str | None = None  # to tell the user once, on their next message
    turns: int = 0
    updated_at: float = 0.0


class StateFile(msgspec.Struct):
    version: int
    sessions: dict[str, SessionRecord]


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


INTERRUPTED_NOTICE = (
    "evie was stopped while your last message was being worked on; that turn was "
    "interrupted. The conversation so far is kept — send the message again if needed."
)


class StateStore:
    """Keeps the records, and writes them from :meth:`run` (a task you own)."""

    def __init__(
        self,
        path: Path,
        *,
        metrics: Metrics | None = None,
        coalesce: float = 0.05,
        writer: Callable[[Path, bytes], None] = atomic_write,
    ) -> None:
        self.path = path
        self.metrics = metrics or Metrics()
        self._coalesce = coalesce
        self._writer = writer
        self._records: dict[str, SessionRecord] = {}
        self._lock = threading.Lock()  # brief: dict updates and the snapshot copy only
        self._dirty = 0
        self._written = 0
        self._wake = anyio.Event()
        self._urgent = False
        self._write_lock = anyio.Lock()  # one writer at a time: they share the temp file
        self.writes = 0

    # -- loading (at start-up, before the loop serves anyone) -----------------------------

    def load(self) -> dict[str, SessionRecord]:
        """Read the file; turns recorded as running become interrupted (with a notice)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path.parent, 0o700)
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            stale.unlink(missing_ok=True)  # a write that was killed half-way
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            state = msgspec.json.decode(raw, type=StateFile)
            if state.version != STATE_VERSION:
                raise StateError(f"unsupported state version {state.version}")
        except (msgspec.MsgspecError, UnicodeDecodeError, StateError) as exc:
            backup = self.path.with_name(self.path.name + f".corrupt-{int(time.time())}")
            os.replace(self.path, backup)
            raise StateError(
                f"the state file {self.path} is unreadable ({exc}). It was moved to {backup}; "
                "start evie again to begin with no remembered sessions, or restore a backup."
            ) from None
        records = {}
        for key, record in state.sessions.items():
            if record.running:
                record = msgspec.structs.replace(
                    record,
                    running=False,
                    last_outcome=Outcome.INTERRUPTED.value,
                    last_error="evie stopped during the turn",
                    notice=INTERRUPTED_NOTICE,
                )
            records[key] = record
        with self._lock:
            self._records = dict(records)
        if any(r.notice for r in records.values()):
            self._mark_dirty(urgent=True)
        return records

    # -- updates (synchronous, from the event loop) -------------------------------------

    def session_changed(self, slot: Slot, *, terminal: bool) -> None:
        """SessionObserver hook: record the slot's current facts."""
        old = self._records.get(slot.key)
        record = SessionRecord(
            session_id=slot.session_id,
            running=slot.state in (SlotState.STARTING, SlotState.RUNNING) and slot.turn is not None,
            last_outcome=slot.last_outcome.value if slot.last_outcome else None,
            last_error=slot.last_error,
            notice=old.notice if old is not None and old.session_id == slot.session_id else None,
            turns=slot.turns,
            updated_at=time.time(),
        )
        with self._lock:
            self._records[slot.key] = record
        self._mark_dirty(urgent=terminal)

    def take_notice(self, key: str) -> str | None:
        """The notice for this chat, once: it is cleared (and the clearing persisted)."""
        with self._lock:
            record = self._records.get(key)
            if record is None or record.notice is None:
                return None
            self._records[key] = msgspec.structs.replace(record, notice=None)
        self._mark_dirty(urgent=True)
        return record.notice

    def pending_notices(self) -> dict[str, str]:
        with self._lock:
            return {k: r.notice for k, r in self._records.items() if r.notice}

    def _mark_dirty(self, *, urgent: bool) -> None:
        self._dirty += 1
        self._urgent = self._urgent or urgent
        self._wake.set()

    # -- writing --------------------------------------------------------------------

    def _snapshot(self) -> StateFile:
        with self._lock:  # a shallow copy: records are immutable
            return StateFile(version=STATE_VERSION, sessions=dict(self._records))

    async def write_now(self) -> None:
        """Snapshot under the lock; serialise and write outside it, in a thread."""
        async with self._write_lock:
            target = self._dirty
            snapshot = self._snapshot()
            started = time.perf_counter()
            data = msgspec.json.encode(snapshot)
            serialised = time.perf_counter()
            await anyio.to_thread.run_sync(self._writer, self.path, data)
            self.metrics.persist_serialise.observe(serialised - started)
            self.metrics.persist_write.observe(time.perf_counter() - serialised)
            self.writes += 1
            self._written = max(self._written, target)

    async def run(self) -> None:
        """The writer task: coalesces bursts, writes terminal changes at once."""
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                if not self._urgent and self._coalesce:
                    await anyio.sleep(self._coalesce)
                self._urgent = False
                if self._dirty != self._written:
                    try:
                        await self.write_now()
                    except OSError as exc:
                        log.error("could not write state file %s: %s", self.path, exc)
                        await anyio.sleep(1.0)
                        self._mark_dirty(urgent=False)
        finally:
            with anyio.CancelScope(shield=True):
                await self.flush()

    async def flush(self) -> None:
        """Write whatever is not on disk yet (always called at shutdown)."""
        if self._dirty != self._written:
            await self.write_now()
