"""Find and stop processes evie started, including pi's orphaned tool children.

pi's bash tool children run in their own process group and survive pi being
killed; if evie itself is killed they are re-parented to init. Every pi evie
starts gets ``EVIE_OWNER=<state dir>`` in its environment, which its children
inherit, so a later evie on the same state dir (one at a time, enforced by a
lock file) can find the leftovers in /proc and stop them.
"""

from __future__ import annotations

import fcntl
import logging
from pathlib import Path
from typing import IO

from evie.agent import procfs
from evie.errors import StateError

log = logging.getLogger(__name__)

MARKER = "EVIE_OWNER"


def marked_processes(owner: str) -> list[int]:
    """Pids whose environment carries ``EVIE_OWNER=<owner>`` (never our own pid)."""
    return procfs.with_environment(MARKER, owner)


def reap(owner: str) -> int:
    """SIGKILL every leftover process of ``owner``; returns how many were signalled."""
    pids = marked_processes(owner)
    procfs.kill_all(pids)
    procfs.wait_gone(pids, 2.0)
    if pids:
        log.warning("stopped %d process(es) left behind by an earlier evie: %s", len(pids), pids)
    return len(pids)


def lock_state_dir(state_dir: Path) -> IO[bytes]:
    """Hold an exclusive lock on the state dir for this process's lifetime."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle = open(state_dir / "evie.lock", "ab")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StateError(
            f"another evie is already running with the state dir {state_dir}; "
            "stop it first or use a different [state] dir"
        ) from None
    return handle
