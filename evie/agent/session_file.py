"""What a pi session file says about a conversation, without starting pi.

The terminal banner says "resumed, 8 turns" and warns when a resumed session
will run somewhere else than the configured working directory (pi resumes a
session in the cwd stored in its header, see docs/pi-rpc facts in adr/0015).
Reading is linear in the file size and meant to run in a worker thread.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import attrs

_USER = re.compile(rb'"message"\s*:\s*\{\s*"role"\s*:\s*"user"')


@attrs.frozen
class SessionSummary:
    turns: int  # user messages in the file
    cwd: Path | None  # the directory pi resumes this session in


def read_summary(path: Path) -> SessionSummary | None:
    """None when the session has no file yet (pi writes it after the first reply)."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return None
    with f:
        first = f.readline()
        cwd: Path | None = None
        turns = 0
        try:
            data = json.loads(first)
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("type") == "session":
            if isinstance(data.get("cwd"), str):
                cwd = Path(data["cwd"])
        elif _USER.search(first, 0, 300):  # no header: the first line is a message too
            turns = 1
        turns += sum(1 for line in f if _USER.search(line, 0, 300))
    return SessionSummary(turns=turns, cwd=cwd)
