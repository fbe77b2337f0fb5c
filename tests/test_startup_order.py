"""`evie run` start-up order: nothing that boots a process competes with the first poll."""

from __future__ import annotations

import importlib.util
import json
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


#: a fresh `evie run` reports, when asked on stdin, what it has imported and whether the
#: collector ran while aiogram was loaded (gc callbacks record every collection's start)
_SNAPSHOT_PROBE = """
import gc, json, sys, threading
collections = []
gc.callbacks.append(
    lambda phase, info: phase == "start" and collections.append("aiogram" in sys.modules)
)

def answer():
    sys.stdin.readline()
    connector = sys.modules.get("aiohttp.connector")  # its two default TLS contexts
    tls = [type(getattr(connector, name, None)).__name__
           for name in ("_SSL_CONTEXT_VERIFIED", "_SSL_CONTEXT_UNVERIFIED")]
    print("SNAPSHOT " + json.dumps({"modules": sorted(sys.modules), "gc": collections,
                                    "tls": tls}), flush=True)

threading.Thread(target=answer, daemon=True).start()
from evie.cli import main
sys.exit(main(sys.argv[1:]))
"""

#: imported by nothing `evie run` does before its first poll (Telegram only, no [http])
NOT_BEFORE_THE_FIRST_POLL = (
    "discord",  # no [discord] token
    "evie.platforms.discord",
    "evie.http",  # no [http] listen
    "aiohttp.web",
    "prompt_toolkit",  # no --terminal
    "rich",
    "evie.platforms.terminal",
    "evie.setup.wizard",
    "evie.setup.doctor",
    # aiogram's types only a message's fields name: loaded beside the first getUpdates
    "aiogram.types.photo_size",
    "aiogram.types.voice",
    "aiogram.types.document",
    # aiogram's API methods evie does not call: imported when first called (Bot names all)
    "aiogram.methods.send_dice",
    "aiogram.methods.set_passport_data_errors",
    "aiogram.methods.add_sticker_to_set",
    # aiogram's dispatcher, router, filters, FSM: evie polls on its own (adr/0007)
    "aiogram.dispatcher.dispatcher",
    "aiogram.dispatcher.router",
    "aiogram.filters",
    "aiogram.fsm",
    "aiogram.enums.dice_emoji",  # and the enums no loaded type names
    "aiogram.enums.currency",
)


async def test_evie_run_loads_only_what_its_first_poll_needs(tmp_path: Path) -> None:
    """In a fresh `evie run`, stopped while Telegram answers deleteWebhook (right before
    the first getUpdates): nothing of another platform, the HTTP server, the terminal or
    the set-up is imported, most of aiogram's types and methods are not, no certificate
    store has been read, and the collector has not run over the objects aiogram's import
    made (adr/0016 part 7)."""
    async with running_fake_telegram() as fake:
        gate = fake.hold("deleteWebhook")
        path = tmp_path / "config.toml"
        path.write_text(
            f'[agent]\ncommand = ["{sys.executable}", "{FAKE_PI}"]\n'
            f'[sessions]\nwarm_spares = 1\n[state]\ndir = "{tmp_path / "state"}"\n'
            f'[telegram]\ntoken = "{TOKEN}"\napi_url = "{fake.base_url}"\n'
            "allowed_user_ids = [42]\n"
        )
        path.chmod(0o600)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("EVIE_GC", None)
        async with await anyio.open_process(
            [sys.executable, "-c", _SNAPSHOT_PROBE, "--config", str(path), "run"],
            env=env,
            cwd=tmp_path,
        ) as child:
            assert child.stdin is not None
            assert child.stdout is not None
            try:
                await fake.wait_for(lambda: fake.method_calls("deleteWebhook"), seconds=50)
                await child.stdin.send(b"\n")
                out = b""
                with anyio.fail_after(20):
                    while b"\n" not in out.partition(b"SNAPSHOT ")[2]:
                        out += await child.stdout.receive()
            finally:
                child.terminate()
                gate.set()
                with anyio.fail_after(30):
                    await child.wait()
    snapshot = json.loads(out.partition(b"SNAPSHOT ")[2].split(b"\n")[0])
    modules = set(snapshot["modules"])
    assert "aiogram" in modules
    assert "evie.platforms.telegram" in modules
    assert [m for m in NOT_BEFORE_THE_FIRST_POLL if m in modules] == []
    spec = importlib.util.find_spec("aiogram")
    assert spec is not None
    assert spec.origin is not None
    types_dir = Path(spec.origin).parent / "types"
    every_type = {p.stem for p in types_dir.glob("*.py")} - {"__init__"}
    loaded = {m.rpartition(".")[2] for m in modules if m.startswith("aiogram.types.")}
    assert len(loaded) < len(every_type) / 2, f"{len(loaded)} of {len(every_type)} loaded"
    methods = [m for m in modules if m.startswith("aiogram.methods.")]
    assert len(methods) < 20, methods  # of ~190: the few evie calls, and their base
    # aiohttp's default TLS contexts (unused by Telegram): certificates not read (adr/0016 §7)
    assert snapshot["tls"] == ["_LoadedOnUse", "_LoadedOnUse"]
    assert snapshot["gc"]
    assert True not in snapshot["gc"]
