"""Delivering the outbox: one worker per chat, in order, through any outage.

A chat's head entry is retried until it is delivered or older than ``max_age``:
rate limits wait as long as the platform asks, everything else (server errors,
network, answers of an unexpected shape) backs off with jitter up to
``max_backoff``. A turn never waits for this: the streamer hands its finished
chunks to the outbox and moves on, so an outage cannot abort a turn (adr/0012).
A reply that arrives more than ``late_after`` seconds after it was written says so.
"""

from __future__ import annotations

import logging
import random
import time

import anyio
import anyio.abc
import attrs

from evie.chat.contract import (
    ChatRef,
    FormattingRejected,
    Permanent,
    RetryLater,
    Sent,
    Transport,
)
from evie.chat.render import split_plain
from evie.chat.reply_file import encoded_off_loop
from evie.chat.streaming import FILE_FAILED, one_line
from evie.durable.outbox import Outbox, OutboxEntry
from evie.logs import chat_var

log = logging.getLogger(__name__)
SEND_TIMEOUT = 30.0  # one attempt; a stop waits for it at most this long


@attrs.frozen
class CourierSettings:
    max_age: float = 86400.0  # give up on an entry this old (seconds)
    late_after: float = 60.0  # an entry delivered later than this says when it was written
    base_backoff: float = 1.0
    max_backoff: float = 60.0


def delayed_prefix(created_at: float, now: float) -> str:
    stamp = time.localtime(created_at)
    same_day = time.localtime(now)[:3] == stamp[:3]
    when = time.strftime("%H:%M" if same_day else "%b %d, %H:%M", stamp)
    return f"(delayed reply from {when})"


def dropped_text(count: int) -> str:
    what = "message" if count == 1 else "messages"
    return (
        f"⚠️ {count} earlier {what} to this chat could not be delivered in time and "
        f"{'was' if count == 1 else 'were'} dropped; ask again if you miss an answer."
    )


class Courier:
    """Delivers one platform's outbox entries; run :meth:`run` as a task you own."""

    def __init__(
        self,
        outbox: Outbox,
        transport: Transport,
        platform: str,
        settings: CourierSettings | None = None,
    ) -> None:
        self.outbox = outbox
        self.transport = transport
        self.platform = platform
        self.settings = settings or CourierSettings()
        self._busy: set[str] = set()
        self._tg: anyio.abc.TaskGroup | None = None  # run's, while it runs
        self.delivered = 0
        self.expired = 0

    async def run(self) -> None:
        """Deliver until cancelled: a worker per chat with entries, started when the
        outbox is told of a new entry (its ``kick``, synchronous: no wake-up of a loop of
        ours per message, adr/0016 §10) and for the entries there at the start."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self.outbox.courier_running(self.platform, True, kick=self._kick)
                for chat in self.outbox.chats(self.platform):
                    self._kick(chat)
                await anyio.sleep_forever()
        finally:
            self._tg = None
            self.outbox.courier_running(self.platform, False)  # what is left goes to disk
            with anyio.CancelScope(shield=True):
                await self.outbox.flush()

    def _kick(self, chat: str) -> None:
        """Start this chat's worker unless it runs (it takes every entry queued meanwhile)
        or the courier is stopping (then the entry stays for the next start)."""
        tg = self._tg
        if tg is None or tg.cancel_scope.cancel_called or chat in self._busy:
            return
        self._busy.add(chat)
        tg.start_soon(self._drain, chat)

    async def settle(self, seconds: float = 5.0) -> bool:
        """Wait (bounded) until this platform's outbox is empty, e.g. before stopping."""
        with anyio.move_on_after(seconds):
            while self.outbox.chats(self.platform):
                await self.outbox.changed()
            await self.outbox.flush()  # the delivered entries' removal, for power loss
            return True
        return False

    async def _drain(self, chat: str) -> None:
        chat_var.set(chat)
        try:
            while (entry := self.outbox.head(chat)) is not None:
                await self._deliver(entry)
        finally:
            self._busy.discard(chat)

    async def _deliver(self, entry: OutboxEntry) -> None:
        ref = ChatRef.from_key(entry.chat)
        if ref is None:
            self.outbox.remove(entry)
            return
        if not self.outbox.is_direct(entry):  # else: sent first, written if that fails
            if not entry.attempted:  # written first: see "uncertain" in evie.durable.outbox
                self.outbox.mark_attempted(entry)
            await self.outbox.flush()  # on disk, attempted, before the first attempt
        backoff = self.settings.base_backoff
        attempts = 0
        while True:
            if attempts and self.outbox.is_direct(entry):  # its first send failed: keep it
                self.outbox.persist_direct(seq=entry.seq)
                await self.outbox.flush()
            entry = self.outbox.head(entry.chat) or entry
            now = time.time()
            if now - entry.created_at > self.settings.max_age:
                log.error(
                    "chat %s: a reply from %s could not be delivered for %gs; dropped",
                    entry.chat,
                    time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.created_at)),
                    self.settings.max_age,
                )
                self.expired += 1
                self.outbox.remove(entry)
                self.outbox.put(entry.chat, dropped_text(max(1, entry.dropped)))
                await self.outbox.flush()
                return
            attempts += 1
            try:
                # A stop must not cut a send in half: that would leave a reply that may have
                # arrived in the outbox, to be sent again at the next start. Bounded.
                with anyio.move_on_after(SEND_TIMEOUT, shield=True) as scope:
                    await self._attempt(ref, entry, now)
                if scope.cancelled_caught:
                    raise TimeoutError(f"no answer within {SEND_TIMEOUT:g}s")
            except FormattingRejected:
                log.info("chat %s: formatting rejected, sending plain text", entry.chat)
                self.outbox.use_plain(entry)
                continue
            except RetryLater as exc:
                log.warning("chat %s: rate limited; sending again in %gs", entry.chat, exc.seconds)
                await anyio.sleep(exc.seconds)
                continue
            except Permanent as exc:
                log.error("chat %s: the platform refused a reply (%s); dropped", entry.chat, exc)
                self.outbox.remove(entry)
                if entry.document is not None:  # too big, or files not allowed: say so
                    self.outbox.put(entry.chat, FILE_FAILED.format(error=one_line(exc)))
                await self.outbox.flush()
                return
            except Exception as exc:  # Transient, or an answer of a shape nobody expected
                delay = random.uniform(backoff / 2, backoff)
                log.warning(
                    "chat %s: delivery failed (%s: %s); attempt %d, next in %.1fs",
                    entry.chat,
                    type(exc).__name__,
                    str(exc).splitlines()[0][:200] if str(exc) else "",
                    attempts,
                    delay,
                )
                log.debug("delivery failure", exc_info=True)
                await anyio.sleep(delay)
                backoff = min(self.settings.max_backoff, backoff * 2)
                continue
            self.delivered += 1
            # its file is unlinked at once; the directory fsync (for power loss) rides
            # along with the next write instead of costing one per delivered message
            self.outbox.remove(entry)
            return

    async def _attempt(self, ref: ChatRef, entry: OutboxEntry, now: float) -> None:
        transport = self.transport
        if entry.dropped:
            await transport.send(ref, dropped_text(entry.dropped), formatted=False)
            return
        if entry.document is not None:
            data = await encoded_off_loop(entry.text)
            await transport.send_document(ref, entry.document, data, entry.plain or "")
            return
        text = entry.text
        late = now - entry.created_at > self.settings.late_after
        if late:
            prefix = delayed_prefix(entry.created_at, now)
            if transport.flavor.units(prefix + "\n" + text, prefix + "\n" + text) <= (
                transport.max_length
            ):
                text = f"{prefix}\n{text}"
            else:  # no room in this chunk: say it in a line of its own
                await transport.send(ref, prefix, formatted=False)
        # plain text (the formatting was rejected) is cut again the way the platform
        # measures it, so the fallback never exceeds the limit
        pieces = [text] if entry.formatted else split_plain(text, transport.flavor) or [text]
        first, rest = pieces[0], pieces[1:]
        if entry.edit_of is not None and not late:  # a late reply is a new message, not an edit
            try:
                await transport.edit(ref, Sent(entry.edit_of), first, formatted=entry.formatted)
            except Permanent:  # the preview message is gone: post a new one instead
                await transport.send(ref, first, formatted=entry.formatted)
        else:
            await transport.send(ref, first, formatted=entry.formatted)
        for piece in rest:
            await transport.send(ref, piece, formatted=False)
