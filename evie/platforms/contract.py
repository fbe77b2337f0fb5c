"""What every chat platform reports about itself: :class:`PlatformHealth`.

A frozen snapshot, taken on demand from the platform's live tracker
(:class:`evie.platforms.supervisor.Liveness`), so ``/status``, ``/metrics``,
``/healthz`` and ``evie status`` read plain values and never lock anything.
"""

from __future__ import annotations

import enum

import attrs


class PlatformState(enum.Enum):
    UP = "up"  # the last poll / heartbeat was good
    DEGRADED = "degraded"  # connecting, or retrying after transient errors
    DOWN = "down"  # a permanent error (bad token, missing intent): not retrying


@attrs.frozen
class PlatformHealth:
    name: str  # "telegram", "discord"
    state: PlatformState
    #: seconds since the last good poll or heartbeat; None before the first one
    last_ok_age: float | None
    #: seconds since the last good poll, or since start when there was none
    silent_for: float
    failures: int  # consecutive failed attempts
    error: str | None = None  # the last error, one line
    skipped_updates: int = 0  # answers that could not be parsed and were skipped

    def summary(self) -> str:
        """One line a person reads: ``telegram: up, last poll 2s ago``."""
        seen = (
            "never connected"
            if self.last_ok_age is None
            else f"last ok {self.last_ok_age:.0f}s ago"
        )
        parts = [f"{self.name}: {self.state.value}", seen]
        if self.failures:
            parts.append(f"{self.failures} failure(s) in a row")
        if self.error and self.state is not PlatformState.UP:
            parts.append(self.error)
        if self.skipped_updates:
            parts.append(f"{self.skipped_updates} unreadable update(s) skipped")
        return ", ".join(parts)
