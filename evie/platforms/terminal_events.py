"""How a turn's events look on the terminal.

Kept apart from :mod:`evie.platforms.terminal` so that module (imported before
``evie chat`` draws its first prompt) does not load the agent's event types,
and so the events are matched against names bound once at import, not
imported again for every streamed delta.
"""

from __future__ import annotations

from typing import Protocol

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
from evie.chat.status import unanswered_line
from evie.platforms.terminal_render import Style


class Screen(Protocol):
    """Where the text goes: the chat's single writer."""

    def say(self, text: str) -> None:
        """Text as it is (a streamed delta may end mid-line)."""

    def line(self, text: str) -> None:
        """A line of its own, below whatever was said last."""

    def end_line(self) -> None:
        """End the current line, if something was said on it."""


def show(event: TurnEvent, style: Style, screen: Screen) -> None:
    """One event of a turn, rendered by ``style`` (deltas are buffered until a block ends)."""
    match event:
        case TurnFinished(outcome=Outcome.DONE, unanswered=()):
            screen.say(style.flush())
            screen.end_line()
        case TurnFinished(outcome=outcome, error=error, unanswered=unanswered):
            screen.say(style.flush())
            if outcome is not Outcome.DONE:
                screen.line(style.plain(f"[{outcome.value}] {error or ''}".rstrip()))
            if unanswered:
                screen.line(style.dim(unanswered_line(len(unanswered))))
        case AssistantMessage(text=text) if text:
            # the text was already streamed as deltas; end the paragraph
            screen.say(style.flush())
            screen.end_line()
        case ToolStarted(tool_name=name, summary=summary):
            screen.say(style.flush())
            screen.line(style.dim(f"[{name}] {summary}".rstrip()))
        case ToolFinished(is_error=True, tool_name=name):
            screen.line(style.dim(f"[{name} failed]"))
        case FollowUpStarted(text=text):
            screen.say(style.flush())
            screen.line(style.dim(f"[now answering] {text}"))
        case RetryScheduled(attempt=a, max_attempts=m, delay_ms=d, error=err):
            screen.line(style.dim(f"[retry {a}/{m} in {d / 1000:g}s] {err}"))
        case TextDelta(text=text):
            screen.say(style.delta(text))
        case Notice(text=text):
            screen.line(style.dim(f"[note] {text}"))
        case _:
            pass
