"""A never-blocking, coalescing queue between pi's reader and a turn's consumer.

pi dies when its stdout is not drained, so the reader must never wait for a
slow chat platform. The queue therefore never blocks ``put``; it stays small
because consecutive text deltas merge into one pending run of text (kept as a
list of pieces, so merging is O(1) and the final join is linear).
"""

from __future__ import annotations

from collections import deque

import anyio

from evie.agent.events import TextDelta, TurnEvent


class EventQueue:
    def __init__(self) -> None:
        self._items: deque[TurnEvent | list[str]] = deque()
        #: made by a consumer that finds the queue empty, set and dropped by the next
        #: ``put``: most events arrive while the consumer is busy, and need no wake-up
        #: (adr/0016 §12)
        self._wakeup: anyio.Event | None = None

    def put(self, event: TurnEvent) -> None:
        if isinstance(event, TextDelta):
            if not event.text:
                return
            if self._items and isinstance(self._items[-1], list):
                self._items[-1].append(event.text)
            else:
                self._items.append([event.text])
        else:
            self._items.append(event)
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    async def get(self) -> TurnEvent:
        while not self._items:
            if self._wakeup is None:
                self._wakeup = anyio.Event()
            await self._wakeup.wait()
        item = self._items.popleft()
        if isinstance(item, list):
            return TextDelta("".join(item))
        return item

    def __len__(self) -> int:
        return len(self._items)
