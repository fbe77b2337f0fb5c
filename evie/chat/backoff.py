"""One retry policy for everything that talks to a platform: jittered, capped exponential backoff.

Intake supervisors (getUpdates, the Discord gateway) and delivery retries
(send, edit, typing) use it alike, so "how long do we wait after the n-th
failure in a row" is answered in one place. The jitter keeps several chats
(or a restarted evie and its old self) from retrying in lock-step; the cap
bounds how stale a recovered platform can be before evie notices.
"""

from __future__ import annotations

import random

import attrs


@attrs.frozen
class Backoff:
    """Delay before retry number ``attempt`` (1 for the first retry).

    The ceiling doubles from ``base`` up to ``cap``; the delay is drawn
    uniformly from the upper half of the ceiling ("equal jitter"), so it
    never exceeds ``cap`` and never drops below half the ceiling.
    """

    base: float = 1.0
    cap: float = 60.0

    def ceiling(self, attempt: int) -> float:
        exponent = min(max(attempt, 1) - 1, 64)  # 2**64 * base is past any cap; no overflow
        return min(self.cap, self.base * 2.0**exponent)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = self.ceiling(attempt)
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)
