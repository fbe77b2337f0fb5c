"""The terminal REPL driven through prompt_toolkit's pipe input (the real line editor).

Keys are bytes as a terminal sends them: Enter is CR, a bracketed paste is
wrapped in ESC[200~ … ESC[201~, Alt-Enter is ESC CR, Ctrl-C is 0x03, Ctrl-D 0x04,
the up arrow ESC[A.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prompt_toolkit.application import create_app_session
from prompt_toolkit.history import FileHistory
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput

from evie.platforms import terminal_repl
from evie.platforms.terminal import TerminalChat
from evie.platforms.terminal_render import PlainStyle, RichStyle, Style
from evie.platforms.terminal_repl import LineEditor
from evie.sessions.manager import SessionManager
from tests.conftest import fake_launcher, pid_alive
from tests.harness import Screen

pytestmark = pytest.mark.anyio

PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"
ENTER, ALT_ENTER, CTRL_C, CTRL_D, UP = "\r", "\x1b\r", "\x03", "\x04", "\x1b[A"


@contextmanager
def keyboard() -> Iterator[PipeInput]:
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        yield pipe


@asynccontextmanager
async def repl(
    manager: SessionManager,
    pipe: PipeInput,
    history: Path | None = None,
    style: Style | None = None,
    editor: LineEditor | None = None,
) -> AsyncIterator[tuple[Screen, anyio.Event]]:
    """A TerminalChat in REPL mode; yields its screen and an event set when run() returns."""
    screen = Screen()
    editor = editor or LineEditor(history, input=pipe, output=DummyOutput())
    chat = TerminalChat(
        manager,
        stdout=screen,
        editor=editor,
        style=style or PlainStyle(),
        workdir=Path("/somewhere"),
    )
    ended = anyio.Event()

    async def run() -> None:
        await chat.run()
        ended.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        yield screen, ended
        with anyio.fail_after(10):
            await ended.wait()


@asynccontextmanager
async def loaded_repl(
    manager: SessionManager, pipe: PipeInput, history: Path
) -> AsyncIterator[Screen]:
    """A REPL whose editor has read ``history`` (in a thread, beside the prompt)."""
    editor = LineEditor(history, input=pipe, output=DummyOutput())
    async with repl(manager, pipe, editor=editor) as (screen, _ended):
        with anyio.fail_after(10):
            await editor.history_loaded()
        yield screen


async def test_a_paste_is_one_message_and_alt_enter_a_newline(tmp_path: Path) -> None:
    async with SessionManager(fake_launcher(tmp_path)) as manager:
        with keyboard() as pipe:
            async with repl(manager, pipe) as (screen, _ended):
                pipe.send_text(PASTE_START + "line one\nline two\r\nline three" + PASTE_END)
                pipe.send_text(ENTER)
                await screen.wait_for("echo: line one\nline two\nline three")
                await _idle(manager)  # else the next message may steer this turn
                pipe.send_text("first" + ALT_ENTER + "second" + ENTER)
                await screen.wait_for("echo: first\nsecond")
                pipe.send_text(CTRL_D)
            status = manager.get_status("terminal")
            assert status is not None
            assert status.turns == 2  # two messages, not five


async def test_ctrl_c_stops_the_reply_and_keeps_pi(tmp_path: Path) -> None:
    never = tmp_path / "never"
    held = "script:" + json.dumps([{"text": "working on it"}, {"wait_file": str(never)}])
    async with SessionManager(fake_launcher(tmp_path)) as manager:
        with keyboard() as pipe:
            async with repl(manager, pipe) as (screen, ended):
                pipe.send_text(held + ENTER)
                await screen.wait_for("working on it")
                status = manager.get_status("terminal")
                assert status is not None
                pid = status.pid
                assert pid is not None
                pipe.send_text(CTRL_C)
                await screen.wait_for("[aborted]")
                assert "[stopping the reply; Ctrl-C again to leave]" in screen.text
                assert not ended.is_set()
                assert pid_alive(pid)  # pi survived: only the reply was stopped
                await anyio.sleep(DOUBLE_INTERRUPT_PAUSE)
                pipe.send_text("still there?" + ENTER)
                await screen.wait_for("echo: still there?")
                after = manager.get_status("terminal")
                assert after is not None
                assert after.pid == pid
                pipe.send_text(CTRL_C + CTRL_C)  # twice in a row: leave
                with anyio.fail_after(10):
                    await ended.wait()


async def _idle(manager: SessionManager) -> None:
    with anyio.fail_after(10):
        while (status := manager.get_status("terminal")) is None or status.turn_elapsed:
            await anyio.sleep(0.01)


DOUBLE_INTERRUPT_PAUSE = 2.1  # so the next Ctrl-C in the test is a "first" one again


async def test_history_persists_across_sessions(tmp_path: Path) -> None:
    history = tmp_path / "state" / "terminal_history"
    history.parent.mkdir(parents=True)
    async with SessionManager(fake_launcher(tmp_path)) as manager:
        with keyboard() as pipe:
            async with repl(manager, pipe, history) as (screen, _ended):
                pipe.send_text("remember me" + ENTER)
                await screen.wait_for("echo: remember me")
                pipe.send_text(CTRL_D)
        assert history.stat().st_mode & 0o777 == 0o600
        with keyboard() as pipe:
            async with loaded_repl(manager, pipe, history) as screen:
                pipe.send_text(UP + ENTER)  # the previous run's line, recalled
                await screen.wait_for("echo: remember me")
                pipe.send_text(CTRL_D)


async def test_up_recalls_the_newest_lines_of_a_long_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the newest HISTORY_SIZE lines are recalled, read in prompt_toolkit's format (a
    line of several lines too); a line sent comes first; the file keeps every line (it holds
    no more than twice HISTORY_SIZE: not compacted)."""
    monkeypatch.setattr(terminal_repl, "HISTORY_SIZE", 3)
    history = tmp_path / "terminal_history"
    writer = FileHistory(str(history))  # prompt_toolkit's own format
    for i in range(6):
        writer.store_string(f"old {i}" if i != 4 else "two\nlines")
    async with SessionManager(fake_launcher(tmp_path)) as manager:
        with keyboard() as pipe:
            async with loaded_repl(manager, pipe, history) as screen:
                pipe.send_text(UP * 6 + ENTER)  # no further back than the third newest
                await screen.wait_for("echo: old 3")
                pipe.send_text(UP * 2 + ENTER)  # the line just sent, then the file's newest
                await screen.wait_for("echo: old 5")
                pipe.send_text(CTRL_D)
    kept = list(FileHistory(str(history)).load_history_strings())  # the file keeps all
    assert kept == ["old 5", "old 3", "old 5", "two\nlines", "old 3", "old 2", "old 1", "old 0"]


def _write_history(path: Path, entries: list[str]) -> None:
    writer = FileHistory(str(path))  # prompt_toolkit's own format, "# timestamp" lines and all
    for entry in entries:
        writer.store_string(entry)


def _entries(path: Path) -> list[str]:
    """The file's entries as prompt_toolkit reads them, oldest first."""
    return list(FileHistory(str(path)).load_history_strings())[::-1]


async def test_the_history_file_is_compacted_to_its_newest_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More than twice HISTORY_SIZE entries: the read rewrites the file with the newest
    HISTORY_SIZE, byte for byte as they were (timestamps, entries of several lines), 0o600,
    no temp file left; ↑ recalls them; a line sent after it is appended to the new file."""
    monkeypatch.setattr(terminal_repl, "HISTORY_SIZE", 3)
    history = tmp_path / "state" / "terminal_history"
    history.parent.mkdir()
    entries = [f"old {i}" for i in range(7)]
    entries[4], entries[6] = "two\nlines", "three\n\nlines"
    _write_history(history, entries)
    before = history.read_bytes()
    async with SessionManager(fake_launcher(tmp_path)) as manager:
        with keyboard() as pipe:
            async with loaded_repl(manager, pipe, history) as screen:
                assert _entries(history) == ["two\nlines", "old 5", "three\n\nlines"]
                assert before.endswith(history.read_bytes())  # the same bytes: timestamps kept
                assert before.count(b"\n# ") == 7
                assert history.read_bytes().count(b"\n# ") == 3
                pipe.send_text(UP * 7 + ENTER)  # no further back than the third newest
                await screen.wait_for("echo: two")
                pipe.send_text(CTRL_D)
    assert _entries(history) == ["two\nlines", "old 5", "three\n\nlines", "two\nlines"]
    assert history.stat().st_mode & 0o777 == 0o600
    assert not list(history.parent.glob(".terminal_history*"))  # no temp file left


def test_a_compaction_removes_temp_files_left_by_a_killed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill mid-compaction leaves its temp file; the next compaction removes such files
    once they are old enough not to be another process's compaction in flight."""
    monkeypatch.setattr(terminal_repl, "HISTORY_SIZE", 2)
    history = tmp_path / "terminal_history"
    _write_history(history, [f"line {i}" for i in range(5)])
    stale, fresh = tmp_path / ".terminal_history.abc.tmp", tmp_path / ".terminal_history.d.tmp"
    for temp in (stale, fresh):
        temp.write_bytes(b"+half a compaction")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    other = tmp_path / ".other_file.abc.tmp"  # not the history's: never touched
    other.write_bytes(b"x")
    os.utime(other, (hour_ago, hour_ago))
    assert terminal_repl.read_history(history, threading.Lock()) == ["line 4", "line 3"]
    assert _entries(history) == ["line 3", "line 4"]  # compacted
    assert not stale.exists()
    assert fresh.exists()
    assert other.exists()


def test_a_compaction_the_disk_refuses_leaves_the_file_and_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk (ENOSPC at the temp file's fsync): the history is read as it is, the
    file keeps every byte, no temp file is left, one warning line; the next read compacts."""
    monkeypatch.setattr(terminal_repl, "HISTORY_SIZE", 2)
    history = tmp_path / "terminal_history"
    _write_history(history, [f"line {i}" for i in range(5)])
    before = history.read_bytes()

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as disk:
        disk.setattr(os, "fsync", full)
        with caplog.at_level(logging.WARNING, logger=terminal_repl.__name__):
            assert terminal_repl.read_history(history, threading.Lock()) == ["line 4", "line 3"]
    assert history.read_bytes() == before
    assert not list(tmp_path.glob(".terminal_history*"))
    [record] = caplog.records
    assert "could not compact the terminal history" in record.getMessage()
    assert "No space left on device" in record.getMessage()
    assert "\n" not in record.getMessage()
    assert record.exc_info is None  # (no traceback at warning level)
    assert terminal_repl.read_history(history, threading.Lock()) == ["line 4", "line 3"]
    assert _entries(history) == ["line 3", "line 4"]  # the disk back: compacted


def test_a_history_within_twice_the_cap_is_left_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(terminal_repl, "HISTORY_SIZE", 3)
    history = tmp_path / "terminal_history"
    _write_history(history, ["a", "b\nc", "d", "e", "f", "g"])  # 6 = twice 3
    before, inode = history.read_bytes(), history.stat().st_ino
    assert terminal_repl.read_history(history, threading.Lock()) == ["g", "f", "e"]
    assert history.read_bytes() == before
    assert history.stat().st_ino == inode
    _write_history(history, ["h"])  # 7: now compacted
    assert terminal_repl.read_history(history, threading.Lock()) == ["h", "g", "f"]
    assert _entries(history) == ["f", "g", "h"]


def test_a_line_stored_while_the_history_is_compacted_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line appended after the file was read, before the rename: the compaction is dropped
    (the file keeps every line), and the next read compacts it with that line."""
    monkeypatch.setattr(terminal_repl, "HISTORY_SIZE", 2)
    history = tmp_path / "terminal_history"
    _write_history(history, [f"old {i}" for i in range(5)])
    lock = threading.Lock()
    with ThreadPoolExecutor(1) as pool:
        with lock:  # as store_string holds it: the compaction waits for it to rename
            reading = pool.submit(terminal_repl.read_history, history, lock)
            deadline = time.monotonic() + 10
            while not list(tmp_path.glob(".terminal_history.*.tmp")):  # read; temp written
                assert time.monotonic() < deadline
                assert not reading.done()
                time.sleep(0.001)
            _write_history(history, ["typed meanwhile"])
        assert reading.result(timeout=10) == ["old 4", "old 3"]
    assert _entries(history) == [*(f"old {i}" for i in range(5)), "typed meanwhile"]
    assert not list(tmp_path.glob(".terminal_history.*.tmp"))
    assert terminal_repl.read_history(history, lock) == ["typed meanwhile", "old 4"]
    assert _entries(history) == ["old 4", "typed meanwhile"]


def test_lines_stored_during_reads_are_never_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chaos: the editor's history is read (and compacted) in a thread again and again while
    lines are stored beside it, at random moments; every line stored is in the file, in
    order, and each read returns the newest entries of the file as it was at some moment."""
    monkeypatch.setattr(terminal_repl, "HISTORY_SIZE", 4)
    history = tmp_path / "terminal_history"
    stored = [f"line {i}\nof two" if i % 3 == 0 else f"line {i}" for i in range(600)]
    editor = terminal_repl.RecentFileHistory(history)
    rng = random.Random(15)
    reads: list[list[str]] = []
    with ThreadPoolExecutor(1) as pool:
        reading = pool.submit(editor.load_history_strings)
        for line in stored:
            editor.store_string(line)
            if rng.random() < 0.05:  # now and then a whole read with no line stored beside it
                reads.append(list(reading.result(timeout=10)))
                reading = pool.submit(editor.load_history_strings)
                reading.result(timeout=10)  # (this one compacts: nothing was appended)
            if reading.done():
                reads.append(list(reading.result()))
                reading = pool.submit(editor.load_history_strings)
        reads.append(list(reading.result(timeout=10)))
    kept = _entries(history)
    assert kept == stored[-len(kept) :]  # nothing lost, nothing reordered
    assert len(kept) < len(stored)  # (compacted at least once)
    assert len(reads) > 20  # (23 of them waited for)
    for got in reads[1:]:
        newest = stored.index(got[0])
        assert got == stored[newest - len(got) + 1 : newest + 1][::-1]
        assert len(got) == min(4, newest + 1)
    assert not list(tmp_path.glob(".terminal_history*"))


_LINE_TEXT = st.text(  # a line's text (no newline; no lone surrogate, which UTF-8 cannot encode)
    alphabet=st.characters(codec="utf-8", exclude_characters="\n")
)
_LINES = st.one_of(
    st.builds(lambda text: "+" + text, _LINE_TEXT),
    st.sampled_from(["", "# 2026-01-01 00:00:00.000000", "+", "#", " +x"]),
    _LINE_TEXT,
)


@given(
    lines=st.lists(st.one_of(_LINES.map(str.encode), st.binary(max_size=8)), max_size=40),
    end=st.sampled_from([b"", b"\n"]),
    cap=st.integers(1, 5),
)
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_the_history_reads_and_compacts_as_prompt_toolkit_reads(
    tmp_path: Path, lines: list[bytes], end: bytes, cap: int
) -> None:
    """Any file (prompt_toolkit's format, stray lines, invalid UTF-8, a last line without a
    newline): the entries read are FileHistory's newest ``cap``; a compacted file is the old
    one's tail, and prompt_toolkit reads from it exactly the entries read."""
    history = tmp_path / "terminal_history"
    data = b"\n".join(lines) + end
    history.write_bytes(data)
    everything = list(FileHistory(str(history)).load_history_strings())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(terminal_repl, "HISTORY_SIZE", cap)
        got = terminal_repl.read_history(history, threading.Lock())
    assert got == everything[:cap]
    after = history.read_bytes()
    if len(everything) > 2 * cap:
        assert data.endswith(after)
        assert list(FileHistory(str(history)).load_history_strings()) == got
    else:
        assert after == data
    history.unlink()


async def test_status_before_the_first_message_names_the_session(tmp_path: Path) -> None:
    known = {"terminal": "20260101-000000-abcd1234"}
    async with SessionManager(fake_launcher(tmp_path), known_sessions=known) as manager:
        with keyboard() as pipe:
            async with repl(manager, pipe) as (screen, _ended):
                pipe.send_text("/status" + ENTER)
                await screen.wait_for("Working dir: /somewhere")
                pipe.send_text(CTRL_D)
    assert "Session 20260101-000000-abcd1234: not started yet" in screen.text


async def test_escape_sequences_from_the_model_never_reach_the_terminal(tmp_path: Path) -> None:
    hostile = (
        "# Title\n\nclear\x1b[2J\x1b[H me, retitle\x1b]0;pwned\x07 the window, "
        "\x9b31m C1 \x1bc reset\r\n\n```python\nprint('x')\x1b[8m\n```\n"
    )
    steps = [{"text": hostile, "chunk": 3}]
    async with SessionManager(fake_launcher(tmp_path)) as manager:
        with keyboard() as pipe:
            style = RichStyle(80, color=True)
            async with repl(manager, pipe, style=style) as (screen, _ended):
                pipe.send_text("script:" + json.dumps(steps) + ENTER)
                await screen.wait_for("print")
                await screen.wait_for("the window")
                pipe.send_text(CTRL_D)
    text = screen.text
    for bad in ("\x1b[2J", "\x1b[H", "\x1b]", "pwned\x07", "\x9b", "\x1bc", "\x1b[8m", "\r"):
        assert bad not in text
    assert "Title" in text
    assert "\x1b[" in text  # rich's own styling is there (colours, bold)


async def test_evie_chat_on_a_real_terminal_is_the_repl(tmp_path: Path) -> None:
    """The whole `evie chat` on a pty: TTY detection, the prompt, rendering, paste, Ctrl-D."""
    import sys

    from tests.test_setup import Terminal, _env

    fake = Path(__file__).with_name("fake_pi.py")
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\ncommand = ["{sys.executable}", "{fake}"]\n'
        f'[state]\ndir = "{tmp_path / "state"}"\n'
    )
    argv = [sys.executable, "-m", "evie.cli", "chat", "--config", str(config)]
    term = Terminal(argv, _env(), pty=True)
    try:
        await term.expect("Ctrl-D leaves")  # the greeting, before the first prompt
        await term.expect("session: new")  # once the session manager is up
        await term.expect("›")  # the prompt (drawn with cursor moves, not a space)
        steps = [{"text": "**bold** and \x1b]0;pwned\x07 safe"}]
        term.type("script:" + json.dumps(steps) + ENTER)
        await term.expect(r"\x1b\[1mbold\x1b\[0m and  safe")  # rendered, escape removed
        await term.expect("›")
        term.type(PASTE_START + "one\ntwo" + PASTE_END + ENTER)
        await term.expect(r"echo: one\s+two")
        await term.expect("›")
        term.type(CTRL_D)
        assert await term.exit_code() == 0
    finally:
        term.close()
    assert "\x1b]0;" not in term.screen  # (the typed line shows it JSON-escaped, inert)
    assert (tmp_path / "state" / "terminal_history").read_text().count("+one") == 1


async def test_login_points_at_setup_instead_of_unknown_command(tmp_path: Path) -> None:
    async with SessionManager(fake_launcher(tmp_path)) as manager:
        with keyboard() as pipe:
            async with repl(manager, pipe) as (screen, _ended):
                pipe.send_text("/login" + ENTER)
                await screen.wait_for("`evie setup`")
                pipe.send_text(CTRL_D)
    assert "Unknown command" not in screen.text
    assert manager.get_status("terminal") is None  # nothing was started for it
