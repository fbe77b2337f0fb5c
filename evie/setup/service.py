"""``evie service install | uninstall | status``: ``evie run`` as a systemd user service.

The unit restarts evie when it fails (not when it was stopped), gives it more
time to stop than its own shutdown timeline needs (``shutdown_grace`` for
running turns, then the abort grace, then stopping pi), sends SIGTERM to evie
alone so evie — not systemd — stops pi and its tools in order, and leaves
logging to the journal (``journalctl --user -u evie``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from evie.config import Config
from evie.errors import ConfigError

UNIT_NAME = "evie.service"
STOP_MARGIN = 30.0  # stopping pi processes, the platforms' last lines, flushing state


def unit_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "systemd" / "user"


def stop_timeout(config: Config) -> int:
    return int(config.sessions.shutdown_grace + config.sessions.abort_grace + STOP_MARGIN)


def render_unit(config: Config, *, python: str | None = None, path_env: str | None = None) -> str:
    if config.source is None:
        raise ConfigError(
            "`evie service install` needs a config file: run `evie setup` (or `evie init`) first"
        )
    python = python or sys.executable
    config_path = config.source.resolve()
    argv = [python, "-m", "evie.cli", "--config", str(config_path), "run"]
    exec_start = " ".join(shlex.quote(a) for a in argv)
    path_env = path_env if path_env is not None else os.environ.get("PATH", "/usr/bin:/bin")
    return (
        "[Unit]\n"
        "Description=evie: pi coding agent over Telegram/Discord\n"
        "Documentation=file://"
        + str(Path(__file__).resolve().parent.parent.parent / "README.md")
        + "\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n"
        "StartLimitIntervalSec=600\n"
        "StartLimitBurst=10\n"
        "\n"
        "[Service]\n"
        "Type=exec\n"
        f"ExecStart={exec_start}\n"
        # node for pi, and whatever tools the agent uses, as in the installing shell
        f"Environment={shlex.quote('PATH=' + path_env)}\n"
        "Environment=PYTHONUNBUFFERED=1\n"
        "Restart=on-failure\n"
        "RestartSec=5\n"
        # SIGTERM to evie only: it finishes turns, then stops pi and its tools itself
        "KillMode=mixed\n"
        "KillSignal=SIGTERM\n"
        f"TimeoutStopSec={stop_timeout(config)}\n"
        "StandardOutput=journal\n"
        "StandardError=journal\n"
        "SyslogIdentifier=evie\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def _systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemctl", "--user", *args], capture_output=True, text=True)


def service_command(action: str, config: Config) -> int:
    path = unit_dir() / UNIT_NAME
    have_systemctl = shutil.which("systemctl") is not None
    if action == "install":
        unit = render_unit(config)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(unit, encoding="utf-8")
        print(f"wrote {path}")
        if not have_systemctl:
            print("systemctl not found: enable it with your init system by hand")
            return 0
        for args in (("daemon-reload",), ("enable", "--now", UNIT_NAME)):
            result = _systemctl(*args)
            if result.returncode != 0:
                print(
                    f"evie: `systemctl --user {' '.join(args)}` failed: "
                    f"{(result.stderr or result.stdout).strip()}; is a user systemd running "
                    "(`loginctl enable-linger $USER` to keep it after logout)?",
                    file=sys.stderr,
                )
                return 1
        print(
            "evie is running as a user service and starts at login.\n"
            "  journalctl --user -u evie -f        follow its log\n"
            "  systemctl --user restart evie       after changing the config\n"
            "  loginctl enable-linger $USER         keep it running while you are logged out"
        )
        return 0
    if action == "uninstall":
        if have_systemctl:
            _systemctl("disable", "--now", UNIT_NAME)
        if path.exists():
            path.unlink()
            print(f"removed {path}")
        else:
            print(f"{path} was not installed")
        if have_systemctl:
            _systemctl("daemon-reload")
        return 0
    # status
    if not path.exists():
        print(f"not installed ({path} does not exist): `evie service install`")
        return 3
    if not have_systemctl:
        print(f"installed at {path}; systemctl not found")
        return 0
    result = _systemctl("status", "--no-pager", "--lines=20", UNIT_NAME)
    print((result.stdout or result.stderr).rstrip())
    return result.returncode
