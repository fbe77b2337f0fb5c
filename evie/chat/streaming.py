"""Turning a turn's events into chat messages, for every platform alike.

One "live" message is edited as text streams (at most one edit per
``edit_interval``, in plain text so half-written Markdown cannot break it);
each complete assistant message then replaces it with the final, formatted
text, split into as many messages as the platform's limit requires. Every
send and edit goes through :class:`Delivery`, which honours rate limits and
retries server errors, so a reply is delivered once and in order.

This is the event sink the SessionManager awaits; it may be slow, because
pi's output is drained and coalesced independently (adr/0004). Run
:meth:`ReplyStreamer.live_updates` beside the turn for the live edits.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
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
from evie.chat.chunking import split_message
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
from evie.durable.outbox import Outbox

log = logging.getLogger(__name__)
T = TypeVar("T")


class Delivery:
    """Run one platform operation until it succeeds or cannot.

    Rate limits wait exactly as long as the platform asks; server and network
    errors back off exponentially. Both are bounded, so a dead platform ends
    in a :class:`DeliveryError` instead of a task that never finishes.
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
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff

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
                await anyio.sleep(min(self.max_backoff, self.base_backoff * 2 ** (transient - 1)))


OUTCOME_LINES = {
    Outcome.ABORTED: "⏹ Stopped.",
    Outcome.FAILED: "⚠️ The agent reported an error: {error}",
    Outcome.CRASHED: "💥 {error}",
    Outcome.INTERRUPTED: "⏹ Interrupted: {error}",
}


def unanswered_line(count: int) -> str:
    if not count:
        return ""
    if count == 1:
        return "📥 Your queued message was not answered; pi sends it along with your next one."
    return (
        f"📥 Your {count} queued messages were not answered; "
        "pi sends them along with your next one."
    )


class ReplyStreamer:
    """The event sink for one turn in one chat."""

    def __init__(
        self,
        transport: Transport,
        chat: ChatRef,
        delivery: Delivery,
        *,
        edit_interval: float = 1.0,
        outbox: Outbox | None = None,
    ) -> None:
        self._outbox = outbox  # finished chunks go there; it owns delivery (adr/0012)
        self._transport = transport
        self._chat = chat
        self._delivery = delivery
        self._edit_interval = edit_interval
        self._live: Sent | None = None  # the message being edited, if any
        self._shown = ""  # what the live message shows now
        self._pieces: list[str] = []  # text of the assistant message being streamed
        self._status: str | None = None  # tool or retry line under the streamed text
        self._lock = anyio.Lock()  # one platform operation at a time keeps the order

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

    async def live_updates(self) -> None:
        """Refresh the live message every ``edit_interval`` while it changes (run as a task).

        Edits happen on this clock, not per event, so the platform sees at most
        one edit per interval, and the last text before a pause is always shown.
        """
        while True:
            await anyio.sleep(self._edit_interval)
            if self._outbox is not None and self._outbox.backlog(self._chat.key):
                continue  # earlier replies are still on their way: previews wait
            async with self._lock:
                if self._pieces or self._status:
                    preview = self._preview()
                    if preview != self._shown:
                        await self._show(preview)

    # -- live preview ----------------------------------------------------------

    def _preview(self) -> str:
        limit = self._transport.max_length
        status = f"\n\n{self._status}" if self._status else ""
        text = "".join(self._pieces)
        room = limit - len(status) - 2
        if len(text) > room:
            text = "…" + text[-(room - 1) :]
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

    # -- final messages -----------------------------------------------------------

    async def _finalize(self, text: str) -> None:
        self._pieces = []
        self._status = None
        chunks = split_message(text, self._transport.max_length, self._transport.render)
        if not chunks:
            return
        live, self._live, self._shown = self._live, None, ""
        for i, chunk in enumerate(chunks):
            await self._deliver(chunk, reuse=live if i == 0 else None)
        if self._outbox is not None:
            await self._outbox.commit()  # one write for the whole reply

    async def _deliver(self, markdown: str, *, reuse: Sent | None) -> None:
        """Post (or edit into place) one final chunk: formatted, else as plain text."""
        if self._outbox is not None:
            rendered = self._transport.render(markdown)
            edit_of = reuse.message_id if reuse is not None else None
            self._outbox.put(
                self._chat.key, rendered, formatted=True, plain=markdown, edit_of=edit_of
            )
            return  # the caller commits
        try:
            await self._put(self._transport.render(markdown), formatted=True, reuse=reuse)
        except FormattingRejected:
            log.info("chat %s: formatting rejected, sending plain text", self._chat.key)
            await self._put(markdown, formatted=False, reuse=reuse)

    async def _put(self, text: str, *, formatted: bool, reuse: Sent | None) -> None:
        chat, transport = self._chat, self._transport
        if reuse is not None:
            try:
                await self._delivery.run(
                    lambda: transport.edit(chat, reuse, text, formatted=formatted)
                )
                return
            except Permanent:
                pass  # the preview message is gone: post a new one instead
        await self.post(text, formatted=formatted)

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
        if self._live is not None:
            live, self._live = self._live, None
            await self._deliver(text, reuse=live)
        else:
            await self._deliver(text, reuse=None)
        if self._outbox is not None:
            await self._outbox.commit()
