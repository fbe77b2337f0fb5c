"""`evie doctor`: each broken set-up gives its ✗ line (with the fix) and a non-zero exit."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from evie.agent.sandbox import choose
from evie.config import Config, parse_config
from evie.setup.doctor import run_doctor
from tests.conftest import PI
from tests.fake_discord import TOKEN as DISCORD_TOKEN
from tests.fake_discord import FakeDiscord
from tests.fake_llm import FakeLLM, write_agent_dir
from tests.fake_telegram import TOKEN, FakeTelegram

ROOT = Path(__file__).resolve().parent.parent
FAKE_PI = ROOT / "tests" / "fake_pi.py"
pytestmark = pytest.mark.anyio


def base(tmp_path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "agent": {"command": [sys.executable, str(FAKE_PI)]},
        "state": {"dir": str(tmp_path / "state")},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


async def doctor(data: dict[str, Any], *, turn: bool = True) -> tuple[int, list[str]]:
    config: Config = parse_config(data, source=Path("/test/config.toml"), environ={})
    lines: list[str] = []
    code = await run_doctor(config, turn=turn, echo=lines.append)
    return code, lines


def failures(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("✗")]


async def test_a_healthy_setup_is_all_ticks(
    tmp_path: Path, telegram: FakeTelegram, discord: FakeDiscord
) -> None:
    data = base(
        tmp_path,
        telegram={"token": TOKEN, "api_url": telegram.base_url, "allowed_user_ids": [42]},
        discord={"token": DISCORD_TOKEN, "api_url": discord.api_url, "allowed_user_ids": [42]},
    )
    code, lines = await doctor(data)
    assert failures(lines) == []
    assert code == 0
    text = "\n".join(lines)
    assert "✓ pi 0.0.0-fake" in text
    assert "✓ model: fake/fake-1; test turn answered" in text
    assert "✓ telegram: token valid, bot @evie_test_bot" in text
    assert "✓ discord: token valid, bot evie" in text
    # the sandbox [agent] sandbox = "auto" gives here, as `evie run` would choose it
    in_force = "✓ sandbox: bwrap" if choose("auto").bwrap is not None else "! sandbox: off"
    assert in_force in text
    assert "✓ renderer: compiled (mypyc)" in text  # built by ./dev (tests/test_compiled.py)
    assert lines[-1] == "All good."


BROKEN: dict[str, tuple[dict[str, Any], str]] = {
    "pi missing": (
        {"agent": {"command": ["/nonexistent/pi"]}},
        "✗ pi: /nonexistent/pi not found: run `npm ci`",
    ),
    "missing cwd": (
        {"agent": {"cwd": "/nonexistent/project"}},
        "✗ working dir /nonexistent/project does not exist: create it",
    ),
    "unwritable state dir": (
        {"state": {"dir": "{tmp}/a-file/state"}},
        "✗ state dir {tmp}/a-file/state is not writable",
    ),
    "http port taken": (
        {"http": {"listen": "127.0.0.1:{busy}"}},
        "✗ http: 127.0.0.1:{busy} is used by another program",
    ),
    "agent dir missing": (
        {"agent": {"agent_dir": "{tmp}/no-agent"}},
        "✗ agent dir {tmp}/no-agent ([agent] agent_dir) does not exist",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
async def test_each_broken_setup_has_its_cross(tmp_path: Path, case: str) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        sections, expected = BROKEN[case]

        def fill(value: Any) -> Any:
            if isinstance(value, str):
                return value.replace("{tmp}", str(tmp_path)).replace("{busy}", str(port))
            return value

        data = base(tmp_path)
        for name, values in sections.items():
            data.setdefault(name, {}).update({k: fill(v) for k, v in values.items()})
        code, lines = await doctor(data, turn=False)
    assert code == 1
    assert any(line.startswith(fill(expected)) for line in failures(lines)), lines
    assert not (tmp_path / "no-agent").exists()  # the doctor changes nothing


async def test_bad_tokens_and_empty_allow_lists(
    tmp_path: Path, telegram: FakeTelegram, discord: FakeDiscord
) -> None:
    data = base(
        tmp_path,
        telegram={"token": "123:wrong", "api_url": telegram.base_url},
        discord={"token": "wrong", "api_url": discord.api_url},
    )
    code, lines = await doctor(data, turn=False)
    assert code == 1
    assert failures(lines) == [
        "✗ telegram: Telegram rejected the bot token (Unauthorized): copy it again from "
        "@BotFather (/mybots → API Token)",
        "✗ telegram: allowed_user_ids is empty, so everyone is refused: run `evie setup` "
        "(it captures your id) or add it to [telegram] allowed_user_ids",
        "✗ discord: Discord rejected the bot token (401 Unauthorized): copy it again from the "
        "Developer Portal (your application → Bot → Reset Token)",
        "✗ discord: allowed_user_ids is empty, so everyone is refused: run `evie setup` "
        "(it captures your id) or add it to [discord] allowed_user_ids",
    ]


async def test_a_bot_api_that_answers_html_is_a_cross_not_a_crash(tmp_path: Path) -> None:
    from aiohttp import web

    from tests.loopback import serve_on_loopback

    async def bad_gateway(request: web.Request) -> web.Response:
        return web.Response(text="<html>502 Bad Gateway</html>", status=502)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", bad_gateway)
    async with serve_on_loopback(app) as port:
        data = base(
            tmp_path,
            telegram={
                "token": TOKEN,
                "api_url": f"http://127.0.0.1:{port}",
                "allowed_user_ids": [1],
            },
        )
        code, lines = await doctor(data, turn=False)
    assert code == 1
    assert failures(lines) == [
        f"✗ telegram: http://127.0.0.1:{port} did not answer like the Telegram Bot API "
        "(HTTP 502); check [telegram] api_url"
    ]


@pytest.mark.realpi
@pytest.mark.skipif(not PI.exists(), reason="pi is not installed (run npm ci)")
async def test_real_pi_without_a_model_and_with_a_dead_endpoint(
    tmp_path: Path, llm: FakeLLM
) -> None:
    no_model = base(tmp_path, agent={"command": [str(PI)]})
    code, lines = await doctor(no_model)
    assert code == 1
    assert any(line.startswith("✗ model: pi has no usable model") for line in lines), lines
    assert "evie setup" in failures(lines)[0]

    agent_dir = tmp_path / "agent"
    write_agent_dir(agent_dir, llm, retries=0)
    dead = llm.base_url.replace(str(llm.port), str(_closed_port()))
    models = (agent_dir / "models.json").read_text().replace(llm.base_url, dead)
    (agent_dir / "models.json").write_text(models)
    dead_endpoint = base(
        tmp_path,
        agent={"command": [str(PI)], "agent_dir": str(agent_dir), "provider": "fake",
               "model": "fake-1"},
    )  # fmt: skip
    code, lines = await doctor(dead_endpoint)
    assert code == 1
    bad = failures(lines)
    assert len(bad) == 1
    assert bad[0].startswith("✗ model: fake/fake-1; the test turn failed: ")

    alive = base(
        tmp_path,
        agent={"command": [str(PI)], "agent_dir": str(tmp_path / "ok"), "provider": "fake",
               "model": "fake-1"},
    )  # fmt: skip
    write_agent_dir(tmp_path / "ok", llm)
    code, lines = await doctor(alive)
    assert code == 0, lines
    assert any("test turn answered" in line and "echo: This is a connection test" in line
               for line in lines)  # fmt: skip


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_cli_exit_status_and_config_after_the_subcommand(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\ncommand = ["{sys.executable}", "{FAKE_PI}"]\ncwd = "{tmp_path}/gone"\n'
        f'[state]\ndir = "{tmp_path / "state"}"\n'
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for command in ("doctor", "check"):  # check is the old name
        out = subprocess.run(
            [sys.executable, "-m", "evie.cli", command, "--config", str(config), "--no-turn"],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert out.returncode == 1, out.stderr
        assert f"✗ working dir {tmp_path}/gone does not exist" in out.stdout
        assert out.stdout.rstrip().endswith("1 problem(s) to fix.")
