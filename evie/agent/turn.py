"""One turn: pi's raw events in, typed events out, and the rule for when it is over.

A turn is over at pi's ``agent_end`` *unless* pi is about to keep going: an
LLM error it will retry (``auto_retry_start`` is emitted synchronously right
after ``agent_end``) or a follow-up we queued that has not started yet. To tell
the cases apart without guessing with timers, the turn asks pi for
``get_state`` after each ``agent_end``: pi answers commands in order, so by the
time that answer arrives, anything pi emitted in reaction to ``agent_end`` has
already been read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

from evie.agent import protocol as p
from evie.agent.answers import PiState, decode_answer
from evie.agent.event_queue import EventQueue
from evie.agent.events import (
    AssistantMessage,
    FollowUpStarted,
    Outcome,
    RetryScheduled,
    TextDelta,
    ToolFinished,
    ToolStarted,
    TurnEvent,
    TurnFinished,
)
from evie.agent.model_error import error_line
from evie.errors import AgentProtocolError

Barrier = Callable[[Callable[[p.Response | None], None]], None]

INCOMPATIBLE = (
    "The turn was ended; send your message again, and if this repeats check that "
    "[agent] command runs pi 0.73"
)


def summarize_tool_args(tool_name: str, raw: msgspec.Raw, limit: int = 80) -> str:
    """A one-line hint of what a tool is doing, for progress and /status."""
    try:
        args: Any = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return ""
    if isinstance(args, dict):
        for key in ("command", "path", "file_path", "pattern", "url", "query"):
            value = args.get(key)
            if isinstance(value, str) and value:
                text = " ".join(value.split())
                return text if len(text) <= limit else text[: limit - 1] + "…"
    return ""


class Turn:
    """State of one prompt's run inside pi, fed by the process's reader task."""

    def __init__(self, barrier: Barrier) -> None:
        self.started_at = time.monotonic()
        self.events = EventQueue()
        self._barrier = barrier
        self.finished: TurnFinished | None = None
        self.current_tool: str | None = None
        self.retry: RetryScheduled | None = None
        self.abort_requested = False
        self.abort_reason: str | None = None  # set when evie, not the user, stopped the turn
        self.followups_sent = 0
        self.followups_started = 0
        self.queued_texts: list[str] = []
        self._running = False  # between agent_start and agent_end
        self._user_messages = 0
        self._generation = 0  # bumps at every agent_end, so stale barrier answers are ignored
        self._last_stop: str | None = None
        self._last_error: str | None = None
        self._final_error: str | None = None
        self._retry_after_end = False
        self._settled = False  # agent_end seen and confirmed by a barrier

    # -- queries (plain reads, safe from /status) --------------------------

    @property
    def accepts_followups(self) -> bool:
        """A message sent now will be answered inside this turn."""
        return self.finished is None and self._running

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    # -- consumer side ------------------------------------------------------

    def __aiter__(self) -> TurnEvents:
        return TurnEvents(self.events)

    # -- producer side (called synchronously by the reader) ------------------

    def note_followup_sent(self, text: str) -> None:
        self.followups_sent += 1
        self.queued_texts.append(text)

    def prompt_rejected(self, error: str) -> None:
        self._finish(Outcome.FAILED, error)

    def process_exited(self, outcome: Outcome, message: str) -> None:
        self._finish(outcome, message)

    def feed(self, msg: p.PiMessage | p.OtherEvent) -> None:
        if self.finished is not None:
            return
        match msg:
            case p.MessageUpdate(assistantMessageEvent=p.AssistantDelta(type="text_delta") as d):
                self.events.put(TextDelta(d.delta))
            case p.AgentStart():
                self._running = True
                self._settled = False
                self._retry_after_end = False
                self.retry = None
            case p.MessageStart(message=message) if message.role == "user":
                self._user_messages += 1
                if self._user_messages > 1:
                    self.followups_started += 1
                    text = message.text()
                    if text in self.queued_texts:
                        self.queued_texts.remove(text)
                    elif self.queued_texts:
                        self.queued_texts.pop(0)
                    self.events.put(FollowUpStarted(text))
            case p.MessageEnd(message=message) if message.role == "assistant":
                self._last_stop = message.stopReason
                self._last_error = message.errorMessage
                text = message.text()
                if message.stopReason == "error":
                    return  # reported at the end of the turn, or retried
                if text or message.stopReason != "toolUse":
                    self.events.put(
                        AssistantMessage(text=text, stop_reason=message.stopReason or "stop")
                    )
            case p.ToolExecutionStart():
                self.current_tool = msg.toolName
                self.events.put(
                    ToolStarted(
                        msg.toolCallId, msg.toolName, summarize_tool_args(msg.toolName, msg.args)
                    )
                )
            case p.ToolExecutionEnd():
                self.current_tool = None
                self.events.put(ToolFinished(msg.toolCallId, msg.toolName, msg.isError))
            case p.AutoRetryStart():
                self._retry_after_end = True
                self.retry = RetryScheduled(
                    msg.attempt, msg.maxAttempts, msg.delayMs, error_line(msg.errorMessage)
                )
                self.events.put(self.retry)
            case p.AutoRetryEnd(success=False):
                self._final_error = msg.finalError
                self.retry = None
                if not self._running and self._retry_after_end:
                    # The retry wait was cancelled (abort): no further agent_end will come.
                    self._conclude()
            case p.AutoRetryEnd(success=True):
                self.retry = None
            case p.AgentEnd():
                self._running = False
                self.current_tool = None
                self._generation += 1
                generation = self._generation
                self._retry_after_end = False
                self._barrier(lambda state: self._after_barrier(generation, state))
            case _:
                pass

    def _after_barrier(self, generation: int, state: p.Response | None) -> None:
        if self.finished is not None or generation != self._generation or self._running:
            return  # superseded: a new run already started, or the turn is over
        if self._retry_after_end:
            return  # pi is waiting to retry; the next agent_start continues this turn
        self._settled = True
        pending = 0
        if state is not None and state.success:
            try:
                pending = decode_answer(state, PiState).pendingMessageCount
            except AgentProtocolError as exc:
                # pi is not speaking the protocol we know: end the turn rather than guess
                self._finish(Outcome.FAILED, f"{exc}. {INCOMPATIBLE}")
                return
        # ``isStreaming`` is not used: pi clears it only after agent_end's listeners
        # settle, so it can still read true for a run that is over.
        if self._waiting_for_followup(pending):
            return  # our queued message is being run as a new prompt
        self._conclude()

    def _waiting_for_followup(self, pending: int) -> bool:
        outstanding = self.followups_sent - self.followups_started
        return outstanding > 0 and pending == 0 and not self.abort_requested

    def followup_failed(self, text: str) -> None:
        """pi refused a queued message: stop expecting it, and end if that was all."""
        self.followups_sent -= 1
        if text in self.queued_texts:
            self.queued_texts.remove(text)
        settled = self.finished is None and self._settled and not self._running
        if settled and not self._waiting_for_followup(0):
            self._conclude()

    def _conclude(self) -> None:
        # an abort that came too late to stop a reply that completed is not an abort
        stopped_early = self._last_stop in (None, "error", "aborted")
        if self._last_stop == "aborted" or (self.abort_requested and stopped_early):
            self._finish(Outcome.ABORTED, self.abort_reason)
        elif self._last_stop == "error":
            error = self._final_error or self._last_error or "the model returned an error"
            self._finish(Outcome.FAILED, error_line(error))
        else:
            self._finish(Outcome.DONE, None)

    def _finish(self, outcome: Outcome, error: str | None) -> None:
        if self.finished is not None:
            return
        self.finished = TurnFinished(outcome, error, tuple(self.queued_texts))
        self._running = False
        self.current_tool = None
        self.retry = None
        self.events.put(self.finished)


class TurnEvents:
    """``async for event in turn``: the turn's events up to and including
    :class:`TurnFinished`. A class, not an async generator: mypyc compiles it, and it
    needs no loop hooks (adr/0016 §12)."""

    def __init__(self, events: EventQueue) -> None:
        self._events = events
        self._done = False

    def __aiter__(self) -> TurnEvents:
        return self

    async def __anext__(self) -> TurnEvent:
        if self._done:
            raise StopAsyncIteration
        event = await self._events.get()
        if isinstance(event, TurnFinished):
            self._done = True
        return event
