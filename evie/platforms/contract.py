"""The contract every platform (Telegram, Discord, the terminal) keeps with the daemon.

A platform is where messages come from. The daemon (``evie run``) starts each
one, tells it when to stop taking new messages, and decides how long running
turns get (``evie.shutdown``); the platform never decides that itself.

Lifecycle, in order:

1. ``await task_group.start(platform.run)``: the platform calls
   ``task_status.started()`` at once and connects in the background under its
   supervisor (adr/0011), so start-up never waits on an unreachable service.
2. While it runs, every message is handled in a task that :meth:`Platform.run`
   owns, so a turn in one chat never holds up intake or another chat.
3. :meth:`Platform.stop_intake`: from now on no new message is taken in
   (Telegram stops polling, Discord ignores new events, the terminal stops
   reading). Messages already being handled carry on: their turns finish,
   and their last lines (the answer, "Stopped.", an interruption notice) are
   still delivered.
4. :meth:`Platform.run` **returns** once intake has stopped, every message
   handler has finished and (Telegram, Discord) its courier has had a bounded
   time to deliver what they left in the outbox (adr/0012). It returns by
   itself too when the platform ends on its own (the terminal at end of
   input); the daemon then stops the rest.
   Cancelling ``run`` cuts handlers short: the daemon does that only after the
   shutdown timeline has given them their time.

Passing outages are retried inside and show up in :meth:`Platform.health`.
What a person must fix (a refused token, a missing intent) is logged as one
line naming the fix; the platform then reports ``down`` with ``gave_up`` set
and ``run`` returns, so only that platform stops (the daemon exits non-zero
when no platform is left running, adr/0011).

:class:`PlatformHealth` is a frozen snapshot taken on demand from the
platform's live tracker (:class:`evie.platforms.supervisor.Liveness`), so
``/status``, ``/metrics``, ``/healthz`` and ``evie status`` read plain values
and never lock anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal, Protocol

import anyio.abc
import attrs

PlatformState = Literal["starting", "up", "degraded", "down"]


@attrs.frozen
class PlatformHealth:
    """How a platform's intake is doing, from plain values (never waits).

    ``state``: ``starting`` until ``run`` reported started; ``up`` while intake
    works; ``degraded`` while it is connecting, or failing and retrying;
    ``down`` once intake has stopped or the platform gave up (``gave_up``).
    """

    state: PlatformState
    #: seconds since the platform last heard from its service (a poll answered, a
    #: gateway message or heartbeat ack); None before the first, or with no remote end
    seconds_since_ok: float | None = None
    #: failures in a row since the last good poll or connection
    consecutive_failures: int = 0
    #: one line a person can read ("polling", "getUpdates failed: Bad Gateway", ...)
    detail: str = ""
    #: short name for logs and health ("telegram", "discord", "terminal")
    name: str = ""
    #: seconds since the last good poll, or since start when there was none
    #: (what ``/healthz`` compares with ``[http] stall_after``)
    silent_for: float = 0.0
    #: a permanent error (bad token, missing intent): not retrying until evie restarts
    gave_up: bool = False
    #: answers that could not be parsed and were skipped
    skipped_updates: int = 0

    def summary(self) -> str:
        """One line a person reads: ``telegram: up, last ok 2s ago``."""
        parts = [f"{self.name}: {self.state}"]
        if self.seconds_since_ok is not None:
            parts.append(f"last ok {self.seconds_since_ok:.0f}s ago")
        elif self.state != "up":  # the terminal is up with no remote end
            parts.append("never connected")
        if self.consecutive_failures:
            parts.append(f"{self.consecutive_failures} failure(s) in a row")
        if self.detail and self.state != "up":
            parts.append(self.detail)
        if self.skipped_updates:
            parts.append(f"{self.skipped_updates} unreadable update(s) skipped")
        return ", ".join(parts)


class Platform(Protocol):
    """See the module docstring for the meaning of each method."""

    #: short name for logs and health ("telegram", "discord", "terminal")
    name: str

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, report started, take messages in until intake stops, then return
        once every message handler has finished."""
        ...

    async def stop_intake(self) -> None:
        """Take no new messages from now on; returns at once (handlers carry on)."""
        ...

    async def announce(self, keys: Iterable[str], take: Callable[[str], str | None]) -> int:
        """Post pending notices to this platform's chats among ``keys``.

        ``take(key)`` hands out each chat's notice once (None when it was taken
        already), so a chat never hears it twice. Returns how many were posted.
        """
        ...

    def health(self) -> PlatformHealth:
        """The intake's state right now, from plain values."""
        ...
