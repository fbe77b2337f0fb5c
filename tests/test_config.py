"""Configuration validation and the `evie init` / `evie check` commands."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from evie.cli import main
from evie.config import load_config, parse_config
from evie.errors import ConfigError
from evie.logs import RedactSecrets

ROOT = Path(__file__).resolve().parent.parent


def errors_of(data: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, environ={})
    return str(info.value).splitlines()[1:]


def test_defaults_need_no_file() -> None:
    config = parse_config({}, environ={})
    assert config.sessions.mid_turn == "follow_up"
    assert config.telegram.token is None
    assert config.pi_command[-1].endswith("pi")


def test_every_problem_is_reported_at_once_with_its_key_path() -> None:
    lines = errors_of(
        {
            "agent": {"command": 5, "startup_timeout": -1, "modle": "x"},
            "sessions": {"max_processes": 0, "mid_turn": "later", "idle_timeout": "soon"},
            "telegram": {"allowed_user_ids": ["me"], "api_url": "ftp://x"},
            "http": {"listen": "8080"},
            "log": {"level": "loud"},
            "extra": {},
            "state": "here",
        }
    )
    expected = [
        "agent.command: expected a program name or a list",
        "agent.startup_timeout: expected a number >= 0, got -1",
        "agent.modle: unknown key",
        "sessions.max_processes: expected a whole number >= 1, got 0",
        "sessions.mid_turn: expected one of 'follow_up', 'steer', got 'later'",
        "sessions.idle_timeout: expected a number >= 0, got 'soon'",
        "telegram.allowed_user_ids: expected a list of numeric user ids",
        "telegram.api_url: expected a URL starting with http://",
        'http.listen: expected "host:port"',
        "log.level: expected one of",
        "extra: unknown section",
        "state: expected a [state] table",
    ]
    assert len(lines) == len(expected)
    for want, line in zip(expected, lines, strict=True):
        assert want in line, (want, line)


def test_the_http_endpoint_must_be_on_loopback() -> None:
    assert "expected a loopback address" in errors_of({"http": {"listen": "0.0.0.0:8765"}})[0]
    for ok in ("127.0.0.1:8765", "localhost:1", "[::1]:8765"):
        assert parse_config({"http": {"listen": ok}}, environ={}).http.listen == ok


def test_the_upload_limit_is_1_to_2000_mb_and_a_wrong_one_says_the_fix() -> None:
    assert parse_config({}, environ={}).telegram.max_upload_mb == 50
    for ok in (1, 50, 2000):
        config = parse_config({"telegram": {"max_upload_mb": ok}}, environ={})
        assert config.telegram.max_upload_mb == ok
    for bad in (0, 2001, -5, 1.5, "50", True):
        [line] = errors_of({"telegram": {"max_upload_mb": bad}})
        assert line.strip().startswith("telegram.max_upload_mb: expected a whole number"), line
        assert "from 1 to 2000" in line
        assert "local Bot API server" in line


def test_max_chunks_is_1_to_50_and_a_wrong_one_says_the_fix() -> None:
    """Thousands of messages for one reply would flood the chat for minutes (rate limits)."""
    assert parse_config({}, environ={}).delivery.max_chunks == 8
    for ok in (1, 8, 50):
        config = parse_config({"delivery": {"max_chunks": ok}}, environ={})
        assert config.delivery.max_chunks == ok
    for bad in (51, 5000, 0, -1, 1.5, "8", True):
        lines = errors_of({"delivery": {"max_chunks": bad}})
        assert len(lines) == 1, lines
        [line] = lines
        assert line.strip().startswith(
            "delivery.max_chunks: expected a whole number from 1 to 50"
        ), line
        assert "a longer reply is sent as its first message plus a file" in line
        assert line.endswith(f", got {bad!r}"), line


def test_tokens_can_come_from_the_environment() -> None:
    config = parse_config({}, environ={"EVIE_TELEGRAM_TOKEN": "1:abc", "EVIE_DISCORD_TOKEN": "d"})
    assert config.telegram.token == "1:abc"
    assert config.discord.token == "d"


def test_a_world_readable_file_with_tokens_is_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[telegram]\ntoken = "123:abc"\n')
    path.chmod(0o644)
    assert "chmod 600" in load_config(path, environ={}).warnings[0]
    path.chmod(0o600)
    assert load_config(path, environ={}).warnings == ()


def test_unreadable_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; create one with `evie init`"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)


def test_the_example_config_is_valid() -> None:
    config = load_config(ROOT / "config.example.toml", environ={})
    assert config.sessions.max_processes == 8


def test_init_writes_a_valid_private_file_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "evie" / "config.toml"
    assert main(["init", str(path)]) == 0
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    data = tomllib.loads(path.read_text())
    parse_config(data, environ={})  # what init writes is valid as it stands
    path.write_text("# mine\n")
    assert main(["init", str(path)]) == 1
    assert path.read_text() == "# mine\n"


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "evie.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_check_probes_a_pi_start(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    fake = ROOT / "tests" / "fake_pi.py"
    state = f'[state]\ndir = "{tmp_path / "state"}"\n'
    config.write_text(f'[agent]\ncommand = ["{sys.executable}", "{fake}"]\n' + state)
    out = run_cli(config, "check")  # the old name of `evie doctor`
    assert out.returncode == 0, out.stdout + out.stderr
    assert "✓ model: fake/fake-1; test turn answered" in out.stdout
    config.write_text('[agent]\ncommand = ["/nonexistent/pi"]\n' + state)
    out = run_cli(config, "check")
    assert out.returncode == 1
    assert "✗ pi: /nonexistent/pi not found" in out.stdout


def test_log_lines_never_carry_tokens(caplog: pytest.LogCaptureFixture) -> None:
    secret = "987654321:AAF-this-is-a-telegram-token-value"
    record = logging.LogRecord(
        "t",
        logging.INFO,
        __file__,
        1,
        "url %s failed",
        (f"https://api.telegram.org/bot{secret}/getMe",),
        None,
    )
    RedactSecrets(["my-discord-token"]).filter(record)
    assert secret not in record.getMessage()
    assert "[redacted]" in record.getMessage()


def test_a_traceback_never_carries_a_token() -> None:
    from evie.logs import JsonFormatter, TextFormatter

    secret = "my-discord-token-value"
    try:
        raise RuntimeError(f"login failed with {secret}")
    except RuntimeError:
        exc_info = sys.exc_info()
    for formatter in (TextFormatter(), JsonFormatter()):
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "boom", None, exc_info)
        RedactSecrets([secret]).filter(record)
        line = formatter.format(record)
        assert secret not in line
        assert "RuntimeError: login failed with [redacted]" in line


def test_log_lines_carry_the_chat_and_session(tmp_path: Path) -> None:
    import anyio

    from evie.agent.events import Prompt
    from evie.logs import AddContext, JsonFormatter, TextFormatter
    from evie.sessions.manager import SessionManager
    from tests.conftest import Recorder, fake_launcher

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(AddContext())
    logger = logging.getLogger("evie")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:

        async def run() -> None:
            async with SessionManager(fake_launcher(tmp_path)) as manager:
                await manager.send("tg:42", Prompt("hi"), Recorder())

        anyio.run(run)
    finally:
        logger.removeHandler(handler)
    turn_lines = [r for r in records if r.getMessage().startswith("turn ")]
    assert [r.getMessage().split(" (")[0] for r in turn_lines][:1] == ["turn started"]
    assert all(getattr(r, "chat", None) == "tg:42" for r in turn_lines)
    assert all(getattr(r, "session", None) for r in turn_lines)
    text = TextFormatter().format(turn_lines[-1])
    assert "[chat=tg:42 session=" in text
    as_json = json.loads(JsonFormatter().format(turn_lines[-1]))
    assert as_json["chat"] == "tg:42"
    assert as_json["msg"].startswith("turn done")
