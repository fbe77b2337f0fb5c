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
from tests.harness import kill_and_close

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


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
    with anyio.fail_after(45):  # importing aiogram alone took 20 s on the loaded 2-core CI box
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
        await kill_and_close(proc)


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
        assert status["sessions"][0]["key"] == "tg:42"
        assert status["sessions"][0]["state"] == "running"
        assert [(p["name"], p["state"]) for p in status["platforms"]] == [("telegram", "up")]
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


async def test_start_up_warns_about_an_enabled_platform_nobody_may_use(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from evie.config import parse_config
    from evie.daemon import build_platforms
    from evie.metrics import Metrics
    from evie.runtime import Runtime

    config = parse_config(
        {"telegram": {"token": TOKEN}, "discord": {"token": "x", "allowed_user_ids": [1]}},
        environ={},
    )
    # the platforms are built, never run: no manager or store is needed (hence the ignore)
    runtime = Runtime(config, manager=None, store=None, metrics=Metrics())  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="evie.daemon"):
        assert len(await build_platforms(runtime)) == 2
    assert [r.getMessage() for r in caplog.records] == [
        "[telegram] allowed_user_ids is empty: everyone is refused; run `evie setup` or add "
        "your user id (the refusal log line shows it)"
    ]


# -- supervised platforms (adr/0011) ----------------------------------------------------


def write_config(tmp_path: Path, api_url: str, extra: str = "") -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\ncommand = ["{sys.executable}", "{FAKE_PI}"]\n'
        f'[state]\ndir = "{tmp_path / "state"}"\n'
        f'[telegram]\ntoken = "{TOKEN}"\napi_url = "{api_url}"\nallowed_user_ids = [42]\n'
        "polling_timeout = 1\nrequest_grace = 1\n"
        "[platforms]\nretry_base = 0.05\nretry_cap = 0.3\n" + extra
    )
    config.chmod(0o600)
    return config


def evie(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "evie.cli", "--config", str(config), *args]


def healthz(base: str) -> tuple[int, dict[str, object]]:
    import urllib.error

    try:
        with urllib.request.urlopen(base + "/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_a_rejected_token_is_one_line_and_a_non_zero_exit(
    tmp_path: Path, telegram: FakeTelegram
) -> None:
    from tests.fake_telegram import UNAUTHORIZED

    telegram.inject("getMe", UNAUTHORIZED)
    config = write_config(tmp_path, telegram.base_url)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with anyio.fail_after(30):
        result = await anyio.run_process(evie(config, "run"), env=env, check=False)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "Traceback" not in err
    token_lines = [line for line in err.splitlines() if "rejected the bot token" in line]
    assert len(token_lines) == 2, err  # the log line, and evie's exit line
    assert "check [telegram] token" in token_lines[0]
    assert token_lines[1].startswith("evie: no platform is left running")
    assert TOKEN not in err
    assert len(telegram.method_calls("getMe")) == 1  # a bad token is not retried


@pytest.mark.timeout(120)
async def test_telegram_down_at_start_health_status_then_answered(tmp_path: Path) -> None:
    from tests.loopback import closed_port

    port, http = closed_port(), free_port()
    extra = f'[http]\nlisten = "127.0.0.1:{http}"\nstall_after = 0.5\n'
    config = write_config(tmp_path, f"http://127.0.0.1:{port}", extra)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = f"http://127.0.0.1:{http}"
    async with await anyio.open_process(evie(config, "run"), env=env) as proc:
        try:
            with anyio.fail_after(60):  # up and serving while Telegram refuses connections
                while True:
                    try:
                        code, body = await anyio.to_thread.run_sync(healthz, base)
                        if code == 503:
                            break
                    except OSError:
                        pass
                    await anyio.sleep(0.05)
            assert body["ok"] is False
            assert "telegram: no good poll" in str(body["problems"])
            status = await anyio.run_process(evie(config, "status"), env=env)
            assert "platform telegram: degraded, never connected" in status.stdout.decode()
            async with running_fake_telegram(port) as fake:
                fake.push_message("/status")
                await fake.wait_for(lambda: bool(fake.chat_view(42)), 20)
                assert "Platforms: telegram: up" in fake.chat_view(42)[0]
                fake.push_message("made it")
                await fake.wait_for(lambda: "echo: made it" in fake.chat_view(42), 20)
                # healthy again: a poll is answered at least every second (the fake's
                # longest poll), but one parked since before a slow turn (pi still starting)
                # may be older than stall_after at the moment the reply lands
                with anyio.fail_after(10):
                    while True:
                        code, body = await anyio.to_thread.run_sync(healthz, base)
                        if code == 200:
                            break
                        await anyio.sleep(0.05)
                assert body["problems"] == []
                metrics = await anyio.to_thread.run_sync(get, base + "/metrics")
                assert 'evie_platform_state{platform="telegram",state="up"} 1' in metrics
                assert "evie_event_loop_lag_seconds" in metrics
                proc.send_signal(signal.SIGTERM)
                await stops_cleanly(proc)
        finally:
            if proc.returncode is None:
                proc.kill()
        assert proc.stderr is not None
        err = b"".join([chunk async for chunk in proc.stderr]).decode()
    assert "Traceback" not in err
    retries = [line for line in err.splitlines() if "telegram: " in line and " retry " in line]
    assert retries  # one line per attempt while Telegram refused connections
    assert all("Connect" in line for line in retries)
