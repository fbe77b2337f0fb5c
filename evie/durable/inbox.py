"""The inbox: every accepted message is on disk before its platform offset moves on.

Life of an item (adr/0012)::

    pending ──(turn about to start: written first)──▶ started ──(turn over)──▶ gone
       │
       └──(queued into the running turn)──▶ queued ──(pi starts it)──▶ started

* ``pending`` and ``queued`` items run again, in order, after a restart (pi's own
  queue died with it);
* ``started`` is written *before* the prompt reaches pi, so a message whose turn may
  have begun is never run twice: after a restart its chat is told instead;
* the platform cursors (the Telegram update offset, the last Discord message id
  per channel) and the recent message ids per chat (de-duplication) are in the
  same document, so one atomic write records "these messages are ours, and the
  platform may forget them".

An item leaves at once: its sequence number is appended to ``<name>.done`` with one
``write`` (no fsync) on the event loop — it survives ``kill -9``, as the page cache
outlives the process — so a message whose answer is already in the outbox is not
reported as interrupted after a restart. The next document write covers it, and the
log is emptied when it has grown and no removal came in meanwhile.
"""

from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path

import msgspec

from evie.durable.store import DurableDoc

INBOX_VERSION = 1
SEEN_PER_CHAT = 128  # message ids remembered per chat for de-duplication
DONE_LOG_LINES = 256  # the done log is emptied once it holds this many covered removals

PENDING = "pending"
QUEUED = "queued"
STARTED = "started"


class InboxItem(msgspec.Struct, frozen=True):
    seq: int
    chat: str  # the chat's session key, e.g. "tg:42"
    user_id: int
    message_id: int | None
    text: str
    received_at: float
    state: str = PENDING


class InboxFile(msgspec.Struct):
    version: int = INBOX_VERSION
    next_seq: int = 1
    items: list[InboxItem] = msgspec.field(default_factory=list)
    cursors: dict[str, int] = msgspec.field(default_factory=dict)
    seen: dict[str, list[int]] = msgspec.field(default_factory=dict)


class Inbox:
    def __init__(self, path: Path | None = None) -> None:
        self._doc: DurableDoc[InboxFile] = DurableDoc(path, InboxFile, InboxFile)
        self._items: dict[int, InboxItem] = {}  # insertion order is arrival order
        self._cursors: dict[str, int] = {}
        self._seen: dict[str, deque[int]] = {}
        self._next_seq = 1
        self.interrupted: list[InboxItem] = []  # started before the last stop: tell, never rerun
        self.existed = False  # a file was there at load (not a first start or an upgrade)
        self._done_path = path.with_name(path.name + ".done") if path is not None else None
        self._done_fd: int | None = None
        self._removals = 0  # removals logged to the .done file since it was last emptied

    @property
    def writes(self) -> int:
        return self._doc.writes

    # -- start-up ---------------------------------------------------------------------

    def load(self) -> None:
        """Read the file (in a thread, before intake). ``queued`` items become pending."""
        self.existed = self._doc.path is not None and self._doc.path.exists()
        doc = self._doc.read()
        done: set[int] = set()
        if self._done_path is not None:
            try:
                raw = self._done_path.read_bytes()
            except FileNotFoundError:
                raw = b""
            done = {int(x) for x in raw.split() if x.isdigit()}
            self._done_fd = os.open(self._done_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._removals = len(done)
        doc.items = [item for item in doc.items if item.seq not in done]
        with self._doc.lock:
            if done:
                self._doc.changed()  # the next write drops them from the document too
            # never reuse a number of the done log: an item handled before its intake write
            # (an empty message) is logged there while the document may not hold it yet
            self._next_seq = max(doc.next_seq, max(done, default=0) + 1)
            self._cursors = dict(doc.cursors)
            self._seen = {k: deque(v, maxlen=SEEN_PER_CHAT) for k, v in doc.seen.items()}
            self._items = {}
            for item in doc.items:
                if item.state == STARTED:
                    self.interrupted.append(item)
                else:
                    self._items[item.seq] = msgspec.structs.replace(item, state=PENDING)

    def forget_interrupted(self) -> None:
        """The interrupted items' chats have been told (durably): drop them on the next commit."""
        with self._doc.lock:
            self.interrupted = []
            self._doc.changed()

    # -- intake (synchronous, in memory; then :meth:`commit`) ----------------------------

    def add(self, chat: str, user_id: int, message_id: int | None, text: str) -> InboxItem | None:
        """Accept a message; None when this (chat, message id) was accepted before."""
        with self._doc.lock:
            if message_id is not None:
                seen = self._seen.setdefault(chat, deque(maxlen=SEEN_PER_CHAT))
                if message_id in seen:
                    return None
                seen.append(message_id)
            item = InboxItem(self._next_seq, chat, user_id, message_id, text, time.time())
            self._next_seq += 1
            self._items[item.seq] = item
            self._doc.changed()
        return item

    def seen(self, chat: str, message_id: int) -> bool:
        with self._doc.lock:
            return message_id in self._seen.get(chat, ())

    def cursor(self, name: str) -> int | None:
        with self._doc.lock:
            return self._cursors.get(name)

    def set_cursor(self, name: str, value: int) -> None:
        with self._doc.lock:
            if self._cursors.get(name) != value:
                self._cursors[name] = value
                self._doc.changed()

    def cursors(self, prefix: str) -> dict[str, int]:
        with self._doc.lock:
            return {k: v for k, v in self._cursors.items() if k.startswith(prefix)}

    # -- progress -------------------------------------------------------------------------

    def mark(self, seq: int, state: str) -> None:
        with self._doc.lock:
            item = self._items.get(seq)
            if item is not None and item.state != state:
                self._items[seq] = msgspec.structs.replace(item, state=state)
                self._doc.changed()

    def remove(self, seq: int) -> None:
        with self._doc.lock:
            if self._items.pop(seq, None) is None:
                return
            self._doc.changed()
        if self._done_fd is not None:  # outside the lock: a few bytes, see the module doc
            os.write(self._done_fd, b"%d\n" % seq)
            self._removals += 1

    def close(self) -> None:
        self._doc.close()
        if self._done_fd is not None:
            os.close(self._done_fd)
            self._done_fd = None

    def get(self, seq: int) -> InboxItem | None:
        with self._doc.lock:
            return self._items.get(seq)

    def pending(self, platform: str) -> list[InboxItem]:
        """Items of this platform not yet started, in arrival order."""
        prefix = platform + ":"
        with self._doc.lock:
            return [i for i in self._items.values() if i.chat.startswith(prefix)]

    def __len__(self) -> int:
        return len(self._items)

    async def commit(self) -> None:
        """Return once every change made so far is on disk."""
        removals = self._removals
        await self._doc.commit(self._snapshot)
        # empty the log once the document on disk holds every removal in it, and only
        # once it has grown (a number in it is never reused: stale lines are harmless,
        # and an ftruncate per turn was a system call on the loop for nothing)
        covered = removals >= DONE_LOG_LINES and self._removals == removals and not self._doc.dirty
        if self._done_fd is not None and covered:
            os.ftruncate(self._done_fd, 0)
            self._removals = 0

    def _snapshot(self) -> InboxFile:  # called under the lock: copies, no I/O
        return InboxFile(
            next_seq=self._next_seq,
            items=[*self.interrupted, *self._items.values()],
            cursors=dict(self._cursors),
            seen={k: list(v) for k, v in self._seen.items()},
        )
