"""The agent cannot reach evie's secrets: bubblewrap sandbox, run as a real `evie chat`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from evie.agent.events import Outcome, Prompt, ToolStarted, TurnFinished
from evie.agent.launcher import PiLauncher
from evie.agent.sandbox import choose
from evie.config import parse_config
from evie.errors import AgentStartError
from evie.runtime import open_runtime
from evie.sessions.manager import SessionManager
from tests.conftest import FAKE_PI, PI, Recorder, fake_launcher
from tests.fake_llm import FakeLLM, Reply, write_agent_dir

pytestmark = pytest.mark.anyio

CONFIG_TOKEN = "123:CONFIG-SECRET-TOKEN"
ENV_TOKEN = "456:ENV-SECRET-TOKEN"
OTHER_SESSION = "OTHER-SESSION-SECRET"

needs_bwrap = pytest.mark.skipif(
    choose("auto").bwrap is None, reason="bubblewrap is missing or does not work here"
)


def thief(config: Path, state: Path) -> str:
    """A shell "tool" that tries every route to evie's secrets."""
    return "; ".join(
        [
            "for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f; done 2>/dev/null",
            "tr '\\0' '\\n' < /proc/$PPID/environ 2>/dev/null",
            "ps e -A ww 2>/dev/null",
            f"cat {config} 2>/dev/null",
            f"cat {state}/state.json {state}/sessions/*.jsonl 2>/dev/null",
            f"grep -r . {state} 2>/dev/null | head -c 100000",
            f"ls -la {state} {state}/sessions 2>&1",
            "echo THIEF-DONE",
        ]
    )


async def run_evie_chat(tmp_path: Path, sandbox: str) -> str:
    """`evie chat` as its own process (so /proc/<evie>/environ holds the token)."""
    state = tmp_path / "state"
    (state / "sessions").mkdir(parents=True)
    (state / "sessions" / "other-chat.jsonl").write_text(OTHER_SESSION + "\n")
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\ncommand = ["{sys.executable}", "{FAKE_PI}"]\nsandbox = "{sandbox}"\n'
        f'[state]\ndir = "{state}"\n[telegram]\ntoken = "{CONFIG_TOKEN}"\n'
    )
    config.chmod(0o600)
    prompt = "script:" + json.dumps([{"shell": thief(config, state)}])
    env = {**os.environ, "EVIE_TELEGRAM_TOKEN": ENV_TOKEN, "EVIE_CONFIG": str(config)}
    with anyio.fail_after(40):
        done = await anyio.run_process(
            [sys.executable, "-m", "evie.cli", "chat"],
            input=(prompt + "\n").encode(),
            env=env,
            check=False,
        )
    out = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 0, done.stderr.decode()
    assert "THIEF-DONE" in out
    return out


@needs_bwrap
async def test_with_the_sandbox_no_route_reaches_the_token(tmp_path: Path) -> None:
    out = await run_evie_chat(tmp_path, "bwrap")
    for secret in (CONFIG_TOKEN, ENV_TOKEN, OTHER_SESSION):
        assert secret not in out
    assert "other-chat.jsonl" not in out  # other sessions are not even listed


async def test_without_the_sandbox_the_same_thief_finds_it(tmp_path: Path) -> None:
    """The control: proves the thief above would notice a secret if it could reach one."""
    out = await run_evie_chat(tmp_path, "off")
    assert CONFIG_TOKEN in out
    assert OTHER_SESSION in out


@needs_bwrap
@pytest.mark.realpi
@pytest.mark.skipif(not PI.exists(), reason="pi is not installed (run npm ci)")
async def test_the_real_pi_runs_a_tool_inside_the_sandbox(tmp_path: Path, llm: FakeLLM) -> None:
    state = tmp_path / "state"
    config_file = tmp_path / "config.toml"
    config_file.write_text(f'[telegram]\ntoken = "{CONFIG_TOKEN}"\n')
    command = (
        f"cat {config_file}; ls {state}; git --version; node --version; echo made > made.txt; pwd"
    )
    llm.queue(Reply(tool=("bash", {"command": command})), Reply(text="all done"))
    write_agent_dir(state / "agent", llm)
    config = parse_config(
        {
            "agent": {"command": [str(PI)], "provider": "fake", "model": "fake-1",
                      "sandbox": "bwrap"},
            "state": {"dir": str(state)},
        },
        source=config_file,
    )  # fmt: skip
    async with open_runtime(config) as runtime:
        rec = Recorder()
        with anyio.fail_after(45):
            result = await runtime.manager.send("chat", Prompt("run it"), rec)
        assert result == TurnFinished(Outcome.DONE)
        assert rec.of(ToolStarted)[0].tool_name == "bash"
        session_id = runtime.manager._slots["chat"].session_id
    tool_output = json.dumps([m for m in llm.requests[-1]["messages"] if m["role"] == "tool"])
    assert CONFIG_TOKEN not in tool_output
    assert "state.json" not in tool_output
    assert "evie.lock" not in tool_output
    assert "git version" in tool_output
    assert "v20" in tool_output
    work = tmp_path / "data" / "evie" / "work" / session_id
    assert (work / "made.txt").read_text() == "made\n"  # the work dir is writable, and kept
    assert str(work) in tool_output
    history = (state / "sessions" / f"{session_id}.jsonl").read_text()
    assert "all done" in history  # pi wrote its session file through the sandbox


# -- without the sandbox --------------------------------------------------------------------


def test_work_dirs_are_outside_the_state_dir(tmp_path: Path) -> None:
    launcher = PiLauncher(command=("pi",), state_dir=tmp_path / "state", agent_dir=tmp_path / "a")
    cwd = launcher.spec_for("20260101-000000-abcd").cwd
    assert cwd == (tmp_path / "data" / "evie" / "work" / "20260101-000000-abcd").resolve()
    assert not cwd.is_relative_to((tmp_path / "state").resolve())


@pytest.mark.parametrize("bad", ["../../etc", "/etc/passwd", "a/b", "..", "", "x" * 200, "a\nb"])
def test_session_ids_that_are_paths_are_refused(tmp_path: Path, bad: str) -> None:
    launcher = PiLauncher(command=("pi",), state_dir=tmp_path / "state", agent_dir=tmp_path / "a")
    with pytest.raises(AgentStartError):
        launcher.spec_for(bad)


async def test_a_tampered_state_file_cannot_point_pi_elsewhere(tmp_path: Path) -> None:
    known = {"chat": "../../../../tmp/evil", "ok": "20260101-000000-abcd"}
    async with SessionManager(fake_launcher(tmp_path), known_sessions=known) as manager:
        assert await manager.send("chat", Prompt("hi"), Recorder()) == TurnFinished(Outcome.DONE)
        slot = manager._slots["chat"]
        assert ".." not in slot.session_id
        assert slot.process is not None
        session_file = Path(slot.process.state.sessionFile or "")
        assert session_file.parent == (tmp_path / "state" / "sessions").resolve()
        await manager.send("ok", Prompt("hi"), Recorder())
        assert manager._slots["ok"].session_id == "20260101-000000-abcd"


def test_evie_makes_itself_undumpable(tmp_path: Path) -> None:
    """After `evie` starts, its /proc files are no longer readable by same-user processes."""
    code = (
        "import ctypes, sys, evie.cli\n"
        "assert ctypes.CDLL(None).prctl(3, 0, 0, 0, 0) == 1\n"  # PR_GET_DUMPABLE: yes
        "evie.cli.main(['status'])\n"
        "sys.exit(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))\n"  # now: 0
    )
    env = {**os.environ, "EVIE_CONFIG": str(tmp_path / "missing.toml")}
    done = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_evie_doctor_reports_the_sandbox_in_force(tmp_path: Path, mode: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\ncommand = ["{sys.executable}", "{FAKE_PI}"]\nsandbox = "{mode}"\n'
        f'[state]\ndir = "{tmp_path / "state"}"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "evie.cli", "--config", str(config), "doctor", "--no-turn"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    expected = "bwrap" if mode == "auto" and choose("auto").bwrap is not None else "off"
    lines = done.stdout.splitlines()
    if expected == "off":  # a warning with the way out, not a failure
        assert any(line.startswith("! sandbox: off") for line in lines), done.stdout
    else:
        assert any(line.startswith("✓ sandbox: bwrap") for line in lines), done.stdout
