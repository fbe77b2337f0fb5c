"""What the manager tells the state store: plain frozen records, never live slots.

The store (adr/0006) must not read a slot that a turn is mutating, nor know how
slots work; the manager copies the few facts worth persisting into a
:class:`SessionFacts` and says *what happened* (:class:`Change`). How soon that
reaches the disk is the store's decision.
"""

from __future__ import annotations

import enum

import attrs

from evie.agent.events import Outcome


class Change(enum.Enum):
    """What happened to a session, so the store can decide how soon to write."""

    TURN_STARTED = "turn_started"  # must be on disk before a crash can lose the turn
    TURN_ENDED = "turn_ended"  # the outcome of a turn (including a failed start)
    SESSION_REPLACED = "session_replaced"  # /new: the chat now maps to a new session


@attrs.frozen
class SessionFacts:
    """A point-in-time copy of what is persisted about one chat's session."""

    key: str
    session_id: str
    running: bool  # a turn is in flight
    last_outcome: Outcome | None = None
    last_error: str | None = None
    turns: int = 0
