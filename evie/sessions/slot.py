"""A session slot: the shared object behind one chat key.

Everything ``/status`` and idle cleanup read is a plain attribute, written by
the task that owns the change and read without any lock: a status check must
never wait for a turn.
"""

from __future__ import annotations

import enum
import secrets
import time
from typing import TYPE_CHECKING

import anyio
import attrs

from evie.agent.events import Outcome
from evie.agent.process import PiProcess
from evie.agent.turn import Turn

if TYPE_CHECKING:
    from evie.sessions.watchdog import TurnWatchdog


class SlotState(enum.Enum):
    IDLE = "idle"  # no turn running (a process may or may not be alive)
    STARTING = "starting"  # pi is being spawned for this session
    RUNNING = "running"  # a turn is in flight
    CRASHED = "crashed"  # pi died (or would not start); the next message starts it again
    CLOSED = "closed"  # replaced by /new or shut down: this slot will never run again


def mint_session_id() -> str:
    """A new session id: sortable by creation time, unique, and safe as a file name."""
    return time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(4)


@attrs.define(eq=False)
class Slot:
    key: str
    session_id: str = attrs.field(factory=mint_session_id)
    lock: anyio.Lock = attrs.field(factory=anyio.Lock)
    state: SlotState = SlotState.IDLE
    process: PiProcess | None = None
    turn: Turn | None = None
    last_activity: float = attrs.field(factory=time.monotonic)
    last_outcome: Outcome | None = None
    last_error: str | None = None
    turns: int = 0
    retired: bool = False
    waiters: int = 0  # sends waiting for the lock: later messages queue behind them
    watchdog: TurnWatchdog | None = None  # the running turn's, owned by SessionManager._run_turn

    def snapshot(self) -> SlotStatus:
        turn, process = self.turn, self.process
        model = process.state.model if process is not None else None
        retry = turn.retry if turn is not None else None
        return SlotStatus(
            key=self.key,
            session_id=self.session_id,
            state=self.state,
            pid=process.pid if process is not None and process.alive else None,
            model=model.name if model is not None else None,
            turn_elapsed=turn.elapsed if turn is not None else None,
            current_tool=turn.current_tool if turn is not None else None,
            queued=tuple(turn.queued_texts) if turn is not None else (),
            retry_attempt=(retry.attempt, retry.max_attempts) if retry is not None else None,
            retry_error=retry.error if retry is not None else None,
            idle_for=time.monotonic() - self.last_activity,
            last_event_ago=(
                time.monotonic() - process.last_output_at
                if process is not None and process.alive
                else None
            ),
            last_outcome=self.last_outcome,
            last_error=self.last_error,
            turns=self.turns,
        )


@attrs.frozen
class SlotStatus:
    """A point-in-time copy of a slot, for rendering ``/status``."""

    key: str
    session_id: str
    state: SlotState
    pid: int | None
    model: str | None
    turn_elapsed: float | None
    current_tool: str | None
    queued: tuple[str, ...]
    retry_attempt: tuple[int, int] | None
    retry_error: str | None
    idle_for: float
    last_event_ago: float | None  # seconds since pi last wrote anything (None: not running)
    last_outcome: Outcome | None
    last_error: str | None
    turns: int
