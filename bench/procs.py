"""Benchmark processes: the fake Bot API, the echo-bot floor and ``evie run``, each alone.

Each runs in its own process, so what is measured about one (its latency, its
CPU time from /proc) is not mixed with the others' work on one event loop.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from bench.common import FAKE_PI, ROOT

TOKEN = "123456:TEST-token-for-the-fake-bot-api_xyz"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (not its children), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


#: compiled bytecode kept between runs, as an installed evie has it (pip compiles at install);
#: without it (PYTHONDONTWRITEBYTECODE is set on this machine) every start compiles evie
BYTECODE = Path(tempfile.gettempdir()) / "evie-bench-pycache"


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONPYCACHEPREFIX": str(BYTECODE)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _http(url: str, *, post: bool = False, timeout: float = 600) -> Any:
    request = urllib.request.Request(url, method="POST" if post else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


class FakeBotApi:
    def __init__(self, proc: anyio.abc.Process, port: int) -> None:
        self.proc = proc
        self.base_url = f"http://127.0.0.1:{port}"

    async def first_poll(self) -> float:
        """Wall-clock time of the first getUpdates (waits for it)."""
        data = await anyio.to_thread.run_sync(_http, self.base_url + "/_bench/first_poll")
        return float(data["at"])

    async def watch(self, pid: int) -> None:
        """Have the fake read this process's CPU time when the first getUpdates arrives."""
        await anyio.to_thread.run_sync(
            lambda: _http(f"{self.base_url}/_bench/watch?pid={pid}", post=True)
        )

    async def cpu_at_first_poll(self) -> float:
        """The watched process's CPU seconds when its first getUpdates arrived."""
        data = await anyio.to_thread.run_sync(_http, self.base_url + "/_bench/first_poll")
        return float(data["cpu"])

    async def run(self, n: int, *, prefix: str = "ping", expect: str = "echo: {}") -> list[float]:
        """n messages one after another; update → reply seconds for each."""
        from urllib.parse import urlencode

        query = urlencode({"n": n, "prefix": prefix, "expect": expect})
        data = await anyio.to_thread.run_sync(
            lambda: _http(f"{self.base_url}/_bench/run?{query}", post=True)
        )
        return [float(s) for s in data["samples"]]


@asynccontextmanager
async def fake_botapi(tmp: Path) -> AsyncIterator[FakeBotApi]:
    tmp.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    port_file = tmp / "botapi.port"
    proc = await anyio.open_process(
        [sys.executable, "-m", "bench.fake_botapi", str(port_file)], env=_env(), cwd=ROOT
    )
    try:
        with anyio.fail_after(60):
            while not port_file.exists() or not port_file.read_text():  # noqa: ASYNC110
                await anyio.sleep(0.02)
        yield FakeBotApi(proc, int(json.loads(port_file.read_text())["port"]))
    finally:
        await _stop(proc)


async def _stop(proc: anyio.abc.Process) -> None:
    with anyio.CancelScope(shield=True):
        if proc.returncode is None:
            proc.terminate()
            with anyio.move_on_after(20):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@asynccontextmanager
async def echo_bot(api: FakeBotApi, agent: Path | None = None) -> AsyncIterator[anyio.abc.Process]:
    """The raw floor; with ``agent`` (a state dir), the floor with evie's guarantees."""
    extra = ["--agent", str(agent)] if agent is not None else []
    proc = await anyio.open_process(
        [sys.executable, "-m", "bench.echo_bot", api.base_url, TOKEN, *extra], env=_env(), cwd=ROOT
    )
    try:
        yield proc
    finally:
        await _stop(proc)


def write_config(tmp: Path, api: FakeBotApi | None, *, http_port: int | None = None,
                 spares: int = 1, command: tuple[str, ...] | None = None) -> Path:  # fmt: skip
    tmp.mkdir(parents=True, exist_ok=True)
    cmd = command or (sys.executable, str(FAKE_PI))
    lines = [
        "[agent]",
        "command = " + json.dumps(list(cmd)),
        "[sessions]",
        f"warm_spares = {spares}",
        "[state]",
        f"dir = {json.dumps(str(tmp / 'state'))}",
        "[log]",
        'level = "warning"',
    ]
    if api is not None:
        lines += [
            "[telegram]",
            f'token = "{TOKEN}"',
            f'api_url = "{api.base_url}"',
            "allowed_user_ids = [42]",
        ]
    if http_port is not None:
        lines += ["[http]", f'listen = "127.0.0.1:{http_port}"']
    config = tmp / "config.toml"
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o600)
    return config


@asynccontextmanager
async def evie_run(
    config: Path, *, gc_policy: str = "tuned"
) -> AsyncIterator[tuple[anyio.abc.Process, float]]:
    """``evie run`` as its own process; yields it and its launch time (wall clock)."""
    env = {**_env(), "EVIE_GC": gc_policy}
    launched = time.time()
    proc = await anyio.open_process(
        [sys.executable, "-m", "evie.cli", "--config", str(config), "run"], env=env, cwd=ROOT
    )
    try:
        yield proc, launched
    finally:
        await _stop(proc)


def chat_on_a_terminal(config: Path, *, timeout: float = 60) -> tuple[float, float, float]:
    """``evie chat`` on a pseudo-terminal, as a person runs it (line editor, Markdown):
    seconds from launch until its first prompt is drawn after the greeting (keys are read in
    raw mode from then on: the user can type), its CPU seconds then, and its RSS (MiB) once
    the chat is up (its session manager has started the warm spare, a child process).
    Blocking: run it in a thread. Leaves with Ctrl-D."""
    import pty
    import select
    import subprocess

    master, slave = pty.openpty()
    launched = time.perf_counter()
    chat = subprocess.Popen(
        [sys.executable, "-m", "evie.cli", "--config", str(config), "chat"],
        stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=_env(), start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    seen = b""
    try:
        deadline = launched + timeout
        # the greeting's last words, then the prompt drawn under them
        while "›".encode() not in seen.partition(b"Ctrl-D leaves")[2]:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.perf_counter()))
            if not ready:
                raise TimeoutError(f"evie chat drew no prompt within {timeout:g} s: {seen!r}")
            seen += os.read(master, 65536)
        greeted = time.perf_counter() - launched
        cpu = cpu_seconds(chat.pid)
        children = Path(f"/proc/{chat.pid}/task/{chat.pid}/children")
        while not children.read_text().split() and time.perf_counter() < deadline:
            if select.select([master], [], [], 0.005)[0]:
                seen += os.read(master, 65536)  # keep the terminal drained
        rss = rss_mib(chat.pid)
        os.write(master, b"\x04")  # Ctrl-D
        end = time.perf_counter() + timeout
        while chat.poll() is None and time.perf_counter() < end:
            if select.select([master], [], [], 0.1)[0]:
                try:
                    os.read(master, 65536)  # keep the terminal drained
                except OSError:
                    break
        return greeted, cpu, rss
    finally:
        if chat.poll() is None:
            chat.kill()
        chat.wait()
        os.close(master)
