"""The two steps evie's guarantees add to the raw floor, each timed alone.

A message is journalled (``write`` + ``fdatasync``) before the agent sees it, and the agent is
pi in its own process, asked over pipes. Added to the raw floor's update → reply time they give
what a bot keeping those guarantees takes before it spends any CPU of its own on reading,
deciding or scheduling: a lower bound, which ``bench telegram_latency`` reports beside its floors.
Both are timed here with blocking calls, from a thread of the bench, the cheapest way to make them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import FAKE_PI


class Steps:
    """A journal file and a fake pi of its own (the one evie and the floors run)."""

    def __init__(self, state: Path) -> None:
        state.mkdir(parents=True, exist_ok=True)
        self._journal = os.open(state / "journal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._pi = subprocess.Popen(
            [sys.executable, str(FAKE_PI), "--mode", "rpc", "--session", str(state / "s.jsonl")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        self._asked = 0

    def journal(self, n: int) -> list[float]:
        """Seconds for each of n journal lines to be written and synced."""
        samples = []
        for i in range(n):
            line = json.dumps({"update_id": i, "text": f"ping {i}"}).encode() + b"\n"
            start = time.perf_counter()
            os.write(self._journal, line)
            os.fdatasync(self._journal)
            samples.append(time.perf_counter() - start)
        return samples

    def ask_pi(self, n: int) -> list[float]:
        """Seconds from each of n prompts written to pi's stdin to its ``agent_end`` read."""
        assert self._pi.stdin is not None
        assert self._pi.stdout is not None
        stdin, stdout = self._pi.stdin.fileno(), self._pi.stdout.fileno()
        samples, pending = [], b""
        for _ in range(n):
            self._asked += 1
            prompt = json.dumps({"type": "prompt", "message": f"ping {self._asked}"}).encode()
            start = time.perf_counter()
            os.write(stdin, prompt + b"\n")
            ended = False
            while not ended:
                chunk = os.read(stdout, 65536)
                if not chunk:
                    raise RuntimeError("the fake pi exited")
                pending += chunk
                *lines, pending = pending.split(b"\n")
                ended = any(b'"type": "agent_end"' in line for line in lines)
            samples.append(time.perf_counter() - start)
        return samples

    def close(self) -> None:
        os.close(self._journal)
        self._pi.kill()
        self._pi.wait()
