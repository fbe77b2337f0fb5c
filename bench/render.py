"""The render benchmark: Markdown of every size and shape → chat messages, beside a busy loop.

For each input (ordinary Markdown and the pathological shapes of issue 12) and each size
(1 KB … 10 MB) it measures the CPU time of rendering and splitting for Telegram and Discord,
and the longest event-loop stall seen by another task that keeps asking for ``/status``
while the reply renders the way the streamer renders it (``render_off_loop``).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable

import anyio
import anyio.to_thread

from evie.chat.render import render_off_loop
from evie.chat.render.discord import DiscordFlavor
from evie.chat.render.parser import to_html
from evie.chat.render.split import Flavor
from evie.chat.render.telegram import TelegramFlavor
from evie.chat.status import render_status
from evie.sessions.slot import SlotState, SlotStatus

SIZES = {"1KB": 1_000, "100KB": 100_000, "1MB": 1_000_000, "10MB": 10_000_000}

_PARAGRAPH = (
    "Here is **some bold** text, `inline code`, a [link](https://example.com/a_b?c=1&d=2) "
    "and *italics*, <angle brackets> & ampersands, an emoji 🔥, and more plain words so "
    "that the sentence reads like an answer.\n\n"
)
_ORDINARY = (
    "## A heading\n\n" + _PARAGRAPH * 3 + "- item one\n- item **two**\n  1. nested\n\n"
    "> a quote with `code`\n\n```python\ndef f(x):\n    return x < 3  # <tag>\n```\n\n"
    "| a | b |\n|---|---|\n| 1 | 2 |\n\n"
)


def _repeat(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def _nested_lists(size: int) -> str:
    return _repeat("- " * 5000 + "deep\n\n", size)  # 5,000 nested lists per line


def _table(size: int) -> str:
    head = "| name | value | notes |\n|---|---:|:---|\n"
    return head + _repeat("| `key` | 12345 | some **bold** note |\n", size - len(head))


def _fence(size: int) -> str:
    return "```python\n" + _repeat("x = compute(a < b, 'text') + 1\n", size - 14) + "\n```"


KINDS: dict[str, Callable[[int], str]] = {
    "ordinary": lambda n: _repeat(_ORDINARY, n),
    "unclosed_bold": lambda n: _repeat("**a __b ", n),
    "single_line": lambda n: _repeat("word " * 40_000 + "\n\n", n),  # 200 KB lines
    "nested_lists": _nested_lists,
    "huge_table": _table,
    "long_fence": _fence,
}

FLAVORS: dict[str, Flavor] = {"telegram": TelegramFlavor(), "discord": DiscordFlavor()}


_STATUS = SlotStatus(
    key="tg:2",
    session_id="s",
    state=SlotState.RUNNING,
    pid=1,
    model="fake/fake-1",
    turn_elapsed=3.0,
    current_tool="bash",
    queued=(),
    retry_attempt=None,
    retry_error=None,
    idle_for=0.0,
    last_outcome=None,
    last_error=None,
    turns=1,
    last_event_ago=0.5,
)


def _status() -> str:
    """What /status does in another chat: render a status from plain values."""
    return render_status(_STATUS)


#: samples per row: the machine is shared, so each figure is the median of these
SAMPLES = 3


def _children_cpu() -> float:
    """CPU seconds of the live worker processes (the render process), from /proc.

    Counted with this process's own CPU (all its threads), so a row's CPU is everything
    the render cost wherever it ran. Read from each thread's ``schedstat`` (time on a CPU,
    in nanoseconds): ``stat``'s clock ticks are 10 ms, as much as a 100 KB render costs."""
    total = 0.0
    for child in multiprocessing.active_children():
        try:
            threads = os.listdir(f"/proc/{child.pid}/task")
        except OSError:
            continue
        for thread in threads:
            try:
                with open(f"/proc/{child.pid}/task/{thread}/schedstat") as f:
                    total += int(f.read().split()[0]) / 1e9
            except (OSError, ValueError, IndexError):
                continue
    return total


def parser_floor(text: str) -> float:
    """CPU seconds of md4c alone (parse + HTML, in this process) on ``text``: the
    floor no renderer on this parser can go under, to read the CPU figures against."""
    started = time.process_time()
    to_html([text])
    return time.process_time() - started


async def _ask(stalls: list[tuple[float, float]]) -> None:
    """One step of the other chat's poller: wait a millisecond, answer /status, and note
    (how much later than asked the loop ran it, CPU this process used meanwhile)."""
    started, cpu = time.perf_counter(), time.process_time()
    await anyio.sleep(0.001)
    _status()
    stalls.append((time.perf_counter() - started - 0.001, time.process_time() - cpu))


async def measure(
    text: str, flavor: Flavor, most: int | None = None
) -> tuple[float, float, int, float, int]:
    """(CPU seconds, longest loop stall in seconds, chunks, CPU seconds this process used
    during that stall, /status asks answered meanwhile) for one render beside /status.
    ``most``: as the streamer renders a reply, which stops after ``[delivery] max_chunks``
    + 1 messages (the rest goes as a file); without it, the whole reply (the renderer's own
    cost per MB).

    The fourth figure says who stalled the loop: near the stall itself, a thread of the
    daemon held the GIL (the render's share); near zero, no thread of the daemon ran and
    the loop thread was waiting for a core (the machine's share: other processes)."""
    stalls: list[tuple[float, float]] = []
    done = anyio.Event()

    async def status_loop() -> None:
        while not done.is_set():
            await _ask(stalls)

    chunks = 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(status_loop)
        await anyio.sleep(0.01)
        stalls.clear()
        cpu = time.process_time() + _children_cpu()
        chunks = len(await render_off_loop(text, flavor, most=most))
        cpu = time.process_time() + _children_cpu() - cpu
        asks = len(stalls)
        done.set()
    stall, busy = max(stalls, default=(0.0, 0.0))
    return cpu, stall, chunks, busy, asks


async def ask_cost(seconds: float = 1.0) -> float:
    """CPU seconds one /status ask of :func:`measure`'s poller costs this process, with
    nothing else running: a row's asks times this is the poller's share of its CPU (the
    other chat's cost, not the render's)."""
    stalls: list[tuple[float, float]] = []
    end = time.perf_counter() + seconds
    cpu = time.process_time()
    while time.perf_counter() < end:
        await _ask(stalls)  # the poller's own step
    return (time.process_time() - cpu) / max(len(stalls), 1)


async def idle_stall(seconds: float) -> float:
    """Longest loop stall with nothing rendering, measured beside each row: on a shared
    machine the scheduler alone stalls a loop now and then, and a row's stall means
    something only next to this."""
    stalls: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        await anyio.sleep(0.001)
        _status()
        stalls.append(time.perf_counter() - started - 0.001)
    return max(stalls, default=0.0)


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def baseline_stalls(seconds: float = 2.0) -> tuple[float, float]:
    """Longest loop stall with nothing else running, and beside a pure-Python busy thread:
    what the machine itself (its load, the GIL) costs, to read the figures against."""
    stalls: list[float] = []
    done = anyio.Event()

    async def status_loop() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await anyio.sleep(0.001)
            _status()
            stalls.append(time.perf_counter() - started - 0.001)

    async with anyio.create_task_group() as tg:
        tg.start_soon(status_loop)
        await anyio.sleep(seconds)
        idle = max(stalls, default=0.0)
        stalls.clear()
        await anyio.to_thread.run_sync(_busy, seconds)
        done.set()
    return idle, max(stalls, default=0.0)
