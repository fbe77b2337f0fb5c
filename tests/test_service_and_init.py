"""`evie service` renders a unit systemd accepts; `evie init` writes the documented example."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from evie.cli import main
from evie.config import EXAMPLE, load_config, parse_config, starter_config
from evie.errors import ConfigError
from evie.setup.service import render_unit, service_command, stop_timeout

ROOT = Path(__file__).resolve().parent.parent


def _config(tmp_path: Path, grace: float = 45) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[sessions]\nshutdown_grace = {grace}\n[state]\ndir = "{tmp_path}/state"\n')
    return path


def test_the_unit_restarts_on_failure_and_outlasts_the_shutdown_grace(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, grace=45), environ={})
    unit = render_unit(config, python=sys.executable, path_env="/usr/bin:/bin")
    fields = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    assert fields["Restart"] == "on-failure"
    # more than the timeline's own waits: running turns, then aborted ones winding down
    timeline = config.sessions.shutdown_grace + config.sessions.abort_grace
    assert int(fields["TimeoutStopSec"]) == stop_timeout(config) > timeline == 45 + 10
    assert fields["KillMode"] == "mixed"  # SIGTERM to evie only: it stops pi in order
    assert fields["StandardOutput"] == fields["StandardError"] == "journal"
    assert fields["ExecStart"] == (
        f"{sys.executable} -m evie.cli --config {(tmp_path / 'config.toml').resolve()} run"
    )
    assert fields["WantedBy"] == "default.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path), environ={})
    unit = tmp_path / "evie.service"
    unit.write_text(render_unit(config))
    out = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in out.stderr.splitlines() if "evie.service" in line]
    assert out.returncode == 0, out.stderr
    assert problems == []


def test_install_writes_the_unit_and_status_and_uninstall_find_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PATH", "/nonexistent")  # no systemctl: only the file is handled
    config = load_config(_config(tmp_path), environ={})
    assert service_command("status", config) == 3
    assert service_command("install", config) == 0
    unit = tmp_path / "xdg" / "systemd" / "user" / "evie.service"
    assert "Restart=on-failure" in unit.read_text()
    assert service_command("status", config) == 0
    assert service_command("uninstall", config) == 0
    assert not unit.exists()
    assert "systemctl not found" in capsys.readouterr().out


def test_a_service_needs_a_config_file() -> None:
    with pytest.raises(ConfigError, match="evie setup"):
        render_unit(parse_config({}, environ={}))


def _commented_settings(text: str) -> list[int]:
    lines = text.splitlines()
    return [i for i, line in enumerate(lines) if re.match(r"^# [A-Za-z_]+ = ", line)]


@pytest.mark.parametrize(
    "text", [EXAMPLE.read_text(), starter_config()], ids=["example", "generated"]
)
def test_uncommenting_any_one_line_gives_a_valid_config(text: str) -> None:
    lines = text.splitlines()
    commented = _commented_settings(text)
    assert len(commented) >= 10
    for i in commented:
        edited = [*lines[:i], lines[i][2:], *lines[i + 1 :]]
        data = tomllib.loads("\n".join(edited))
        parse_config(data, environ={})  # raises on an invalid value


def test_the_generated_config_does_not_pin_the_state_dir() -> None:
    assert re.search(r"^dir = ", starter_config(), re.M) is None
    assert re.search(r"^# dir = ", starter_config(), re.M)


def test_init_writes_the_example_and_next_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "evie.toml"
    assert main(["init", "--config", str(path)]) == 0  # --config after the sub-command
    assert path.read_text() == EXAMPLE.read_text()
    assert path.stat().st_mode & 0o777 == 0o600
    out = capsys.readouterr().out
    assert f"evie --config {path} setup" in out
    assert f"evie --config {path} doctor" in out
