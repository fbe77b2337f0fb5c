"""`evie run` start-up order: nothing that boots a process competes with the first poll."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from evie.config import load_config
from evie.daemon import run_daemon
from evie.runtime import Runtime
from tests.conftest import FAKE_PI
from tests.fake_telegram import TOKEN, running_fake_telegram

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent


async def test_the_spare_pi_boots_only_once_telegram_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVIE_GC", "default")  # keep this test process's collector as it is
    async with running_fake_telegram() as fake:
        path = tmp_path / "config.toml"
        path.write_text(
            f'[agent]\ncommand = ["{sys.executable}", "{FAKE_PI}"]\n'
            f"[sessions]\nwarm_spares = 1\n"
            f'[state]\ndir = "{tmp_path / "state"}"\n'
            f'[telegram]\ntoken = "{TOKEN}"\napi_url = "{fake.base_url}"\n'
            "allowed_user_ids = [42]\n"
        )
        path.chmod(0o600)
        config = load_config(path)
        runtimes: list[Runtime] = []
        # a spare seen booting, with what Telegram had been asked by then
        seen: list[list[str]] = []

        async def on_ready(runtime: Runtime) -> None:
            runtimes.append(runtime)

        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: run_daemon(config, on_ready=on_ready))
            with anyio.fail_after(20):
                while not runtimes:
                    await anyio.sleep(0.002)
                pool = runtimes[0].manager.spares
                assert pool is not None
                while not pool.ready:
                    if pool.size and not seen:
                        seen.append([name for name, _params in fake.calls])
                    await anyio.sleep(0.002)
            tg.cancel_scope.cancel()
    assert seen, "the spare was never seen booting"
    asked = seen[0]
    assert "getMe" in asked  # the pool waited for the platform to reach Telegram
    assert "deleteWebhook" in asked


def test_evie_chat_imports_no_platform_library_and_no_http_server(tmp_path: Path) -> None:
    """`evie chat` starts in a fraction of a second: aiogram, discord.py, aiohttp stay out."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\ncommand = ["{sys.executable}", "{FAKE_PI}"]\n'
        f'[sessions]\nwarm_spares = 0\n[state]\ndir = "{tmp_path / "state"}"\n'
    )
    config.chmod(0o600)
    heavy = ("aiogram", "discord", "aiohttp", "pydantic")
    code = (
        "import atexit, sys\n"
        f"atexit.register(lambda: print('loaded:', [m for m in {heavy!r} if m in sys.modules]))\n"
        "from evie.cli import main\n"
        f"sys.exit(main(['--config', {str(config)!r}, 'chat']))\n"
    )
    done = subprocess.run(  # stdin at its end: the chat greets, then leaves
        [sys.executable, "-c", code],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=50,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout.splitlines()
