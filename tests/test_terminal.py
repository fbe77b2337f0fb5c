"""The terminal interface, in process (fake pi) and as a real `evie chat` subprocess (real pi)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import anyio.abc
import pytest

from evie.agent.reaper import marked_processes
from evie.platforms.terminal import TerminalChat
from evie.sessions.manager import SessionManager
from tests.conftest import PI, fake_launcher
from tests.fake_llm import FakeLLM, Reply, write_agent_dir
from tests.harness import Screen, kill_and_close

pytestmark = pytest.mark.anyio


async def test_status_and_stop_work_while_a_turn_streams(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    keyboard = os.fdopen(write_fd, "w", buffering=1)
    screen = Screen()
    release = tmp_path / "release"
    held = f'script:[{{"text": "thinking hard"}}, {{"wait_file": "{release}"}}, {{"text": "!"}}]'
    async with SessionManager(fake_launcher(tmp_path)) as manager:
        with os.fdopen(read_fd) as stdin:
            chat = TerminalChat(manager, stdin=stdin, stdout=screen)
            async with anyio.create_task_group() as tg:
                tg.start_soon(chat.run)
                try:
                    keyboard.write(held + "\n")
                    await screen.wait_for("thinking hard")
                    keyboard.write("/status\n")
                    await screen.wait_for("Turn running for")
                    keyboard.write("and one more thing\n")
                    await screen.wait_for("[queued as a follow-up: #1]")
                    release.touch()
                    await screen.wait_for("echo: and one more thing")
                    keyboard.write("/stop\n")
                    await screen.wait_for("Nothing is running.")
                    keyboard.write("/new\n")
                    await screen.wait_for("Started a new session")
                    keyboard.write("/bogus\n")
                    await screen.wait_for("Unknown command /bogus")
                finally:
                    # EOF ends the chat by itself; on a failed wait it also frees the thread
                    # reading the keyboard, which no cancellation reaches
                    keyboard.close()
    text = screen.text
    assert text.index("Turn running for") < text.index("echo: and one more thing")
    assert "[failed]" not in text


async def _start_evie(config: Path) -> anyio.abc.Process:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return await anyio.open_process(
        [sys.executable, "-m", "evie.cli", "--config", str(config), "chat"], env=env
    )


async def _read_until(proc: anyio.abc.Process, needle: str, seen: list[str]) -> None:
    assert proc.stdout is not None
    with anyio.fail_after(20):
        while needle not in "".join(seen):
            seen.append((await proc.stdout.receive()).decode("utf-8", "replace"))


@pytest.mark.realpi
@pytest.mark.skipif(not PI.exists(), reason="pi is not installed (run npm ci)")
async def test_kill_9_of_evie_mid_turn_then_restart(tmp_path: Path, llm: FakeLLM) -> None:
    write_agent_dir(tmp_path / "agent", llm)
    state = tmp_path / "state"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\ncommand = ["{PI}"]\nprovider = "fake"\nmodel = "fake-1"\n'
        f'agent_dir = "{tmp_path / "agent"}"\n[state]\ndir = "{state}"\n'
    )
    llm.queue(Reply(text="A first answer."), Reply(text="slow " * 2000, chunk=5, delay=0.01))
    evie = await _start_evie(config)
    seen: list[str] = []
    try:
        assert evie.stdin is not None
        await evie.stdin.send(b"first message\n")
        await _read_until(evie, "A first answer.", seen)
        await evie.stdin.send(b"tell me a long story\n")
        await _read_until(evie, "slow slow", seen)
    finally:
        await kill_and_close(evie)  # SIGKILL: no cleanup at all
    owner = str(state.resolve())
    with anyio.fail_after(10):  # pi notices stdin EOF and exits by itself
        while marked_processes(owner):
            await anyio.sleep(0.05)

    evie = await _start_evie(config)
    seen = []
    try:
        await _read_until(evie, "session: resumed,", seen)  # the banner, from pi's session file
        await _read_until(evie, "[note] evie was stopped while your last message", seen)
        assert evie.stdin is not None
        await evie.stdin.send(b"are you back?\n")
        await _read_until(evie, "echo: are you back?", seen)
        # the same pi session resumed: the earlier exchange is in the model's context
        history = llm.user_texts(llm.requests[-1])
        assert history[0] == "first message"
        assert history[-1] == "are you back?"
        await evie.stdin.aclose()  # EOF ends the chat cleanly
        with anyio.fail_after(15):
            assert await evie.wait() == 0
    finally:
        await kill_and_close(evie)
    assert marked_processes(owner) == []
    assert "".join(seen).count("[note]") == 1


def _chat_config(tmp_path: Path, extra: str = "") -> Path:
    fake = Path(__file__).with_name("fake_pi.py")
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\ncommand = ["{sys.executable}", "{fake}"]\n{extra}'
        f'[state]\ndir = "{tmp_path / "state"}"\n'
    )
    return config


async def test_chat_works_in_the_directory_it_was_started_in(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    argv = [sys.executable, "-m", "evie.cli", "chat", "--config", str(_chat_config(tmp_path))]
    out = await anyio.run_process(argv, input=b"/status\nhello\n", env=env, cwd=project)
    text = out.stdout.decode()
    assert f"working in {project}" in text  # the banner
    assert "session: new" in text
    assert f"Working dir: {project}" in text  # /status before the first message
    assert "echo: hello" in text
    # the next start resumes, and says so
    out = await anyio.run_process(argv, input=b"", env=env, cwd=project)
    assert "session: resumed, 1 turn" in out.stdout.decode()


async def test_a_missing_cwd_is_one_line_with_the_fix(tmp_path: Path) -> None:
    config = _chat_config(tmp_path, f'cwd = "{tmp_path}/nope"\n')
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    argv = [sys.executable, "-m", "evie.cli", "--config", str(config), "chat"]
    out = await anyio.run_process(argv, input=b"hi\n", env=env, check=False)
    assert out.returncode == 2
    assert out.stderr.decode().strip() == (
        f"evie: working directory {tmp_path}/nope does not exist: "
        f"create it (mkdir -p {tmp_path}/nope) or change [agent] cwd"
    )
    assert not (tmp_path / "nope").exists()
