"""Ctrl-C in `evie chat`, typed on a real pseudo-terminal: it stops the turn, never pi."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from evie.agent.reaper import marked_processes
from tests.conftest import FAKE_PI, pid_alive

# Become a session leader with the pty as controlling terminal (as a login shell is), so
# the terminal's Ctrl-C goes to this process group, then run `evie chat`.
ON_A_TERMINAL = (
    "import fcntl, os, sys, termios\n"
    "os.setsid()\n"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'evie.cli', 'chat'])\n"
)


class Terminal:
    def __init__(self, master: int) -> None:
        self.master = master
        self.seen = ""

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait_for(self, needle: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{needle!r} never appeared; terminal shows:\n{self.seen}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    self.seen += os.read(self.master, 65536).decode("utf-8", "replace")
                except OSError:  # the other side closed
                    assert needle in self.seen, self.seen
                    return


def test_ctrl_c_stops_the_turn_and_pi_survives(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\ncommand = ["{sys.executable}", "{FAKE_PI}"]\nsandbox = "off"\n'
        f'[state]\ndir = "{state}"\n'
    )
    master, slave = os.openpty()
    env = {**os.environ, "EVIE_CONFIG": str(config)}
    proc = subprocess.Popen(
        [sys.executable, "-c", ON_A_TERMINAL], stdin=slave, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    term = Terminal(master)
    try:
        term.wait_for("talking to pi")
        # the prompt spells "busy" as \u0075 so its echo on the terminal does not match
        steps = [{"text": "b\\u0075sy"}, {"sleep": 60}]
        term.type(("script:" + json.dumps(steps).replace("\\\\u", "\\u") + "\n").encode())
        term.wait_for("busy")
        pis = marked_processes(str(state.resolve()))
        assert pis, "pi is running"
        term.type(b"\x03")  # Ctrl-C
        term.wait_for("[aborted]")
        assert "[crashed]" not in term.seen
        assert all(pid_alive(pid) for pid in pis), "pi survived the Ctrl-C"
        term.type(b"\x03")  # nothing running now: leave
        term.wait_for("[bye]")
        assert proc.wait(timeout=20) == 0
        assert not any(pid_alive(pid) for pid in pis), "evie stopped pi on its way out"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
