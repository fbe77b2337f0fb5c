"""`evie setup` end to end: the real pi against the fake LLM, the fake Bot API, the fake Discord.

Run as a subprocess, non-interactively (flags) and interactively through a pty
(prompts answered as a person would type them; tokens read without echo).
The owner is whoever sends the one-time code printed by the wizard.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import termios
import tomllib
from pathlib import Path

import anyio
import pytest

from evie.config import load_config
from evie.setup.doctor import run_doctor
from tests.conftest import PI
from tests.fake_discord import BOT_ID, FakeDiscord
from tests.fake_discord import TOKEN as DISCORD_TOKEN
from tests.fake_llm import FakeLLM, write_agent_dir
from tests.fake_telegram import TOKEN, FakeTelegram

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.realpi,
    pytest.mark.skipif(not PI.exists(), reason="pi is not installed (run npm ci)"),
]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVIE_")}
    return {**env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **extra}


def _become_controlling_tty() -> None:  # in the child, after setsid: getpass reads /dev/tty
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A child process on a pty (or plain pipes), read as one growing screen."""

    def __init__(self, argv: list[str], env: dict[str, str], *, pty: bool) -> None:
        if pty:
            self._fd, slave = os.openpty()
            self.proc = subprocess.Popen(
                argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                start_new_session=True, preexec_fn=_become_controlling_tty,
            )  # fmt: skip
            os.close(slave)
        else:
            read, write = os.pipe()
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=write, stderr=write, env=env
            )
            os.close(write)
            self._fd = read
        self.screen = ""
        self._cursor = 0

    def _read(self) -> str:
        try:
            return os.read(self._fd, 4096).decode("utf-8", "replace")
        except OSError:  # EIO: the pty's other side is closed
            return ""

    async def expect(self, pattern: str, seconds: float = 30) -> re.Match[str]:
        with anyio.move_on_after(seconds):
            while True:
                found = re.compile(pattern).search(self.screen, self._cursor)
                if found:
                    self._cursor = found.end()
                    return found
                data = await anyio.to_thread.run_sync(self._read, abandon_on_cancel=True)
                if not data:
                    raise AssertionError(f"ended before {pattern!r}:\n{self.screen}")
                self.screen += data
        raise AssertionError(f"no {pattern!r} within {seconds:g}s:\n{self.screen!r}")

    def type(self, text: str) -> None:
        os.write(self._fd, text.encode())

    async def exit_code(self, seconds: float = 30) -> int:
        with anyio.fail_after(seconds):
            while data := await anyio.to_thread.run_sync(self._read, abandon_on_cancel=True):
                self.screen += data
            return await anyio.to_thread.run_sync(self.proc.wait)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self._fd)


def setup_argv(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "evie.cli", "setup", "--config", str(config), *args]


@pytest.mark.timeout(150)  # two real-pi turns and two captures, on a busy 2-core machine
async def test_non_interactive_setup_with_a_local_server_and_both_bots(
    tmp_path: Path, llm: FakeLLM, telegram: FakeTelegram, discord: FakeDiscord
) -> None:
    config, state = tmp_path / "evie" / "config.toml", tmp_path / "state"
    argv = setup_argv(
        config, "--non-interactive", "--state-dir", str(state),
        "--model-source", "local", "--local-url", llm.base_url, "--model", "fake-1",
        "--telegram-token", TOKEN, "--telegram-api-url", telegram.base_url,
        "--discord-token", DISCORD_TOKEN, "--discord-api-url", discord.api_url,
        "--discord-gateway-url", discord.gateway_url, "--capture-timeout", "40",
    )  # fmt: skip
    term = Terminal(argv, _env(), pty=False)
    try:
        await term.expect(r"✓ local/fake-1 answered in [\d.]+s: echo: This is a connection test")
        await term.expect(r"✓ token valid: bot @evie_test_bot")
        code = (await term.expect(r"then send this code: (\d{6})")).group(1)
        telegram.push_message("hello?", user_id=666)  # a stranger without the code
        telegram.push_message("/start", user_id=4242, username="owner")
        telegram.push_message(f"here it is: {code}", user_id=4242, username="owner")
        await term.expect(r"✓ you are Telegram user 4242 \(@owner\)")

        await term.expect(r"✓ token valid: bot evie")
        invite = await term.expect(r"https://discord\.com/oauth2/authorize\S+")
        assert f"client_id={BOT_ID}&scope=bot+applications.commands&permissions=" in invite[0]
        dcode = (await term.expect(r"with this code: (\d{6})")).group(1)
        await discord.wait_for(lambda: discord.identifies >= 1)
        await discord.push_message("hi bot", user_id=5555)
        await discord.push_message(dcode, user_id=4343)
        await term.expect(r"✓ you are Discord user 4343 \(@user4343\)")
        assert await term.exit_code() == 0, term.screen
    finally:
        term.close()
    assert "Next steps:" in term.screen
    assert "evie --config" in term.screen
    assert "service install" in term.screen
    # the bots told each person what happened
    assert telegram.chat_view(666) == [
        "Hello! Now send the 6-digit code shown in the terminal running `evie setup`."
    ]
    assert telegram.chat_view(4242)[-1].startswith("✅ You are this bot's owner now.")
    assert "5555" not in term.screen
    # the config: private, valid, with the captured owners only
    assert config.stat().st_mode & 0o777 == 0o600
    loaded = load_config(config, environ={})
    assert loaded.telegram.allowed_user_ids == {4242}
    assert loaded.discord.allowed_user_ids == {4343}
    assert (loaded.agent.provider, loaded.agent.model) == ("local", "fake-1")
    models = json.loads((state / "agent" / "models.json").read_text())
    assert models["providers"]["local"]["baseUrl"] == llm.base_url
    # and the doctor agrees, with a real turn through the same pi and model
    lines: list[str] = []
    assert await run_doctor(loaded, echo=lines.append) == 0, lines


async def test_interactive_setup_through_a_pty(
    tmp_path: Path, llm: FakeLLM, telegram: FakeTelegram
) -> None:
    config, state = tmp_path / "config.toml", tmp_path / "state"
    config.write_text("# my notes\n[sessions]\nmax_processes = 3\n")
    argv = setup_argv(
        config, "--state-dir", str(state), "--telegram-api-url", telegram.base_url,
        "--capture-timeout", "40",
    )  # fmt: skip
    term = Terminal(argv, _env(), pty=True)
    try:
        await term.expect(r"Updating .*config\.toml")
        await term.expect(r"How should pi reach a model\?.*: ")
        term.type("local\r")
        await term.expect(r"Server URL \[http://127\.0\.0\.1:8080/v1\]: ")
        term.type(llm.base_url + "\r")
        await term.expect(r"Model id \(as the server names it\) \[default\]: ")
        term.type("fake-1\r")
        await term.expect(r"✓ local/fake-1 answered")
        await term.expect(r"Bot token from @BotFather \(empty: skip Telegram\): ")
        term.type(TOKEN + "\r")
        code = (await term.expect(r"then send this code: (\d{6})")).group(1)
        telegram.push_message(code, user_id=777)
        await term.expect(r"✓ you are Telegram user 777")
        await term.expect(r"Bot token from the Developer Portal \(empty: skip Discord\): ")
        term.type("\r")
        await term.expect(r"skipped")
        assert await term.exit_code() == 0, term.screen
    finally:
        term.close()
    assert TOKEN not in term.screen  # read without echo
    data = tomllib.loads(config.read_text())
    assert data["sessions"] == {"max_processes": 3}  # what was there is kept
    assert data["telegram"]["allowed_user_ids"] == [777]
    assert data["telegram"]["token"] == TOKEN
    assert (config.parent / "config.toml.bak").read_text().startswith("# my notes")
    assert config.stat().st_mode & 0o777 == 0o600


async def test_api_key_from_the_environment_goes_to_the_agent_dir(
    tmp_path: Path, llm: FakeLLM
) -> None:
    config, state = tmp_path / "config.toml", tmp_path / "state"
    write_agent_dir(state / "agent", llm)  # "fake" is a provider pi knows here
    base = ["--non-interactive", "--state-dir", str(state), "--model-source", "api-key",
            "--provider", "fake", "--model", "fake-1", "--api-key-env", "FAKE_KEY",
            "--skip-telegram", "--skip-discord"]  # fmt: skip
    missing = await anyio.run_process(setup_argv(config, *base), env=_env(), check=False)
    assert missing.returncode == 1
    assert "$FAKE_KEY is not set: run `export FAKE_KEY=<your key>`" in missing.stderr.decode()
    assert not config.exists()

    # (run_process, not subprocess.run: the fake LLM answers on this test's event loop)
    done = await anyio.run_process(
        setup_argv(config, *base), env=_env(FAKE_KEY="sk-secret"), check=False
    )
    output = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, output
    auth = state / "agent" / "auth.json"
    assert json.loads(auth.read_text()) == {"fake": {"type": "api_key", "key": "sk-secret"}}
    assert auth.stat().st_mode & 0o777 == 0o600
    assert "sk-secret" not in output + config.read_text()


async def test_a_dead_model_stops_the_wizard_before_writing(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    agent_dir = tmp_path / "state" / "agent"
    agent_dir.mkdir(parents=True)
    (agent_dir / "settings.json").write_text('{"retry": {"enabled": false}}')
    argv = setup_argv(
        config, "-y", "--state-dir", str(tmp_path / "state"), "--model-source", "local",
        "--local-url", "http://127.0.0.1:9/v1", "--model", "m", "--skip-telegram",
        "--skip-discord",
    )  # fmt: skip
    out = await anyio.run_process(argv, env=_env(), check=False)
    stdout = out.stdout.decode()
    assert out.returncode == 1
    assert "✗ local/m: " in stdout
    assert "fix the model settings and run `evie setup` again (nothing was written)" in stdout
    assert not config.exists()


async def test_reusing_an_existing_pi_login(tmp_path: Path, llm: FakeLLM) -> None:
    login = tmp_path / "home" / ".pi" / "agent"
    write_agent_dir(login, llm)  # as if the user had set pi up for themselves
    config = tmp_path / "config.toml"
    argv = setup_argv(
        config, "-y", "--state-dir", str(tmp_path / "state"), "--model-source", "pi-login",
        "--pi-agent-dir", str(login), "--provider", "fake", "--model", "fake-1",
        "--skip-telegram", "--skip-discord",
    )  # fmt: skip
    out = await anyio.run_process(argv, env=_env(), check=False)
    stdout = out.stdout.decode()
    assert out.returncode == 0, stdout + out.stderr.decode()
    assert f"pi will use the login in {login}" in stdout
    assert "✓ fake/fake-1 answered" in stdout
    loaded = load_config(config, environ={})
    assert loaded.agent_dir == login

    empty = tmp_path / "nobody"
    empty.mkdir()
    argv[argv.index(str(login))] = str(empty)
    out = await anyio.run_process(argv, env=_env(), check=False)
    assert out.returncode == 1
    assert f"no pi login in {empty} (no auth.json or models.json): run `pi`, then /login" in (
        out.stderr.decode()
    )
