"""One JSON document on disk, changed in memory and made durable by group commit.

A change is applied to the in-memory document under a brief ``threading.Lock``
(no I/O under it). :meth:`DurableDoc.commit` returns once a write that includes
every change made before the call has reached the disk: serialising and the
write run in a worker thread, one at a time; callers that arrive while a write
is in flight share the next one, so a burst of changes costs one or two writes.
With ``path=None`` the document lives in memory only (tests, ``evie chat``).

The file is a journal of whole snapshots, one JSON line each; the last complete
line is the document. A commit appends its line and ``fdatasync``\\ s it: one flush,
where replacing the file (temp file, fsync, rename, directory fsync —
:func:`evie.state.atomic_write`) costs two and a rename; on this kind of machine
that was 3-7x the time, on the path of every message (adr/0016). The journal is
compacted by exactly such a replacement — its newest line alone — when it has
grown to many times the size of one snapshot, and at the first commit after a
start (which also leaves behind a line a ``kill -9`` cut short: appending after
it would hide the next line). A line that does not decode (cut short) is ignored;
a file with no line that decodes is moved aside and reported.

The write runs in this module's own worker threads (:func:`_in_writer_thread`), not
through ``anyio.to_thread``: the journal write is on the path of every message, and
anyio's general machinery (a capacity limiter, a cancel scope of its own, a worker
queue per call) cost the loop ~130 µs per write against ~55 µs (adr/0016 §10).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Generic, TypeVar

import anyio
import msgspec

from evie.errors import StateError
from evie.state import atomic_write

D = TypeVar("D", bound=msgspec.Struct)
A = TypeVar("A")
COMPACT_BYTES = 256 * 1024  # the journal is rewritten beyond this (or 16 snapshots)
#: the threads that write journals (each document writes one snapshot at a time)
_WRITERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="evie-journal")


async def _in_writer_thread(write: Callable[[A], None], arg: A) -> None:
    """Run ``write(arg)`` in a journal thread; like ``anyio.to_thread.run_sync``, a
    cancellation waits for it to finish (the caller's bookkeeping must see the write).

    The thread hands the outcome to the loop itself (one ``call_soon_threadsafe``):
    ``run_in_executor`` chains a concurrent future to an asyncio one through two
    callbacks more, ~25 µs of the loop's CPU per write (adr/0016 §12)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def run() -> None:
        try:
            write(arg)
        except BaseException as exc:  # handed to the awaiting task, raised there
            loop.call_soon_threadsafe(_settle, done, exc)
        else:
            loop.call_soon_threadsafe(_settle, done, None)

    _WRITERS.submit(run)
    with anyio.CancelScope(shield=True):
        await done


def _settle(done: asyncio.Future[None], exc: BaseException | None) -> None:
    if not done.done():
        if exc is None:
            done.set_result(None)
        else:
            done.set_exception(exc)


class DurableDoc(Generic[D]):
    def __init__(
        self,
        path: Path | None,
        doc_type: type[D],
        empty: Callable[[], D],
        *,
        writer: Callable[[Path, bytes], None] = atomic_write,
    ) -> None:
        self.path = path
        self._type = doc_type
        self._empty = empty
        self._writer = writer
        self.lock = threading.Lock()  # brief: in-memory changes and the snapshot only
        self._changes = 0
        self._written = 0
        self._write_lock = anyio.Lock(fast_acquire=True)  # one write in flight (shared temp file)
        self.writes = 0
        self.compactions = 0
        self._fd: int | None = None  # the journal, open for appending after a compaction
        self._size = 0  # bytes in the journal

    def read(self) -> D:
        """Load the document (at start-up, in a thread); a corrupt file is moved aside."""
        if self.path is None:
            return self._empty()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            stale.unlink(missing_ok=True)  # a write that was killed half-way
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return self._empty()
        error: Exception | None = None
        for line in reversed(raw.split(b"\n")):
            if not line.strip():
                continue
            try:
                return msgspec.json.decode(line, type=self._type)
            except (msgspec.MsgspecError, UnicodeDecodeError) as exc:
                error = exc  # a line cut short: the one before it is the document
        backup = self.path.with_name(self.path.name + f".corrupt-{int(time.time())}")
        os.replace(self.path, backup)
        raise StateError(
            f"{self.path} is unreadable ({error or 'empty'}). It was moved "
            f"to {backup}; start evie again to begin with an empty queue, or restore a backup."
        ) from None

    def changed(self) -> None:
        """Count a change made under :attr:`lock` (call it while holding the lock)."""
        self._changes += 1

    @property
    def dirty(self) -> bool:
        return self._changes != self._written

    async def commit(self, snapshot: Callable[[], D]) -> None:
        """Return once every change made before this call is on disk."""
        target = self._changes
        if self.path is None or self._written >= target:
            self._written = max(self._written, target)
            return
        async with self._write_lock:
            if self._written >= target:
                return  # a write that started after our change covered it
            with self.lock:
                generation = self._changes
                doc = snapshot()
            await _in_writer_thread(self._write, doc)
            self.writes += 1
            self._written = max(self._written, generation)

    def _write(self, doc: D) -> None:
        """Append the snapshot to the journal and flush it, or compact (a worker thread)."""
        assert self.path is not None
        line = msgspec.json.encode(doc) + b"\n"
        if self._fd is None or self._size + len(line) > max(COMPACT_BYTES, 16 * len(line)):
            self._writer(self.path, line)  # the newest line alone, replacing the journal
            self.compactions += 1
            self.close()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            self._size = len(line)
            return
        view = memoryview(line)
        while view:
            view = view[os.write(self._fd, view) :]
        os.fdatasync(self._fd)
        self._size += len(line)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
