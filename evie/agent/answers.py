"""Typed answers to what evie asks pi: ``get_state``, ``get_session_stats``, ``switch_session``.

Only the fields evie reads are declared (msgspec skips the rest; see
docs/pi-rpc.md for the full answers). A field of the wrong type is an
:class:`~evie.errors.AgentProtocolError` with a one-line message, raised where
the answer is decoded, so the caller ends what it was doing cleanly (a turn
ends FAILED, a start fails) instead of tripping over a dict later.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from evie.agent.protocol import Response
from evie.errors import AgentProtocolError


class Model(msgspec.Struct, frozen=True):
    provider: str = "?"
    id: str = "?"

    @property
    def name(self) -> str:
        return f"{self.provider}/{self.id}"


class PiState(msgspec.Struct, frozen=True):
    """``get_state``: the turn's end barrier reads the queue, /status the model."""

    model: Model | None = None  # null when pi has no model
    pendingMessageCount: int = 0  # queued steer + follow-up messages not yet started
    sessionFile: str | None = None  # the file pi really opened (tests: the one evie named)


class Tokens(msgspec.Struct, frozen=True):
    input: int = 0
    output: int = 0


class ContextUsage(msgspec.Struct, frozen=True):
    percent: float | None = None  # null right after a compaction


class SessionStats(msgspec.Struct, frozen=True):
    """``get_session_stats``: the usage line of /status."""

    tokens: Tokens = Tokens()
    cost: float = 0.0
    contextUsage: ContextUsage | None = None  # omitted without a model or context window


class SwitchResult(msgspec.Struct, frozen=True):
    """``switch_session``: an extension may cancel the switch (adr/0016)."""

    cancelled: bool = False


Answer = TypeVar("Answer", PiState, SessionStats, SwitchResult)


def decode_answer(response: Response, kind: type[Answer]) -> Answer:
    """The ``data`` of a successful answer, typed; AgentProtocolError if its shape is wrong."""
    try:
        return msgspec.json.decode(response.data, type=kind)
    except (msgspec.MsgspecError, UnicodeDecodeError) as exc:
        what = response.command or "a query"
        raise AgentProtocolError(f"pi's answer to {what} has an unexpected shape ({exc})") from None
