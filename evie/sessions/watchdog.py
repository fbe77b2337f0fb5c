"""The turn watchdog: every turn ends, even when pi stops listening.

An ``abort`` is only a request: pi can be stuck in a tool, a blocked write or a
bug and never answer it. The watchdog gives the request ``abort_grace``
seconds; after that it ends the turn itself (recorded as aborted, with a line
telling the user why) and kills pi and its tool children. The next message
starts pi again on the same session file, so the history is kept.

The same escalation ends runaway turns: a turn older than ``max_turn_seconds``
or one in which pi has been silent for ``stall_timeout`` is first asked to
stop, then killed. Deadlines are computed, not polled; an abort request wakes
the watchdog at once. The manager owns the watchdog's task and cancels it when
the turn ends (see ``SessionManager._run_turn``). A turn with no deadline (the
default: no ``max_turn_seconds``, no ``stall_timeout``) has nothing to watch until
an abort is requested, so its task is started only then (:meth:`TurnWatchdog.arm`):
most turns never need one (adr/0016 §10).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import anyio

from evie.agent.events import Outcome
from evie.agent.process import PiProcess
from evie.agent.turn import Turn

log = logging.getLogger(__name__)

KILLED = "pi did not stop, so I restarted it; your history is kept"
KILLED_FINALLY = "pi did not stop, so I stopped it; your history is kept"  # evie is stopping


class TurnWatchdog:
    """Watches one turn of one process; :meth:`run` returns when the turn is over."""

    def __init__(
        self,
        process: PiProcess,
        turn: Turn,
        *,
        abort_grace: float,
        max_turn_seconds: float | None = None,
        stall_timeout: float | None = None,
        start: Callable[[], None] | None = None,
    ) -> None:
        """``start``: starts :meth:`run` in a task its caller owns (see :meth:`arm`)."""
        self.process = process
        self.turn = turn
        self.abort_grace = abort_grace
        self.max_turn_seconds = max_turn_seconds
        self.stall_timeout = stall_timeout
        self.abort_requested_at: float | None = None
        self.reason: str | None = None  # why evie (not the user) stopped the turn
        self.killed = False
        self.final = False  # evie is stopping: pi is not started again
        #: made by :meth:`run` before each wait: a turn with no deadline and no abort
        #: (most) never runs it, so never needs one (adr/0016 §12)
        self._wake: anyio.Event | None = None
        self._start = start

    @property
    def has_deadline(self) -> bool:
        """Whether the turn has a deadline of its own (else only an abort needs watching)."""
        return bool(self.max_turn_seconds or self.stall_timeout)

    def arm(self) -> None:
        """Start the watching task, once: at the turn's start when it has a deadline,
        else at the first abort request."""
        start, self._start = self._start, None
        if start is not None:
            start()

    def request_abort(self, reason: str | None = None, *, final: bool = False) -> None:
        """Ask pi to stop; the grace period starts now (a repeat keeps the first).

        ``final`` (shutdown): pi will not be started again, so the user is not told it was.
        """
        if self.turn.finished is not None:
            return
        self.final = self.final or final
        if self.abort_requested_at is None:
            self.abort_requested_at = time.monotonic()
            self.reason = reason
            if reason is not None:
                self.turn.abort_reason = reason
        self.process.abort()
        if self._wake is not None:
            self._wake.set()
        self.arm()  # the grace period needs a task counting it

    def _next(self, now: float) -> tuple[float, str]:
        """The earliest deadline and what happens at it."""
        deadlines: list[tuple[float, str]] = []
        if self.abort_requested_at is not None:
            deadlines.append((self.abort_requested_at + self.abort_grace, "kill"))
        else:
            if self.max_turn_seconds:
                deadlines.append((self.turn.started_at + self.max_turn_seconds, "max_turn"))
            if self.stall_timeout:
                quiet_since = max(self.process.last_output_at, self.turn.started_at)
                deadlines.append((quiet_since + self.stall_timeout, "stall"))
        return min(deadlines, default=(math.inf, "none"))

    async def run(self) -> None:
        while self.turn.finished is None:
            now = time.monotonic()
            deadline, action = self._next(now)
            if deadline <= now:
                await self._act(action)
                continue
            wake = self._wake = anyio.Event()  # (deadlines read above: nothing in between)
            with anyio.move_on_after(deadline - now):
                await wake.wait()

    async def _act(self, action: str) -> None:
        if action == "max_turn":
            log.warning("turn ran longer than %gs; stopping it", self.max_turn_seconds)
            self.request_abort(
                f"the turn ran longer than {self.max_turn_seconds:g} s ([agent] max_turn_seconds)"
            )
        elif action == "stall":
            log.warning("pi sent nothing for %gs; stopping the turn", self.stall_timeout)
            self.request_abort(
                f"pi sent nothing for {self.stall_timeout:g} s ([agent] stall_timeout)"
            )
        elif action == "kill":
            await self.kill()

    async def kill(self) -> None:
        """End the turn as aborted, telling why, then kill pi and its tool children."""
        log.warning(
            "pi pid %s did not stop within %gs of abort; killing it",
            self.process.pid,
            self.abort_grace,
        )
        self.killed = True
        why = f"{self.reason}; " if self.reason else ""
        killed = KILLED_FINALLY if self.final else KILLED
        self.turn.process_exited(Outcome.ABORTED, f"{why}{killed}")
        await self.process.kill()
