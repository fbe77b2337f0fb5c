"""``evie chat`` and ``evie run --terminal``: the terminal chat wired to a runtime.

``evie chat`` draws its first prompt before anything a turn needs exists (adr/0015,
start-up): the config file's first look (:mod:`evie.config_file`), prompt_toolkit and the
greeting are all that run first, on a bare asyncio loop (:func:`run_chat`). Once the prompt
is on the screen (keys are read in raw mode from then on) anyio is imported beside it, then
the config is validated whole and the runtime's modules loaded, in worker threads, and the
runtime is opened: the state, the sandbox probe, pi's warm spare. Lines
entered meanwhile wait for it, in order; the session's line ("session: resumed, 8 turns")
and its notices follow the greeting once the session manager knows them. ``evie run
--terminal`` builds the chat over a runtime that is already open.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from evie.config_file import FirstLook
from evie.platforms.terminal_banner import banner, describe_session
from evie.platforms.terminal_repl import LineEditor
from evie.platforms.tls_later import attach_tls

if TYPE_CHECKING:
    from anyio import Event

    from evie.config import Config
    from evie.platforms.terminal import TerminalChat
    from evie.runtime import Runtime

#: the terminal's session key
KEY = "terminal"

#: what the chat itself runs on: imported in a worker thread once the first prompt is drawn
ANYIO = (
    "anyio",
    "anyio._backends._asyncio",
    "anyio.abc",
    "anyio.from_thread",
    "anyio.lowlevel",
    "anyio.streams.memory",
    "anyio.to_thread",
    "evie.platforms.terminal",
)

#: what opening the runtime, a turn and a command import: loaded in a worker thread
#: once the chat runs (a test keeps these and :data:`ANYIO` out of the path to the prompt)
BESIDE_THE_PROMPT = (
    "evie.runtime",
    "evie.agent.events",
    "evie.agent.session_file",
    "evie.chat.commands",
    "evie.chat.status",
)


def _import(names: Iterable[str]) -> None:
    for name in names:
        importlib.import_module(name)


def _beside_the_first_prompt() -> None:
    attach_tls()  # `evie chat` loaded asyncio without ssl (evie.cli)
    _import(ANYIO)


def _model(provider: str | None, model: str | None) -> str:
    if not provider and not model:
        return "pi's default (`evie doctor` shows it)"
    return f"{provider or 'default'}/{model or 'default'}"


def run_chat(first: FirstLook, load: Callable[[], Config]) -> None:
    """``evie chat``: one session from this terminal, in the directory it was started in.

    ``first`` is what the greeting and the line editor need, read from the config file;
    ``load`` validates the whole config (blocking: run beside the first prompt, in a worker
    thread) and is what the runtime is opened with. Returns once input has ended and the
    runtime is closed (pi stopped, state flushed); an error validating the config or opening
    the runtime ends the chat and is raised. Runs its own event loop, like ``anyio.run``,
    but starts it without anyio (see the module docstring)."""
    asyncio.run(_first_prompt_first(first, load))


async def _first_prompt_first(first: FirstLook, load: Callable[[], Config]) -> None:
    # `evie chat` works where it was started, or in [agent] cwd (the launcher's work dir)
    workdir = (first.cwd or Path.cwd()).resolve()
    # the line editor's history lives in the state dir, created here as the state store does
    first.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    greeting = banner(model=_model(first.provider, first.model), workdir=str(workdir))
    editor = None
    async with contextlib.AsyncExitStack() as stack:
        if sys.stdin.isatty() and sys.stdout.isatty():
            editor = LineEditor(first.state_dir / "terminal_history")
            sys.stdout.write(greeting + "\n")  # as TerminalChat would, before its prompt
            sys.stdout.flush()
            stack.enter_context(editor.raw_mode())  # from the first prompt to the end
            # (left before raw mode: a first prompt never read, if the chat failed to start)
            stack.push_async_callback(editor.aclose)
            drawn = asyncio.Event()
            editor.when_drawn(drawn.set)
            waiting = asyncio.ensure_future(drawn.wait())
            try:  # (or the prompt ended before it was drawn: its read says how)
                await asyncio.wait((editor.begin(), waiting), return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()
        await asyncio.to_thread(_beside_the_first_prompt)
        await chat(load, workdir, greeting, editor)


async def chat(
    load: Callable[[], Config], workdir: Path, greeting: str, editor: LineEditor | None
) -> None:
    """The chat (anyio from here on): the config is validated and the runtime opened beside
    it; with ``editor``, its greeting is on the screen and its first prompt begun already."""
    import anyio

    from evie.platforms.terminal import TerminalChat

    terminal = TerminalChat(
        None,
        banner=greeting,
        workdir=workdir,
        editor=editor,
        greeted=editor is not None,
        interrupts=True,
    )
    over = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_open_beside_the_prompt, load, terminal, over)
        try:
            await terminal.run()
        finally:
            over.set()


async def _open_beside_the_prompt(
    load: Callable[[], Config], terminal: TerminalChat, over: Event
) -> None:
    """Once the prompt is drawn: validate the config, import, open the runtime, connect the
    chat; close the runtime once the chat is over (its turns have finished by then)."""
    import anyio.to_thread

    await terminal.wait_reading()
    if over.is_set():
        return
    config = await anyio.to_thread.run_sync(load)  # its error ends the chat (its own lines)
    await anyio.to_thread.run_sync(_import, BESIDE_THE_PROMPT)
    import attrs

    from evie.gc_policy import settle_gc
    from evie.runtime import open_runtime

    if over.is_set():  # left while the modules loaded: nothing to start
        return
    if config.agent.cwd is None:  # `evie chat` works where it was started
        config = attrs.evolve(config, agent=attrs.evolve(config.agent, cwd=Path.cwd()))
    async with open_runtime(config) as runtime:
        _workdir, session, notice = await _session(runtime)
        settle_gc()  # `evie chat` paused the collector while it started (evie.cli)
        terminal.connect(runtime.manager, session=session, notice=notice)
        await over.wait()


async def terminal_chat(runtime: Runtime, *, interrupts: bool = False) -> TerminalChat:
    """The terminal chat over an open runtime, with its banner: model, working dir, and
    whether it resumes (``evie run --terminal``).

    ``interrupts`` makes SIGINT the chat's to interpret; under ``evie run --terminal``
    it stays the daemon's graceful stop."""
    from evie.platforms.terminal import TerminalChat

    workdir, session, notice = await _session(runtime)
    agent = runtime.config.agent
    terminal = TerminalChat(
        None,
        banner=banner(model=_model(agent.provider, agent.model), workdir=str(workdir)),
        workdir=workdir,
        history_path=runtime.config.state.dir / "terminal_history",
        interrupts=interrupts,
    )
    terminal.connect(runtime.manager, session=session, notice=notice)
    return terminal


async def _session(runtime: Runtime) -> tuple[Path, str, str | None]:
    """The terminal session's work dir, its line for the screen, and its notice (a pending
    one from the state, and one when pi resumes the conversation in another directory)."""
    import anyio.to_thread

    from evie.agent.session_file import read_summary
    from evie.runtime import build_launcher

    config = runtime.config
    session_id = runtime.manager.known_session(KEY)
    launcher = build_launcher(config)
    summary = None
    if session_id is not None:
        summary = await anyio.to_thread.run_sync(read_summary, launcher.session_file(session_id))
        workdir = await anyio.to_thread.run_sync(launcher.work_dir, session_id)
    else:
        workdir = launcher.work_dir("<new session>")  # [agent] cwd, or a new session's own dir
    notices = [runtime.store.take_notice(KEY)]
    if summary is not None and summary.cwd is not None and summary.cwd != workdir.resolve():
        notices.append(
            f"this conversation was started in {summary.cwd} and pi resumes it there; "
            f"/new starts one in {workdir}"
        )
    session = describe_session(session_id, summary.turns if summary else None)
    return workdir, session, "\n".join(n for n in notices if n) or None
