"""Reading the process table from /proc (Linux); empty answers where it is absent."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable, Iterator


def read_each(name: str) -> Iterator[tuple[int, bytes]]:
    """``(pid, contents of /proc/<pid>/<name>)`` for every process we may read."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/{name}", "rb") as f:
                yield int(entry), f.read()
        except OSError:
            continue  # gone meanwhile, or not ours to read


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, …)."""
    children: dict[int, list[int]] = {}
    for child, stat in read_each("stat"):
        # the command name may contain spaces and parens: parse after the last ')'
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(child)
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def with_environment(variable: str, value: str) -> list[int]:
    """Processes (other than this one) whose environment has ``variable=value``."""
    needle = f"{variable}={value}".encode()
    me = os.getpid()
    return [
        pid for pid, environ in read_each("environ") if pid != me and needle in environ.split(b"\0")
    ]


def kill_all(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie has finished dying)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    fields = stat[stat.rfind(b")") + 2 :].split()
    return bool(fields) and fields[0] not in (b"Z", b"X")


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Block (in a worker thread) until every pid has exited, at most ``timeout`` seconds.

    SIGKILL is asynchronous: a killed process, or one the kernel is tearing down
    with its pid namespace, still shows in /proc for a moment. Callers that
    promise "nothing is left" wait here. Returns the pids still running.
    """
    left = [pid for pid in pids if running(pid)]
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = [pid for pid in left if running(pid)]
    return left
