"""Typed events a turn yields to its consumer (an interface or a test).

pi's own event vocabulary is large and changes between versions; interfaces only
need these few, so the agent client translates once and nothing above it reads
raw pi JSON.
"""

from __future__ import annotations

import enum

import attrs


class Outcome(enum.Enum):
    """How a turn ended. Every turn ends in exactly one of these, and it is recorded."""

    DONE = "done"
    ABORTED = "aborted"
    FAILED = "failed"  # the LLM or pi reported an error (after pi's own retries)
    CRASHED = "crashed"  # the pi process died mid-turn
    INTERRUPTED = "interrupted"  # evie itself stopped while the turn ran


@attrs.frozen
class TextDelta:
    """A piece of assistant text, as streamed."""

    text: str


@attrs.frozen
class ToolStarted:
    tool_call_id: str
    tool_name: str
    summary: str  # a short human-readable rendering of the arguments


@attrs.frozen
class ToolFinished:
    tool_call_id: str
    tool_name: str
    is_error: bool


@attrs.frozen
class AssistantMessage:
    """One complete assistant message: post it as a reply.

    A run can hold several (queued follow-ups get their own answers), so
    interfaces post one reply per ``AssistantMessage``, not one per turn.
    """

    text: str
    stop_reason: str


@attrs.frozen
class FollowUpStarted:
    """pi began working on a message that was queued mid-turn."""

    text: str


@attrs.frozen
class RetryScheduled:
    """pi will retry after an LLM error; shown in ``/status`` and to the user."""

    attempt: int
    max_attempts: int
    delay_ms: int
    error: str


@attrs.frozen
class TurnFinished:
    """The terminal event of every turn: nothing follows it."""

    outcome: Outcome
    error: str | None = None
    # messages queued into this turn that pi had not started when it ended (after /stop);
    # pi keeps them and sends them along with the next message
    unanswered: tuple[str, ...] = ()


@attrs.frozen
class Notice:
    """Something the user must hear about before this turn (e.g. an interrupted turn)."""

    text: str


TurnEvent = (
    Notice
    | TextDelta
    | ToolStarted
    | ToolFinished
    | AssistantMessage
    | FollowUpStarted
    | RetryScheduled
    | TurnFinished
)


@attrs.frozen
class Image:
    """An image for pi's ``prompt.images``: base64 data and its MIME type."""

    data: str
    mime_type: str

    def to_pi(self) -> dict[str, str]:
        return {"type": "image", "data": self.data, "mimeType": self.mime_type}


@attrs.frozen
class Prompt:
    """What a user sent: text and optional images."""

    text: str
    images: tuple[Image, ...] = ()
