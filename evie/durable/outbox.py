"""The outbox: final replies and notices, on disk until the platform has them.

Entries are kept per chat in order; a courier per platform (:mod:`evie.chat.courier`)
delivers each chat's head entry, retrying through outages, and removes it once
delivered. Before the first attempt an entry is marked ``attempted`` (written
first): after a restart such an entry is sent again — a reply is never lost — and
counted as *uncertain*, because Telegram's ``sendMessage`` has no idempotency key
and cannot tell whether a send cut off by ``kill -9`` had arrived (adr/0012).

Each chat holds at most ``max_per_chat`` entries; when more arrive the oldest
undelivered ones are replaced by one "N messages were dropped" entry.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import msgspec

from evie.durable.store import DurableDoc

OUTBOX_VERSION = 1


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


class OutboxFile(msgspec.Struct):
    version: int = OUTBOX_VERSION
    next_seq: int = 1
    entries: list[OutboxEntry] = msgspec.field(default_factory=list)


class Outbox:
    def __init__(self, path: Path | None = None, *, max_per_chat: int = 200) -> None:
        self._doc: DurableDoc[OutboxFile] = DurableDoc(path, OutboxFile, OutboxFile)
        self.max_per_chat = max(4, max_per_chat)
        self._chats: dict[str, list[OutboxEntry]] = {}
        self._next_seq = 1
        self._changed = anyio.Event()
        self.uncertain = 0  # entries that may already have been delivered before a restart
        self.dropped = 0

    @property
    def writes(self) -> int:
        return self._doc.writes

    def load(self) -> None:
        doc = self._doc.read()
        with self._doc.lock:
            self._next_seq = doc.next_seq
            self._chats = {}
            for entry in doc.entries:
                self._chats.setdefault(entry.chat, []).append(entry)
                self.uncertain += entry.attempted

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
        """Queue a message for this chat (in memory; :meth:`commit` makes it durable)."""
        with self._doc.lock:
            entry = OutboxEntry(
                self._next_seq, chat, text, formatted, time.time(), plain=plain, edit_of=edit_of
            )
            self._next_seq += 1
            queue = self._chats.setdefault(chat, [])
            queue.append(entry)
            if len(queue) > self.max_per_chat:
                self._drop_oldest(queue)
            self._doc.changed()
        self._wake()
        return entry

    def _drop_oldest(self, queue: list[OutboxEntry]) -> None:
        """Fold the oldest droppable entry into a "dropped" marker (lock held)."""
        first = 1 if queue[0].attempted else 0  # an entry being sent stays
        if queue[first].dropped:  # a marker is there already: fold the next one into it
            marker, victim = queue[first], queue[first + 1]
            queue[first] = msgspec.structs.replace(marker, dropped=marker.dropped + 1)
            del queue[first + 1]
        else:
            victim = queue[first]
            queue[first] = msgspec.structs.replace(victim, dropped=1, edit_of=None, plain=None)
        self.dropped += 1
        del victim

    # -- the courier ---------------------------------------------------------------------

    def chats(self, platform: str) -> list[str]:
        prefix = platform + ":"
        with self._doc.lock:
            return [
                chat for chat, queue in self._chats.items() if queue and chat.startswith(prefix)
            ]

    def head(self, chat: str) -> OutboxEntry | None:
        with self._doc.lock:
            queue = self._chats.get(chat)
            return queue[0] if queue else None

    def backlog(self, chat: str) -> int:
        with self._doc.lock:
            return len(self._chats.get(chat, ()))

    def __len__(self) -> int:
        with self._doc.lock:
            return sum(len(q) for q in self._chats.values())

    def mark_attempted(self, entry: OutboxEntry) -> None:
        self._replace(entry, attempted=True)

    def use_plain(self, entry: OutboxEntry) -> None:
        """The platform rejected the formatting: from now on this entry is plain text."""
        self._replace(entry, text=entry.plain or entry.text, formatted=False, plain=None)

    def _replace(self, entry: OutboxEntry, **changes: object) -> None:
        with self._doc.lock:
            queue = self._chats.get(entry.chat, [])
            for i, current in enumerate(queue):
                if current.seq == entry.seq:
                    queue[i] = msgspec.structs.replace(current, **changes)
                    self._doc.changed()
                    return

    def remove(self, entry: OutboxEntry) -> None:
        with self._doc.lock:
            queue = self._chats.get(entry.chat)
            if queue is None:
                return
            kept = [e for e in queue if e.seq != entry.seq]
            if len(kept) != len(queue):
                if kept:
                    self._chats[entry.chat] = kept
                else:
                    del self._chats[entry.chat]
                self._doc.changed()
        self._wake()

    async def changed(self) -> None:
        """Wait for the next put or removal."""
        await self._changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def commit(self) -> None:
        await self._doc.commit(self._snapshot)

    def _snapshot(self) -> OutboxFile:  # called under the lock
        entries = [e for queue in self._chats.values() for e in queue]
        return OutboxFile(next_seq=self._next_seq, entries=entries)
