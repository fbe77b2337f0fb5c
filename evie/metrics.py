"""In-process figures shared by /status, /metrics and the benchmarks.

Deliberately tiny (no client library): single-threaded updates from the event
loop, read by whoever asks. Histograms keep fixed buckets plus count/sum/max,
which is what Prometheus text format and the bench summaries need.
"""

from __future__ import annotations

import bisect
from collections import Counter

import attrs

DEFAULT_BUCKETS: tuple[float, ...] = (
    1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0,
)  # fmt: skip


@attrs.define
class Histogram:
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    counts: list[int] = attrs.Factory(lambda self: [0] * (len(self.buckets) + 1), takes_self=True)
    count: int = 0
    total: float = 0.0
    max: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.count += 1
        self.total += value
        if value > self.max:
            self.max = value

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


@attrs.define
class SessionTally:
    """Live counts kept up to date on slot transitions, so /metrics never walks every session.

    ``by_state`` counts slots by state name (a slot replaced by ``/new`` ends as
    "closed"), ``processes`` the slots holding a pi process, and ``running`` the
    slots with a turn in flight (few: at most ``max_processes``), whose queues
    make up the queue depth.
    """

    by_state: Counter[str] = attrs.Factory(Counter)
    processes: int = 0
    running: set[object] = attrs.Factory(set)


@attrs.define
class Metrics:
    guard_wait: Histogram = attrs.Factory(Histogram)
    guard_hold: Histogram = attrs.Factory(Histogram)
    spawn_seconds: Histogram = attrs.Factory(Histogram)
    turn_seconds: Histogram = attrs.Factory(Histogram)
    persist_serialise: Histogram = attrs.Factory(Histogram)
    persist_write: Histogram = attrs.Factory(Histogram)
    turns: Counter[str] = attrs.Factory(Counter)  # by outcome
    spawn_failures: int = 0
    queued_messages: int = 0
    lines_dropped: int = 0  # pi output lines over [agent] max_line_bytes
    sessions: SessionTally = attrs.Factory(SessionTally)
    spares_taken: int = 0  # sessions served by a warm spare (adr/0016)
    spares_missed: int = 0  # sessions that had to start pi cold
