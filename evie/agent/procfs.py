"""Reading the process table from /proc (Linux); empty answers where it is absent."""

from __future__ import annotations

import os
import signal
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
