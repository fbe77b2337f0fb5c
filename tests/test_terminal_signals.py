"""Ctrl-C in `evie chat`: it stops the turn, never pi.

On a real pseudo-terminal (the REPL) Ctrl-C is a key: it stops the reply, and a
second within two seconds leaves. With input from a pipe, the SIGINT a terminal
sends to the foreground process group stops the turn, and with nothing running
it leaves."""

from __future__ import annotations

import json
import os
import select
import signal
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


def chat_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """The environment for `evie chat` with the fake pi, and its state dir."""
    state = tmp_path / "state"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\ncommand = ["{sys.executable}", "{FAKE_PI}"]\nsandbox = "off"\n'
        f'[state]\ndir = "{state}"\n'
    )
    return {**os.environ, "EVIE_CONFIG": str(config)}, state


def running_pis(state: Path) -> list[int]:
    pis = marked_processes(str(state.resolve()))
    assert pis, "pi is running"
    return pis


def left_and_stopped_pi(term: Terminal, proc: subprocess.Popen[bytes], pis: list[int]) -> None:
    """evie says goodbye, exits 0 and stops pi on its way out."""
    term.wait_for("[bye]")
    assert proc.wait(timeout=20) == 0
    assert not any(pid_alive(pid) for pid in pis), "evie stopped pi on its way out"


def kill_if_running(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_ctrl_c_stops_the_turn_and_pi_survives(tmp_path: Path) -> None:
    env, state = chat_env(tmp_path)
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", ON_A_TERMINAL], stdin=slave, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    term = Terminal(master)
    try:
        term.wait_for("session: new")  # the banner
        # the prompt spells "busy" as \u0075 so its echo on the terminal does not match;
        # the blank line ends the paragraph, which the REPL renders as a Markdown block
        steps = [{"text": "b\\u0075sy\n\n"}, {"sleep": 60}]
        term.type(("script:" + json.dumps(steps).replace("\\\\u", "\\u") + "\n").encode())
        term.wait_for("busy")
        pis = running_pis(state)
        term.type(b"\x03")  # Ctrl-C
        term.wait_for("[aborted]")
        assert "[stopping the reply; Ctrl-C again to leave]" in term.seen
        assert "[crashed]" not in term.seen
        assert all(pid_alive(pid) for pid in pis), "pi survived the Ctrl-C"
        term.type(b"\x03\x03")  # twice in a row: leave
        left_and_stopped_pi(term, proc, pis)
    finally:
        kill_if_running(proc)
        os.close(master)


def test_sigint_on_piped_input_stops_the_turn_then_leaves(tmp_path: Path) -> None:
    env, state = chat_env(tmp_path)
    read, write = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "evie.cli", "chat"],
        stdin=subprocess.PIPE,
        stdout=write,
        stderr=write,
        env=env,
        start_new_session=True,  # its own process group, as a job in a shell
    )
    os.close(write)
    assert proc.stdin is not None
    out = Terminal(read)
    try:
        out.wait_for("session: new")  # the banner
        steps = [{"text": "busy"}, {"sleep": 60}]
        proc.stdin.write(("script:" + json.dumps(steps) + "\n").encode())
        proc.stdin.flush()
        out.wait_for("busy")
        pis = running_pis(state)
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal's Ctrl-C does
        out.wait_for("[aborted]")
        assert "[stopping the turn;" in out.seen
        assert all(pid_alive(pid) for pid in pis), "pi survived the SIGINT"
        os.killpg(proc.pid, signal.SIGINT)  # nothing running now: leave
        left_and_stopped_pi(out, proc, pis)
    finally:
        kill_if_running(proc)
        proc.stdin.close()
        os.close(read)
