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
from evie.metrics import SessionTally

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


def _count_state(slot: Slot, _a: attrs.Attribute[SlotState], new: SlotState) -> SlotState:
    if slot.tally is not None and new is not slot.state and not slot.retired:
        slot.tally.by_state[slot.state.value] -= 1
        slot.tally.by_state[new.value] += 1
    return new


def _count_process(
    slot: Slot, _a: attrs.Attribute[PiProcess | None], new: PiProcess | None
) -> PiProcess | None:
    if slot.tally is not None and (new is None) != (slot.process is None):
        slot.tally.processes += 1 if new is not None else -1
    return new


def _count_turn(slot: Slot, _a: attrs.Attribute[Turn | None], new: Turn | None) -> Turn | None:
    if slot.tally is not None:
        if new is None:
            slot.tally.running.discard(slot)
        else:
            slot.tally.running.add(slot)
    return new


def _count_retired(slot: Slot, _a: attrs.Attribute[bool], new: bool) -> bool:
    """A replaced slot leaves the map: it counts as closed from then on."""
    if slot.tally is not None and new and not slot.retired:
        slot.tally.by_state[slot.state.value] -= 1
        slot.tally.by_state[SlotState.CLOSED.value] += 1
    return new


@attrs.define(eq=False)
class Slot:
    """One chat's session. ``state``, ``process`` and ``turn`` keep ``tally`` current."""

    key: str
    session_id: str = attrs.field(factory=mint_session_id)
    #: fast_acquire: a turn that finds the lock free takes it without yielding to the loop
    #: (one loop iteration fewer per lock per turn, adr/0016 §9); waiters still queue fairly
    lock: anyio.Lock = attrs.field(factory=lambda: anyio.Lock(fast_acquire=True))
    state: SlotState = attrs.field(default=SlotState.IDLE, on_setattr=_count_state)
    process: PiProcess | None = attrs.field(default=None, on_setattr=_count_process)
    turn: Turn | None = attrs.field(default=None, on_setattr=_count_turn)
    last_activity: float = attrs.field(factory=time.monotonic)
    last_outcome: Outcome | None = None
    last_error: str | None = None
    turns: int = 0
    retired: bool = attrs.field(default=False, on_setattr=_count_retired)
    waiters: int = 0  # sends waiting for the lock: later messages queue behind them
    watchdog: TurnWatchdog | None = None  # the running turn's, owned by SessionManager._run_turn
    tally: SessionTally | None = attrs.field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.tally is not None:
            self.tally.by_state[self.state.value] += 1
            self.tally.processes += self.process is not None
            if self.turn is not None:
                self.tally.running.add(self)

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
