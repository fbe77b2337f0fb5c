"""The brief guard around the session map.

The guard takes a *synchronous* callable, so nothing that awaits — no spawn,
no I/O, no turn — can ever run while it is held: the rule is enforced by the
type system instead of by review. Hold times are therefore microseconds, and a
plain mutex serves readers and writers alike (adr/0002). The mutex is a real
``threading.Lock`` so helper threads (terminal input) may use it too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from evie.metrics import Metrics

T = TypeVar("T")


class BriefGuard:
    def __init__(self, metrics: Metrics) -> None:
        self._lock = threading.Lock()
        self._metrics = metrics

    def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` with the guard held and record wait and hold times."""
        asked = time.perf_counter()
        try:
            with self._lock:
                got = time.perf_counter()
                try:
                    return fn()
                finally:
                    released = time.perf_counter()
        finally:
            self._metrics.guard_wait.observe(got - asked)
            self._metrics.guard_hold.observe(released - got)
