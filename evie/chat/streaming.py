"""Turning a turn's events into chat messages, for every platform alike.

One "live" message is edited as text streams (at most one edit per
``edit_interval``, in plain text so half-written Markdown cannot break it);
each complete assistant message then replaces it with the final, formatted
text, split into as many messages as the platform's limit requires (rendered
off the event loop when big, :mod:`evie.chat.render`). A reply longer than
``max_chunks`` messages is sent as its first message plus the whole reply as a
Markdown file. Final chunks (markup, their plain text, the preview to edit)
and the file go to the chat's outbox, which the courier delivers in order
through outages (adr/0012); without an outbox every send goes through
:class:`Delivery`. :meth:`ReplyStreamer.stop_delivery` (``/stop``) cancels
what is not yet sent.

This is the event sink the SessionManager awaits; it may be slow, because
pi's output is drained and coalesced independently (adr/0004). Run
:meth:`ReplyStreamer.live_updates` beside the turn for the live edits.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar

import anyio

from evie.agent.events import (
    AssistantMessage,
    FollowUpStarted,
    Notice,
    Outcome,
    RetryScheduled,
    TextDelta,
    ToolFinished,
    ToolStarted,
    TurnEvent,
    TurnFinished,
)
from evie.chat.backoff import Backoff
from evie.chat.contract import (
    ChatRef,
    DeliveryError,
    FormattingRejected,
    Permanent,
    RetryLater,
    Sent,
    Transient,
    Transport,
)
from evie.chat.render import Chunk, Flavor, render_off_loop, split_plain
from evie.chat.reply_file import reply_files_off_loop
from evie.chat.status import unanswered_line
from evie.durable.outbox import Outbox

log = logging.getLogger(__name__)
T = TypeVar("T")


class Delivery:
    """Run one platform operation until it succeeds or cannot.

    Rate limits wait exactly as long as the platform asks; server and network
    errors back off with the shared jittered policy (:mod:`evie.chat.backoff`).
    Both are bounded, so a dead platform ends in a :class:`DeliveryError`
    instead of a task that never finishes.
    """

    def __init__(
        self,
        *,
        max_transient: int = 6,
        max_rate_limited: int = 30,
        base_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.max_transient = max_transient
        self.max_rate_limited = max_rate_limited
        self.backoff = Backoff(base=base_backoff, cap=max_backoff)

    async def run(self, op: Callable[[], Awaitable[T]]) -> T:
        transient = limited = 0
        while True:
            try:
                return await op()
            except RetryLater as exc:
                limited += 1
                if limited > self.max_rate_limited:
                    raise
                await anyio.sleep(exc.seconds)
            except Transient:
                transient += 1
                if transient > self.max_transient:
                    raise
                await anyio.sleep(self.backoff.delay(transient))


OUTCOME_LINES = {
    Outcome.ABORTED: "⏹ Stopped.",
    Outcome.FAILED: "⚠️ The agent reported an error: {error}",
    Outcome.CRASHED: "💥 {error}",
    Outcome.INTERRUPTED: "⏹ Interrupted: {error}",
}


async def _shielded(op: Callable[[], Awaitable[T]]) -> T:
    with anyio.CancelScope(shield=True):
        result = await op()
    return result


AS_FILE_CAPTION = "📎 The whole reply ({characters:,} characters) as a file."
DELIVERY_STOPPED = (
    "⏹ Stopped sending this reply ({sent} of {total} sent); /last sends it as a file."
)
FILE_FAILED = "⚠️ Could not send the whole reply as a file: {error}"


#: one short line of words and punctuation that Markdown never reads as markup (no
#: block marker can start it, no inline marker, entity or autolink is in it) renders
#: to itself on every platform; tests/test_streaming_small.py compares with the renderer
_PLAIN_LINE = re.compile(r"[A-Za-z][A-Za-z0-9 ,.:;'?!()-]{0,199}")


async def render_reply(text: str, flavor: Flavor, *, most: int | None = None) -> list[Chunk]:
    """The reply's messages: a plain short line as it is (most small replies: no parse,
    adr/0016 §9), anything else through the renderer; with ``most``, only the first
    ones of a reply longer than that (it goes as a file)."""
    if (
        len(text) <= flavor.limit  # (ASCII: one unit per character everywhere)
        and _PLAIN_LINE.fullmatch(text)
        and not text.endswith(" ")
        and "www." not in text.lower()
    ):
        return [Chunk(text, text)]
    return await render_off_loop(text, flavor, most=most)


def one_line(text: object, limit: int = 200) -> str:
    """The first line of an error, short enough for a chat line."""
    line = str(text).strip().split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


class ReplyStreamer:
    """The event sink for one turn in one chat."""

    def __init__(
        self,
        transport: Transport,
        chat: ChatRef,
        delivery: Delivery,
        *,
        edit_interval: float = 1.0,
        max_chunks: int = 8,
        on_reply: Callable[[str], None] | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self._outbox = outbox  # finished chunks go there; it owns delivery (adr/0012)
        self._transport = transport
        self._max_chunks = max_chunks
        self._on_reply = on_reply  # told each final reply (the frontend keeps it for /last)
        self._delivering: anyio.CancelScope | None = None  # the reply being sent, for /stop
        self._queued: list[int] = []  # outbox entries of the current reply, for /stop
        self._queued_total = 0  # how many messages that reply has
        self._rendering = False
        self._stop_requested = False
        self._chat = chat
        self._delivery = delivery
        self._edit_interval = edit_interval
        self._live: Sent | None = None  # the message being edited, if any
        self._shown = ""  # what the live message shows now
        self._pieces: list[str] = []  # text of the assistant message being streamed
        self._status: str | None = None  # tool or retry line under the streamed text
        self._lock = anyio.Lock(fast_acquire=True)  # one platform operation at a time: order

    async def __call__(self, event: TurnEvent) -> None:
        match event:
            case TextDelta(text=text):
                self._pieces.append(text)
            case ToolStarted(tool_name=name, summary=summary):
                self._status = f"⚙️ {name}: {summary}" if summary else f"⚙️ {name}"
            case ToolFinished():
                self._status = None
            case RetryScheduled(attempt=a, max_attempts=m, delay_ms=d, error=err):
                self._status = f"⏳ {err} — retrying ({a}/{m}) in {d / 1000:g}s"
            case FollowUpStarted():
                self._status = "💬 now answering your follow-up"
            case AssistantMessage(text=text):
                async with self._lock:
                    await self._finalize(text)
            case Notice(text=text):
                async with self._lock:
                    await self.post(f"ℹ️ {text}", formatted=False)
            case TurnFinished(outcome=outcome, error=error, unanswered=unanswered):
                async with self._lock:
                    await self._finish(outcome, error, len(unanswered))

    @property
    def edit_interval(self) -> float:
        return self._edit_interval

    async def live_updates(self, waited: float = 0.0) -> None:
        """Refresh the live message every ``edit_interval`` while it changes (run as a task;
        ``waited``: seconds of the turn already passed when it starts).

        Edits happen on this clock, not per event, so the platform sees at most
        one edit per interval, and the last text before a pause is always shown.
        """
        pause = self._edit_interval - waited
        while True:
            await anyio.sleep(pause)
            pause = self._edit_interval
            if self._outbox is not None and self._outbox.backlog(self._chat.key):
                continue  # earlier replies are still on their way: previews wait
            async with self._lock:
                if self._pieces or self._status:
                    preview = self._preview()
                    if preview != self._shown:
                        await self._show(preview)

    def stop_delivery(self) -> bool:
        """Cancel the messages of the current reply not sent yet; False if none are pending."""
        if self._rendering:  # a big reply still being rendered: send none of it
            self._stop_requested = True
            return True
        if self._outbox is not None:
            return self._drop_queued()
        scope = self._delivering
        if scope is None:
            return False
        scope.cancel()
        return True

    def _drop_queued(self) -> bool:
        """Drop the current reply's outbox entries not yet handed to the platform and say
        how many were sent; a send already under way completes (counted as sent)."""
        assert self._outbox is not None
        queued, self._queued = self._queued, []
        dropped = self._outbox.discard(self._chat.key, queued)
        if not dropped:
            return False
        messages = queued[: self._queued_total]  # the document entry, if any, comes last
        sent = self._queued_total - len([seq for seq in dropped if seq in messages])
        notice = DELIVERY_STOPPED.format(sent=sent, total=self._queued_total)
        self._outbox.put(self._chat.key, notice)  # committed by the command's own reply
        return True

    # -- live preview ----------------------------------------------------------

    def _units(self, text: str) -> int:
        return self._transport.flavor.units(text, text)

    def _preview(self) -> str:
        """The tail of the streamed text that fits one message (work bounded by the limit)."""
        limit = self._transport.flavor.limit
        status = f"\n\n{self._status}" if self._status else ""
        room = limit - self._units(status) - 2
        tail: list[str] = []
        size = 0
        for piece in reversed(self._pieces):  # only as many pieces as can show
            tail.append(piece)
            size += len(piece)
            if size > room:
                break
        text = "".join(reversed(tail))
        if size > room or len(tail) < len(self._pieces):
            text = text[-(room - 1) :]
            while self._units(text) > room - 1:  # wide characters count double
                text = text[self._units(text) - (room - 1) :]
            text = "…" + text
        preview = (text + status).strip()
        return preview or "…"

    async def _show(self, text: str) -> None:
        chat, transport = self._chat, self._transport
        try:
            if self._live is None:
                self._live = await self._delivery.run(
                    lambda: transport.send(chat, text, formatted=False)
                )
            else:
                live = self._live
                await self._delivery.run(lambda: transport.edit(chat, live, text, formatted=False))
            self._shown = text
        except DeliveryError as exc:  # a preview is best effort; the final text is not
            log.warning("chat %s: live update failed: %s", chat.key, exc)
            if isinstance(exc, Permanent):
                self._live = None
        except Exception as exc:  # an answer of a shape nobody expected: still only a preview
            log.warning("chat %s: live update failed: %s", chat.key, type(exc).__name__)
            log.debug("live update failure", exc_info=True)

    # -- final messages -----------------------------------------------------------

    async def _finalize(self, text: str) -> None:
        self._pieces = []
        self._status = None
        if text.strip() and self._on_reply is not None:
            self._on_reply(text)
        self._rendering, self._stop_requested = True, False
        try:
            chunks = await render_reply(text, self._transport.flavor, most=self._max_chunks)
        finally:
            self._rendering = False
        if not chunks:
            return
        live, self._live, self._shown = self._live, None, ""
        await self._send_reply(text, chunks, live)

    async def _send_reply(self, markdown: str, chunks: list[Chunk], live: Sent | None) -> None:
        """Deliver one reply; a long one as its first message plus a file. /stop ends it."""
        as_file = len(chunks) > self._max_chunks
        if self._outbox is not None:
            await self._queue_reply(markdown, chunks, live, as_file=as_file)
            return
        sent = 0
        with anyio.CancelScope() as scope:
            self._delivering = scope
            if self._stop_requested:  # /stop came while the reply was rendering
                scope.cancel()
            try:
                for chunk in chunks[:1] if as_file else chunks:
                    if scope.cancel_called:  # requests are shielded: a stop lands between them
                        break
                    await self._deliver(chunk, reuse=live if sent == 0 else None)
                    sent += 1
                if as_file and not scope.cancel_called:
                    caption = AS_FILE_CAPTION.format(characters=len(markdown))
                    await self.send_file(markdown, caption)
            finally:
                self._delivering = None
        if scope.cancel_called:
            total = 1 if as_file else len(chunks)
            await self.post(DELIVERY_STOPPED.format(sent=sent, total=total), formatted=False)

    async def _queue_reply(
        self, markdown: str, chunks: list[Chunk], live: Sent | None, *, as_file: bool
    ) -> None:
        """Hand the reply to the outbox (the courier delivers it, adr/0012); a long one
        as its first message plus a document entry."""
        outbox = self._outbox
        assert outbox is not None
        key = self._chat.key
        total = 1 if as_file else len(chunks)
        if self._stop_requested:  # /stop came while the reply was rendering
            outbox.put(key, DELIVERY_STOPPED.format(sent=0, total=total))
            await outbox.commit()
            return
        queued = []
        for i, chunk in enumerate(chunks[:1] if as_file else chunks):
            edit_of = live.message_id if live is not None and i == 0 else None
            entry = outbox.put(
                key, chunk.markup, formatted=True, plain=chunk.plain, edit_of=edit_of
            )
            queued.append(entry.seq)
        if as_file:
            caption = AS_FILE_CAPTION.format(characters=len(markdown))
            limit = self._transport.upload_limit(self._chat)
            for file in await reply_files_off_loop(markdown, limit, caption):
                queued.append(outbox.put_document(key, file.name, file.text, file.caption).seq)
        self._queued, self._queued_total = queued, total
        await outbox.commit()  # one write for the whole reply

    async def send_file(self, markdown: str, caption: str) -> None:
        """The reply as a file, or as numbered parts when it is over the upload limit."""
        chat, transport = self._chat, self._transport
        limit = transport.upload_limit(chat)
        for file in await reply_files_off_loop(markdown, limit, caption):
            try:
                send = partial(transport.send_document, chat, file.name, file.data, file.caption)
                await self._delivery.run(send)
            except Permanent as exc:  # files not allowed here, too big: say so, in one line
                await self.post(FILE_FAILED.format(error=one_line(exc)), formatted=False)
                return

    async def _deliver(self, chunk: Chunk, *, reuse: Sent | None) -> None:
        """Post (or edit into place) one final chunk: formatted, else as plain text.

        The plain text is the chunk's own words without markup, measured the way the
        platform measures it and cut again if need be, so the fallback never exceeds the limit.
        """
        try:
            await self._put(chunk.markup, formatted=True, reuse=reuse)
        except FormattingRejected:
            log.info("chat %s: formatting rejected, sending plain text", self._chat.key)
            for i, piece in enumerate(split_plain(chunk.plain, self._transport.flavor)):
                await self._put(piece, formatted=False, reuse=reuse if i == 0 else None)

    async def _put(self, text: str, *, formatted: bool, reuse: Sent | None) -> None:
        """Send one final message. A request under way is finished even if /stop comes
        (shielded), so a stopped reply never ends in a message that may or may not exist;
        waits between retries stay cancellable."""
        chat, transport = self._chat, self._transport
        if reuse is not None:
            try:
                await self._delivery.run(
                    lambda: _shielded(
                        lambda: transport.edit(chat, reuse, text, formatted=formatted)
                    )
                )
                return
            except Permanent:
                pass  # the preview message is gone: post a new one instead
        await self._delivery.run(
            lambda: _shielded(lambda: transport.send(chat, text, formatted=formatted))
        )

    async def post(self, text: str, *, formatted: bool) -> None:
        if self._outbox is not None:
            self._outbox.put(self._chat.key, text, formatted=formatted)
            await self._outbox.commit()
            return
        chat, transport = self._chat, self._transport
        await self._delivery.run(lambda: transport.send(chat, text, formatted=formatted))

    async def _finish(self, outcome: Outcome, error: str | None, unanswered: int) -> None:
        leftover = "".join(self._pieces).strip()
        line = OUTCOME_LINES.get(outcome, "").format(error=error or "unknown error")
        if outcome is Outcome.ABORTED and error:  # evie stopped it (watchdog): say why
            line = f"⏹ Stopped: {error}."
        pending = unanswered_line(unanswered)
        text = "\n\n".join(part for part in (leftover, line, pending) if part)
        self._pieces = []
        self._status = None
        if not text:
            if self._live is not None:  # only a tool/progress line was showing
                await self._show("✓ Done.")
            return
        live, self._live = self._live, None
        chunks = await render_reply(text, self._transport.flavor, most=self._max_chunks)
        await self._send_reply(text, chunks, live)
