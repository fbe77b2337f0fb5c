"""The outbox: final replies and notices, on disk until the platform has them.

Entries are kept per chat in order; a courier per platform (:mod:`evie.chat.courier`)
delivers each chat's head entry, retrying through outages, and removes it once
delivered. Before the first attempt an entry is marked ``attempted`` (written
first): after a restart such an entry is sent again — a reply is never lost — and
counted as *uncertain*, because Telegram's ``sendMessage`` has no idempotency key
and cannot tell whether a send cut off by ``kill -9`` had arrived (adr/0012).

Each chat holds at most ``max_per_chat`` entries; when more arrive the oldest
undelivered ones are replaced by one "N messages were dropped" entry.

On disk each entry is its own file in ``outbox/`` (written with
:func:`evie.state.atomic_write`, removed with an unlink and a directory fsync), so
queueing a megabyte of replies and delivering them costs linear I/O, not a
rewrite of everything still queued at every step. Changes are recorded in memory
under a brief lock and applied by :meth:`Outbox.commit` in a worker thread.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import msgspec

from evie.state import atomic_write

OUTBOX_VERSION = 1
#: how long :meth:`Outbox.commit` waits for a fresh entry's first send before writing it
DIRECT_GRACE = 1.0


class OutboxEntry(msgspec.Struct, frozen=True):
    seq: int
    chat: str  # session key of the chat, e.g. "tg:42"
    text: str  # what to send (rendered when ``formatted``)
    formatted: bool
    created_at: float
    plain: str | None = None  # sent instead when the platform rejects the formatting
    edit_of: int | None = None  # a live preview message to turn into this reply
    attempted: bool = False  # a send may have reached the platform
    dropped: int = 0  # > 0: this entry stands for that many dropped ones
    document: str | None = None  # a file name: ``text`` is its content, ``plain`` its caption


def _entry_name(seq: int) -> str:
    return f"{seq:012d}.json"


class Outbox:
    def __init__(self, path: Path | None = None, *, max_per_chat: int = 1000) -> None:
        self.path = path  # a directory, one file per entry; None: in memory only
        self._lock = threading.Lock()  # brief: in-memory changes only
        self._ops: list[tuple[int, OutboxEntry | None]] = []  # (seq, entry to write | unlink)
        self._write_lock = anyio.Lock(fast_acquire=True)
        self.writes = 0
        self.max_per_chat = max(4, max_per_chat)
        self._chats: dict[str, list[OutboxEntry]] = {}
        self._next_seq = 1
        #: made by the first waiter of :meth:`changed` (settle, at a stop): a removal per
        #: reply would otherwise make a new event each time for nobody (adr/0016 §12)
        self._changed: anyio.Event | None = None
        self.uncertain = 0  # entries that may already have been delivered before a restart
        self.dropped = 0
        #: fresh entries that head their chat's queue while its platform's courier runs:
        #: sent before they are written; seq -> (chat, set once delivered or on disk)
        self._direct: dict[int, tuple[str, anyio.Event]] = {}
        self._couriers: set[str] = set()  # platforms whose courier runs
        #: platform -> its courier's "deliver this chat" (sync), told of each new entry
        #: at once instead of waking the courier's loop to look (adr/0016 §10)
        self._kicks: dict[str, Callable[[str], None]] = {}
        self.direct_sent = 0

    def load(self) -> None:
        """Read every entry file (in a thread, at start-up); unreadable ones are set aside."""
        if self.path is None:
            return
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        entries = []
        for file in sorted(self.path.iterdir()):
            if file.name.startswith("."):
                file.unlink(missing_ok=True)  # a write that was killed half-way
                continue
            try:
                entries.append(msgspec.json.decode(file.read_bytes(), type=OutboxEntry))
            except (msgspec.MsgspecError, UnicodeDecodeError, OSError):
                os.replace(file, file.with_name(file.name + ".corrupt"))
        entries.sort(key=lambda e: e.seq)
        with self._lock:
            self._chats = {}
            for entry in entries:
                self._chats.setdefault(entry.chat, []).append(entry)
                self.uncertain += entry.attempted
            self._next_seq = entries[-1].seq + 1 if entries else 1

    # -- producers ---------------------------------------------------------------------

    def put(
        self,
        chat: str,
        text: str,
        *,
        formatted: bool = False,
        plain: str | None = None,
        edit_of: int | None = None,
    ) -> OutboxEntry:
        """Queue a message for this chat (in memory; :meth:`commit` makes it durable).

        An entry that heads an empty queue while its platform's courier runs is sent
        at once and written only if that first attempt fails or takes longer than
        :data:`DIRECT_GRACE` (adr/0016): :meth:`commit` returns when it is delivered or
        on disk. Until then the turn that wrote it is not over — its inbox item stays
        ``started`` — so a ``kill -9`` in between costs an "interrupted" notice (for a
        reply that may have arrived), never a second copy. Such an entry is
        ``attempted`` from the start.
        """
        with self._lock:
            queue = self._chats.setdefault(chat, [])
            fresh = not queue
            entry = OutboxEntry(
                self._next_seq, chat, text, formatted, time.time(), plain=plain, edit_of=edit_of,
                attempted=fresh,
            )  # fmt: skip
            self._next_seq += 1
            queue.append(entry)
            if fresh and chat.split(":", 1)[0] in self._couriers:
                self._direct[entry.seq] = (chat, anyio.Event())
            else:
                self._ops.append((entry.seq, entry))
            if len(queue) > self.max_per_chat:
                self._drop_oldest(queue)
        self._announce(chat)
        return entry

    def put_document(self, chat: str, filename: str, content: str, caption: str) -> OutboxEntry:
        """Queue a file (a long reply as Markdown) after this chat's messages."""
        with self._lock:
            entry = OutboxEntry(
                self._next_seq, chat, content, False, time.time(), plain=caption, document=filename
            )
            self._next_seq += 1
            queue = self._chats.setdefault(chat, [])
            queue.append(entry)
            self._ops.append((entry.seq, entry))
            if len(queue) > self.max_per_chat:
                self._drop_oldest(queue)
        self._announce(chat)
        return entry

    def discard(self, chat: str, seqs: list[int]) -> list[int]:
        """Drop these entries of the chat unless a send of them is under way (``/stop``);
        returns the ones dropped (:meth:`commit` makes it durable)."""
        wanted = set(seqs)
        with self._lock:
            queue = self._chats.get(chat, [])
            gone = [e.seq for e in queue if e.seq in wanted and not e.attempted and not e.dropped]
            if gone:
                keep = set(gone)
                queue[:] = [e for e in queue if e.seq not in keep]
                if not queue:
                    self._chats.pop(chat, None)
                self._ops.extend((seq, None) for seq in gone)
        if gone:
            self._wake()
        return gone

    def _drop_oldest(self, queue: list[OutboxEntry]) -> None:
        """Fold the oldest droppable entry into a "dropped" marker (lock held)."""
        first = 1 if queue[0].attempted else 0  # an entry being sent stays
        if queue[first].dropped:  # a marker is there already: fold the next one into it
            marker, victim = queue[first], queue[first + 1]
            queue[first] = msgspec.structs.replace(marker, dropped=marker.dropped + 1)
            del queue[first + 1]
            self._ops.append((victim.seq, None))
            self.dropped += 1
        else:  # the marker takes the oldest entry's place and stands for it and the next
            victim = queue[first + 1]
            queue[first] = msgspec.structs.replace(queue[first], dropped=2, edit_of=None)
            del queue[first + 1]
            self._ops.append((victim.seq, None))
            self.dropped += 2
        self._ops.append((queue[first].seq, queue[first]))

    # -- the courier ---------------------------------------------------------------------

    def chats(self, platform: str) -> list[str]:
        prefix = platform + ":"
        with self._lock:
            return [
                chat for chat, queue in self._chats.items() if queue and chat.startswith(prefix)
            ]

    def head(self, chat: str) -> OutboxEntry | None:
        with self._lock:
            queue = self._chats.get(chat)
            return queue[0] if queue else None

    def backlog(self, chat: str) -> int:
        with self._lock:
            return len(self._chats.get(chat, ()))

    def __len__(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._chats.values())

    def mark_attempted(self, entry: OutboxEntry) -> None:
        self._replace(entry, attempted=True)

    def use_plain(self, entry: OutboxEntry) -> None:
        """The platform rejected the formatting: from now on this entry is plain text."""
        self._replace(entry, text=entry.plain or entry.text, formatted=False, plain=None)

    def _replace(self, entry: OutboxEntry, **changes: object) -> None:
        with self._lock:
            queue = self._chats.get(entry.chat, [])
            for i, current in enumerate(queue):
                if current.seq == entry.seq:
                    queue[i] = msgspec.structs.replace(current, **changes)
                    self._ops.append((entry.seq, queue[i]))
                    return

    def remove(self, entry: OutboxEntry) -> None:
        with self._lock:
            queue = self._chats.get(entry.chat)
            if queue is None:
                return
            direct = self._direct.pop(entry.seq, None)
            # an entry sent before it was written has no file (unless a change of it is
            # about to be written: then that write is cancelled by the removal below)
            on_disk = direct is None or any(seq == entry.seq for seq, _ in self._ops)
            for i, current in enumerate(queue):
                if current.seq == entry.seq:
                    if self.path is not None and on_disk:
                        # At once, not at the next commit: one unlink survives kill -9 (the
                        # page cache outlives the process) and closes the window in which a
                        # delivered reply would be sent again after a restart. The directory
                        # fsync, for power loss, follows in the commit, off the loop.
                        (self.path / _entry_name(entry.seq)).unlink(missing_ok=True)
                    del queue[i]  # almost always the head: cheap
                    if not queue:
                        del self._chats[entry.chat]
                    if on_disk:
                        self._ops.append((entry.seq, None))
                    else:
                        self.direct_sent += 1
                    break
        if direct is not None:
            direct[1].set()
        self._wake()

    # -- fresh entries sent before they are written (adr/0016) ----------------------------

    def courier_running(
        self, platform: str, running: bool, kick: Callable[[str], None] | None = None
    ) -> None:
        """A platform's courier starts or stops; at a stop its unsent fresh entries are
        queued for writing (:meth:`flush` them). ``kick(chat)``: called (synchronously)
        for each new entry of this platform, in place of a wake-up of :meth:`changed`."""
        if running:
            self._couriers.add(platform)
            if kick is not None:
                self._kicks[platform] = kick
            return
        self._couriers.discard(platform)
        self._kicks.pop(platform, None)
        self.persist_direct(platform)

    def _announce(self, chat: str) -> None:
        """A new entry for ``chat``: tell its platform's courier, else wake the waiters."""
        kick = self._kicks.get(chat.split(":", 1)[0]) if self._kicks else None
        if kick is None:
            self._wake()
        else:
            kick(chat)

    def is_direct(self, entry: OutboxEntry) -> bool:
        with self._lock:
            return entry.seq in self._direct

    def persist_direct(self, platform: str | None = None, seq: int | None = None) -> None:
        """Queue fresh entries not yet delivered for writing: this one, or this platform's,
        or all; :meth:`flush` writes them (and marks them resolved)."""
        with self._lock:
            for number, (chat, _event) in self._direct.items():
                if seq is not None and number != seq:
                    continue
                if platform is not None and not chat.startswith(platform + ":"):
                    continue
                current = next((e for e in self._chats.get(chat, ()) if e.seq == number), None)
                if current is not None:
                    self._ops.append((number, current))

    async def changed(self) -> None:
        """Wait for the next put or removal."""
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    async def commit(self) -> None:
        """Return once every change made before this call is on disk, or — for a fresh
        entry the courier sends at once — delivered (bounded by :data:`DIRECT_GRACE`,
        then it is written)."""
        with self._lock:
            waiting = [event for _chat, event in self._direct.values()]
        await self.flush()
        if not waiting:
            return
        with anyio.move_on_after(DIRECT_GRACE):
            for event in waiting:
                await event.wait()
        if not all(event.is_set() for event in waiting):
            self.persist_direct()
            await self.flush()

    async def flush(self) -> None:
        """Write every change made before this call (fresh entries being sent excepted)."""
        if not self._ops and not self._write_lock.locked():
            return  # nothing to write, and no write in flight that might hold a change
        async with self._write_lock:
            with self._lock:
                ops, self._ops = self._ops, []
            if self.path is not None and ops:
                await anyio.to_thread.run_sync(_apply, self.path, ops)
                self.writes += len(ops)
            resolved = []
            with self._lock:
                for seq, entry in ops:
                    direct = self._direct.pop(seq, None) if entry is not None else None
                    if direct is not None:
                        resolved.append(direct[1])
            for event in resolved:
                event.set()


def _apply(directory: Path, ops: list[tuple[int, OutboxEntry | None]]) -> None:
    """Write or remove entry files, in order (a worker thread)."""
    last: dict[int, OutboxEntry | None] = {}
    for seq, entry in ops:  # only the last change of each entry matters
        last.pop(seq, None)
        last[seq] = entry
    unlinked = wrote = False
    for seq, entry in last.items():  # removals first: a later write's directory fsync
        if entry is None:  # covers them
            (directory / _entry_name(seq)).unlink(missing_ok=True)
            unlinked = True
    for seq, entry in last.items():
        if entry is not None:
            atomic_write(directory / _entry_name(seq), msgspec.json.encode(entry))
            wrote = True
    if unlinked and not wrote:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
