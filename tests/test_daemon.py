"""`evie run` as a real subprocess: fake Telegram + fake pi, metrics, SIGTERM mid-turn."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread
import pytest

from evie.agent.reaper import marked_processes
from tests.conftest import FAKE_PI
from tests.fake_telegram import TOKEN, FakeTelegram, running_fake_telegram

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with running_fake_telegram() as fake:
        yield fake


async def start_daemon(
    tmp_path: Path, fake: FakeTelegram, grace: float
) -> tuple[anyio.abc.Process, str, Path]:
    port = free_port()
    state = tmp_path / "state"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\ncommand = ["{sys.executable}", "{FAKE_PI}"]\n'
        f"[sessions]\nshutdown_grace = {grace}\n"
        f'[state]\ndir = "{state}"\n'
        f'[telegram]\ntoken = "{TOKEN}"\napi_url = "{fake.base_url}"\nallowed_user_ids = [42]\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\n'
    )
    config.chmod(0o600)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await anyio.open_process(
        [sys.executable, "-m", "evie.cli", "--config", str(config), "run"], env=env
    )
    base = f"http://127.0.0.1:{port}"
    with anyio.fail_after(40):  # a busy machine imports aiogram slowly
        while True:
            try:
                if '"ok": true' in await anyio.to_thread.run_sync(get, base + "/healthz"):
                    break
            except OSError:
                await anyio.sleep(0.05)
    await fake.wait_for(lambda: bool(fake.method_calls("getUpdates")))
    return proc, base, state


@asynccontextmanager
async def daemon(
    tmp_path: Path, fake: FakeTelegram, grace: float
) -> AsyncIterator[tuple[anyio.abc.Process, str]]:
    """`evie run` as a subprocess; killed at the end if the test did not stop it."""
    proc, base, _state = await start_daemon(tmp_path, fake, grace)
    try:
        yield proc, base
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def stops_cleanly(proc: anyio.abc.Process) -> None:
    with anyio.fail_after(20):
        assert await proc.wait() == 0


def persisted(tmp_path: Path, key: str = "tg:42") -> dict[str, object]:
    record: dict[str, object] = json.loads((tmp_path / "state" / "state.json").read_text())[
        "sessions"
    ][key]
    return record


def script(release: Path) -> str:
    steps = [{"text": "working"}, {"wait_file": str(release)}, {"text": " and done"}]
    return "script:" + json.dumps(steps)


async def test_sigterm_lets_the_running_turn_finish(tmp_path: Path, telegram: FakeTelegram) -> None:
    release = tmp_path / "release"
    async with daemon(tmp_path, telegram, grace=20) as (proc, base):
        telegram.push_message(script(release))
        await telegram.wait_for(lambda: "working" in " ".join(telegram.chat_view(42)))
        metrics = await anyio.to_thread.run_sync(get, base + "/metrics")
        assert 'evie_sessions{state="running"} 1' in metrics
        assert "evie_guard_hold_seconds_count" in metrics
        status = json.loads(await anyio.to_thread.run_sync(get, base + "/status"))
        assert status[0]["key"] == "tg:42"
        assert status[0]["state"] == "running"
        proc.send_signal(signal.SIGTERM)
        await anyio.sleep(0.3)
        assert proc.returncode is None  # still finishing the turn
        release.touch()
        await telegram.wait_for(lambda: "working and done" in telegram.chat_view(42))
        await stops_cleanly(proc)
    record = persisted(tmp_path)
    assert record["last_outcome"] == "done"
    assert record["running"] is False
    assert marked_processes(str((tmp_path / "state").resolve())) == []


async def test_sigterm_aborts_turns_after_the_grace(tmp_path: Path, telegram: FakeTelegram) -> None:
    async with daemon(tmp_path, telegram, grace=0.5) as (proc, _base):
        telegram.push_message(script(tmp_path / "never"))
        await telegram.wait_for(lambda: "working" in " ".join(telegram.chat_view(42)))
        proc.send_signal(signal.SIGTERM)
        await stops_cleanly(proc)
    assert any("Stopped." in t for t in telegram.chat_view(42))  # the user was told
    assert persisted(tmp_path)["last_outcome"] == "aborted"
    assert marked_processes(str((tmp_path / "state").resolve())) == []


async def test_after_kill_9_the_interrupted_chat_is_told_on_restart(
    tmp_path: Path, telegram: FakeTelegram
) -> None:
    async with daemon(tmp_path, telegram, grace=5) as (proc, _base):
        telegram.push_message(script(tmp_path / "never"))
        await telegram.wait_for(lambda: "working" in " ".join(telegram.chat_view(42)))
        # leaving the block kills it: no shutdown at all
    async with daemon(tmp_path, telegram, grace=5) as (proc, _base):
        await telegram.wait_for(
            lambda: any("evie was stopped while" in t for t in telegram.chat_view(42))
        )
        telegram.push_message("hello again")
        await telegram.wait_for(lambda: "echo: hello again" in telegram.chat_view(42))
        told = [t for t in telegram.chat_view(42) if "evie was stopped while" in t]
        assert len(told) == 1  # once, not again with the next message
        proc.send_signal(signal.SIGTERM)
        await stops_cleanly(proc)
    record = persisted(tmp_path)
    assert record["notice"] is None
    assert record["last_outcome"] == "done"
