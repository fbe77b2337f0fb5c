"""`evie chat` start-up: the first prompt is drawn before anything only a turn needs is loaded.

anyio's asyncio backend and the chat are imported once the prompt is drawn, then the
runtime (state, sessions, pi's launcher and protocol, the sandbox probe) in a worker thread,
and it is opened beside the prompt (adr/0015, start-up); the chat is still a real REPL: a
message typed at the first prompt goes to pi and is answered.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from evie.repl import ANYIO, BESIDE_THE_PROMPT
from tests.test_setup import Terminal, _env

pytestmark = pytest.mark.anyio

#: a fresh `evie chat` writes the modules it has loaded at the moment its first prompt is
#: drawn (a spy around the editor's own "drawn" hook, which then carries on as before), and
#: at exit the modules that hold ``ssl`` as ``None`` (asyncio's, while it is hidden). The spy
#: is put in once the CLI itself imports the editor: importing it here first would load
#: asyncio (and with it ssl) before the CLI runs.
_PROBE = """
import atexit, importlib.util, os, sys

def spy(LineEditor):
    when_drawn = LineEditor.when_drawn

    def spied(self, callback):
        def drawn():
            if not os.path.exists(sys.argv[1]):  # the first call: the first prompt's drawing
                names = sorted(sys.modules)
                with open(sys.argv[1], "w") as f:
                    f.write("\\n".join(names))
            callback()
        when_drawn(self, drawn)

    LineEditor.when_drawn = spied

class AfterImport:
    def find_spec(self, name, path=None, target=None):
        if name != "evie.platforms.terminal_repl":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module
        def then_spy(module):
            exec_module(module)
            spy(module.LineEditor)
        spec.loader.exec_module = then_spy
        return spec

def without_tls():
    names = [n for n, m in list(sys.modules.items())
             if m is not None and getattr(m, "__dict__", {}).get("ssl", 0) is None]
    with open(sys.argv[1] + ".tls", "w") as f:
        f.write("\\n".join(names))

sys.meta_path.insert(0, AfterImport())
atexit.register(without_tls)
from evie.cli import main
sys.exit(main(sys.argv[2:]))
"""

#: loaded by nothing `evie chat` does before its first prompt
NOT_BEFORE_THE_PROMPT = (
    *ANYIO,  # the chat's event loop starts without anyio (the CLI imports it only to run)
    "evie.agent.sandbox",  # the bubblewrap probe runs with the runtime, beside the prompt
    *BESIDE_THE_PROMPT,
    "evie.sessions.manager",
    "evie.agent.launcher",
    "evie.agent.process",
    "evie.state",
    "evie.durable.inbox",
    "msgspec",
    "evie.daemon",  # `evie run`'s wiring: courier, frontend, renderer
    "evie.chat.streaming",
    "evie.chat.render",
    "md4c",
    "multiprocessing",
    "rich",  # loaded when the first message is sent
    "ctypes.util",  # libc is opened by its soname
    "aiogram",
    "discord",
    "aiohttp",
    "pydantic",
    "ssl",  # hidden from asyncio, then given back beside the prompt (evie.platforms.tls_later)
    "wcwidth._clip",  # wcwidth 0.3+ (a package of ~25 modules), where 0.2 is one module
    "evie.platforms.terminal_render",  # its regexes; the greeting has a module of its own
    "json",  # only JSON log lines need it
    "evie.setup.options",  # a plain `evie chat` is read without building argparse's parser
    "evie.config",  # validated beside the prompt; evie.config_file reads what comes before it
    "attrs",
    "attr",
)


def _chat_config(tmp_path: Path, *, warm_spares: int) -> Path:
    """A config running the fake pi, its state under ``tmp_path`` (0600, as evie wants)."""
    config = tmp_path / "config.toml"
    fake = Path(__file__).with_name("fake_pi.py")
    config.write_text(
        f'[agent]\ncommand = ["{sys.executable}", "{fake}"]\n'
        f'[sessions]\nwarm_spares = {warm_spares}\n[state]\ndir = "{tmp_path / "state"}"\n'
    )
    config.chmod(0o600)
    return config


async def test_the_first_prompt_is_drawn_before_the_runtime_is_loaded(tmp_path: Path) -> None:
    config = _chat_config(tmp_path, warm_spares=1)
    snapshot = tmp_path / "modules.txt"
    argv = [sys.executable, "-c", _PROBE, str(snapshot), "--config", str(config), "chat"]
    term = Terminal(argv, _env(), pty=True)
    try:
        await term.expect("Ctrl-D leaves")  # the greeting
        await term.expect("›")  # the prompt, drawn under it
        # typed at once: the message waits for the session manager, then goes to pi
        term.type("hello there\r")
        await term.expect("session: new")
        await term.expect("echo: hello there")
        await term.expect("›")
        term.type("\x04")  # Ctrl-D
        assert await term.exit_code() == 0
    finally:
        term.close()
    modules = set(snapshot.read_text().split())
    assert {"prompt_toolkit", "evie.platforms.terminal_repl", "evie.config_file"} <= modules
    assert {"asyncio.base_events", "asyncio.sslproto", "wcwidth"} <= modules
    assert [m for m in NOT_BEFORE_THE_PROMPT if m in modules] == []
    # asyncio has ssl again once the chat runs: no module is left without it
    assert Path(f"{snapshot}.tls").read_text().split() == []


#: a fresh `evie chat` that records, at exit, each terminal mode it set: canonical or not
_MODES_PROBE = """
import atexit, json, sys, termios

modes = []
set_attributes = termios.tcsetattr

def spy(fd, when, attributes):
    modes.append(bool(attributes[3] & termios.ICANON))
    return set_attributes(fd, when, attributes)

termios.tcsetattr = spy
atexit.register(lambda: open(sys.argv[1], "w").write(json.dumps(modes)))
from evie.cli import main
sys.exit(main(sys.argv[2:]))
"""


async def test_the_terminal_stays_raw_while_a_reply_streams(tmp_path: Path) -> None:
    """Keys typed while a reply is printed reach the editor, never the line discipline:
    from the first prompt to the exit the terminal is never set canonical (cooked) again,
    and Ctrl-D typed in the middle of a reply leaves."""
    config = _chat_config(tmp_path, warm_spares=0)
    record = tmp_path / "modes.json"
    argv = [sys.executable, "-c", _MODES_PROBE, str(record), "--config", str(config), "chat"]
    term = Terminal(argv, _env(), pty=True)
    steps = [{"text": "one block\n\n"}, {"sleep": 0.3}, {"text": "two block\n\n"}, {"sleep": 60}]
    try:
        await term.expect("session: new")
        await term.expect("›")
        term.type("script:" + json.dumps(steps) + "\r")
        await term.expect("two block")  # printed above the prompt while the turn runs on
        term.type("\x04")  # Ctrl-D, mid-reply
        assert await term.exit_code() == 0
    finally:
        term.close()
    modes = json.loads(record.read_text())
    assert modes, "the terminal was put in raw mode"
    assert modes[-1] is True  # given back as it was found, at exit
    assert True not in modes[:-1]  # and never cooked before that


async def test_a_config_error_found_beside_the_prompt_ends_the_chat_in_its_lines(
    tmp_path: Path,
) -> None:
    """The whole config is validated beside the first prompt: an error there (a key the
    first look does not read) ends the chat with the config's own lines and no traceback,
    the terminal given back; one the first look reads is reported before any greeting."""
    config = _chat_config(tmp_path, warm_spares=0)
    config.write_text(config.read_text() + "[log]\nlevel = 'loud'\n")
    argv = [sys.executable, "-m", "evie.cli", "--config", str(config), "chat"]
    term = Terminal(argv, _env(), pty=True)
    try:
        await term.expect("Ctrl-D leaves")  # greeted: the first look had what it needs
        await term.expect(r"evie: invalid configuration in .*\n.*log\.level: expected one of")
        assert await term.exit_code() == 2
    finally:
        term.close()
    assert "Traceback" not in term.screen

    config.write_text(config.read_text().replace("[agent]\n", "[agent]\nmodel = 5\n"))
    term = Terminal(argv, _env(), pty=True)
    try:
        await term.expect(r"evie: invalid configuration in .*")
        assert await term.exit_code() == 2
    finally:
        term.close()
    assert "agent.model: expected a string" in term.screen
    assert "log.level: expected one of" in term.screen  # every problem, at once
    assert "Ctrl-D leaves" not in term.screen  # before the greeting
