"""Supervision of a platform's intake: retry what is transient, stop only on what is permanent.

Each platform runs its connect-and-poll loop as ``once()`` under
:func:`supervise`. A transient failure (network, DNS, timeouts, 5xx, an answer
that is not JSON, 409, a dropped gateway) logs one line and retries after the
shared jittered backoff; it never reaches the daemon, so other platforms and
the terminal carry on. A permanent failure (rejected token, missing intent)
logs one line naming the fix and marks the platform down. :class:`Liveness`
is the live record the snapshots in ``/status`` and ``/healthz`` come from.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import anyio
import attrs

from evie.chat.backoff import Backoff
from evie.chat.contract import Permanent, RetryLater, Transient
from evie.chat.frontend import sole_error
from evie.platforms.contract import PlatformHealth, PlatformState

log = logging.getLogger(__name__)


def one_line(text: object, limit: int = 300) -> str:
    """Any error text as one short line (bodies of HTML error pages included)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@attrs.define
class Liveness:
    """How one platform is doing; updated by its intake, read as :class:`PlatformHealth`."""

    name: str
    clock: Callable[[], float] = time.monotonic
    started: float = attrs.field(init=False)
    running: bool = False  # run() reported started
    #: False while a held connection is lost, or (Discord) before the first READY
    connected: bool = True
    last_ok: float | None = None
    failures: int = 0
    detail: str = "connecting"
    down: bool = False
    gave_up: bool = False
    skipped_updates: int = 0

    def __attrs_post_init__(self) -> None:
        self.started = self.clock()

    def begin(self) -> None:
        """``run`` reported started; intake now connects in the background."""
        self.running = True

    def ok(self, detail: str = "") -> None:
        """A good poll, connection or heartbeat."""
        self.last_ok = self.clock()
        if self.down:
            return  # intake stopped: stays down
        if detail or self.failures or not self.connected:
            self.detail = detail or "connected"
        self.failures = 0
        self.connected = True

    def seen(self) -> None:
        """A sign of life from the service (any gateway message) that changes no state."""
        self.last_ok = self.clock()

    def lost(self, detail: str) -> None:
        """A held connection dropped; the library reconnects (failures are counted there)."""
        if not self.down:
            self.connected = False
            self.detail = detail

    def failed(self, error: str) -> int:
        """A failed attempt; returns how many failed in a row (the retry number)."""
        self.failures += 1
        if not self.down:
            self.detail = error
        return self.failures

    def give_up(self, error: str) -> None:
        """A permanent error: down until evie restarts."""
        self.down = True
        self.gave_up = True
        self.detail = error

    def stopped(self, detail: str = "intake stopped") -> None:
        if not self.down:
            self.down = True
            self.detail = detail

    def snapshot(self) -> PlatformHealth:
        now = self.clock()
        state: PlatformState
        if self.down:
            state = "down"
        elif not self.running:
            state = "starting"
        elif self.last_ok is None or self.failures or not self.connected:
            state = "degraded"
        else:
            state = "up"
        return PlatformHealth(
            state=state,
            seconds_since_ok=None if self.last_ok is None else now - self.last_ok,
            consecutive_failures=self.failures,
            detail=self.detail,
            name=self.name,
            silent_for=now - (self.last_ok if self.last_ok is not None else self.started),
            gave_up=self.gave_up,
            skipped_updates=self.skipped_updates,
        )


async def supervise(
    liveness: Liveness, once: Callable[[], Awaitable[None]], backoff: Backoff
) -> None:
    """Run ``once()`` until it returns (intake stopped) or fails permanently.

    ``once`` raises :class:`Transient` / :class:`RetryLater` / :class:`Permanent`
    for what it understands; anything else is an answer nobody expected, and is
    retried like a transient error (its traceback only at debug level).
    """
    name = liveness.name
    while True:
        try:
            await once()
            return
        except RetryLater as exc:
            attempt = liveness.failed(str(exc))
            log.warning("%s: %s; retry %d in %gs", name, exc, attempt, exc.seconds)
            await anyio.sleep(exc.seconds)
        except Permanent as exc:
            liveness.give_up(one_line(exc))
            log.error("%s: %s; %s is down until evie restarts", name, one_line(exc), name)
            return
        except Exception as exc:
            text = one_line(exc) if isinstance(exc, Transient) else _unexpected(exc)
            attempt = liveness.failed(text)
            delay = backoff.delay(attempt)
            log.warning("%s: %s; retry %d in %.1fs", name, text, attempt, delay)
            if not isinstance(exc, Transient):
                log.debug("%s: unexpected intake error", name, exc_info=True)
            await anyio.sleep(delay)


def _unexpected(exc: BaseException) -> str:
    exc = sole_error(exc)
    return one_line(f"unexpected {type(exc).__name__}: {exc}")
