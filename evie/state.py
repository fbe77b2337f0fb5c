"""Durable state: which chat maps to which session, and how each last turn ended.

Rules (adr/0006): the manager hands over frozen :class:`SessionFacts` and says
what happened; each record is encoded once, when it changes, so a snapshot is a
copy of the encoded pieces taken under a brief lock, joined and written
*outside* it, in a worker thread, atomically (temp file, fsync, rename, fsync
of the directory), by one writer task. A turn start and a replaced session are
written at once; everything else (a turn's end, a notice shown) rides along
with the next write, or is written ``coalesce`` seconds later at the latest.
Shutdown always flushes. A corrupt file is never silently replaced: it is moved
aside and reported.
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
from evie.sessions.facts import Change, SessionFacts

log = logging.getLogger(__name__)

STATE_VERSION = 1

#: changes written at once; the others ride along with the next write (adr/0006)
URGENT = frozenset({Change.TURN_STARTED, Change.SESSION_REPLACED})


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
        coalesce: float = 5.0,
        writer: Callable[[Path, bytes], None] = atomic_write,
        starts_recorded_by: tuple[str, ...] = (),
    ) -> None:
        self.path = path
        #: session keys with these prefixes ("tg:") have each turn start recorded durably,
        #: before it begins, by the inbox (adr/0012), which also replaces this file's
        #: "interrupted" notice for them: their turn start rides along with the next write
        #: instead of costing one fsync'd write per turn (adr/0016)
        self._starts_recorded_by = starts_recorded_by
        self.metrics = metrics or Metrics()
        self._coalesce = coalesce
        self._writer = writer
        self._records: dict[str, SessionRecord] = {}
        self._encoded: dict[str, bytes] = {}  # key -> its encoded member, kept in step
        self._lock = threading.Lock()  # brief: dict updates and the snapshot copy only
        self._dirty = 0
        self._written = 0
        self._wake = anyio.Event()
        self._urgent = anyio.Event()
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
            self._records = {}
            self._encoded = {}
            for key, record in records.items():
                self._put(key, record)
        if any(r.notice for r in records.values()):
            self._mark_dirty(urgent=False)  # re-derived from the file if lost
        return records

    # -- updates (synchronous, from the event loop) -------------------------------------

    def session_changed(self, facts: SessionFacts, change: Change) -> None:
        """SessionObserver hook: record the facts; write at once only when ``change`` is urgent."""
        with self._lock:
            old = self._records.get(facts.key)
            keep_notice = old is not None and old.session_id == facts.session_id
            self._put(
                facts.key,
                SessionRecord(
                    session_id=facts.session_id,
                    running=facts.running,
                    last_outcome=facts.last_outcome.value if facts.last_outcome else None,
                    last_error=facts.last_error,
                    notice=old.notice if old is not None and keep_notice else None,
                    turns=facts.turns,
                    updated_at=time.time(),
                ),
            )
        recorded = change is Change.TURN_STARTED and facts.key.startswith(self._starts_recorded_by)
        self._mark_dirty(urgent=change in URGENT and not recorded)

    def take_notice(self, key: str) -> str | None:
        """The notice for this chat, once; the clearing rides along with the next write.

        It is taken just before a turn starts, so the turn start's write carries it.
        """
        with self._lock:
            record = self._records.get(key)
            if record is None or record.notice is None:
                return None
            self._put(key, msgspec.structs.replace(record, notice=None))
        self._mark_dirty(urgent=False)
        return record.notice

    def pending_notices(self) -> dict[str, str]:
        with self._lock:
            return {k: r.notice for k, r in self._records.items() if r.notice}

    def _put(self, key: str, record: SessionRecord) -> None:
        """Store a record and its encoding (under ``_lock``): a write only joins pieces."""
        self._records[key] = record
        self._encoded[key] = _encode_entry(key, record)

    def _mark_dirty(self, *, urgent: bool) -> None:
        self._dirty += 1
        if urgent:
            self._urgent.set()
        self._wake.set()

    # -- writing --------------------------------------------------------------------

    def _snapshot(self) -> list[bytes]:
        with self._lock:  # a shallow copy: the pieces are immutable bytes
            return list(self._encoded.values())

    async def write_now(self) -> None:
        """Snapshot under the lock; join and write outside it, in a worker thread."""
        async with self._write_lock:
            target = self._dirty
            pieces = self._snapshot()
            joined, written = await anyio.to_thread.run_sync(self._join_and_write, pieces)
            self.metrics.persist_serialise.observe(joined)
            self.metrics.persist_write.observe(written)
            self.writes += 1
            self._written = max(self._written, target)

    def _join_and_write(self, pieces: list[bytes]) -> tuple[float, float]:
        started = time.perf_counter()
        data = b"".join((_FILE_HEAD, b",".join(pieces), _FILE_TAIL))
        joined = time.perf_counter()
        self._writer(self.path, data)
        return joined - started, time.perf_counter() - joined

    async def run(self) -> None:
        """The writer task: urgent changes at once, the rest within ``coalesce`` seconds."""
        try:
            while True:
                await self._wake.wait()
                if self._coalesce and not self._urgent.is_set():
                    with anyio.move_on_after(self._coalesce):
                        await self._urgent.wait()  # an urgent change takes everything along
                self._wake = anyio.Event()
                self._urgent = anyio.Event()
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


_FILE_HEAD = b'{"version":' + str(STATE_VERSION).encode() + b',"sessions":{'
_FILE_TAIL = b"}}"
_encoder = msgspec.json.Encoder()


def _encode_entry(key: str, record: SessionRecord) -> bytes:
    """One ``"key":{record}`` member of the sessions object."""
    return _encoder.encode(key) + b":" + _encoder.encode(record)
