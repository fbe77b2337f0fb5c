"""One JSON document on disk, changed in memory and made durable by group commit.

A change is applied to the in-memory document under a brief ``threading.Lock``
(no I/O under it). :meth:`DurableDoc.commit` returns once a write that includes
every change made before the call has reached the disk: serialising and the
atomic write (temp file, fsync, rename, directory fsync — :func:`evie.state.atomic_write`)
run in a worker thread, one at a time; callers that arrive while a write is in
flight share the next one, so a burst of changes costs one or two writes.
With ``path=None`` the document lives in memory only (tests, ``evie chat``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

import anyio
import anyio.to_thread
import msgspec

from evie.errors import StateError
from evie.state import atomic_write

D = TypeVar("D", bound=msgspec.Struct)


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
        self._write_lock = anyio.Lock()  # one write in flight (they share the temp file)
        self.writes = 0

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
        try:
            return msgspec.json.decode(raw, type=self._type)
        except (msgspec.MsgspecError, UnicodeDecodeError) as exc:
            backup = self.path.with_name(self.path.name + f".corrupt-{int(time.time())}")
            os.replace(self.path, backup)
            raise StateError(
                f"{self.path} is unreadable ({exc}). It was moved to {backup}; start evie "
                "again to begin with an empty queue, or restore a backup."
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
            path, writer = self.path, self._writer

            def write() -> None:
                writer(path, msgspec.json.encode(doc))

            await anyio.to_thread.run_sync(write)
            self.writes += 1
            self._written = max(self._written, generation)
