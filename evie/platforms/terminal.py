"""``evie chat``: one session from the terminal, through the same SessionManager.

On a terminal, input comes from a prompt_toolkit line editor
(:mod:`evie.platforms.terminal_repl`) and replies are rendered as Markdown
(:mod:`evie.platforms.terminal_render`); on a pipe, lines are read in a worker
thread and printed as they came. Either way every message is sent from its own
task, so ``/status`` and ``/stop`` work while a turn streams, and output goes
through a single writer task that writes in a thread: a stalled terminal or
pipe never blocks the event loop (and so never stops pi's stdout from being
drained). Model text is always sanitised before it is printed.

Ctrl-C is evie's to interpret: pi runs in its own session, so the terminal's
SIGINT never reaches it. In the line editor Ctrl-C arrives as a key: it stops
the running reply, and a second one within :data:`DOUBLE_INTERRUPT` seconds
leaves (a SIGINT sent from outside counts the same). On a pipe, with
``interrupts=True`` (as in ``evie chat``), SIGINT stops the running turn like
``/stop``, and with nothing running it leaves.

The chat can start before its session manager exists (``evie chat`` draws its
first prompt first, adr/0015): lines entered until :meth:`connect` wait for it,
in order. What only a turn or a command needs (the agent's events, the session
manager, the commands) is imported when used, by then already loaded beside the
first prompt.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from anyio.lowlevel import EventLoopToken
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from evie.errors import EvieError
from evie.platforms.contract import PlatformHealth
from evie.platforms.terminal_render import PlainStyle, RichStyle, Style
from evie.platforms.terminal_repl import Key, LineEditor

if TYPE_CHECKING:
    from evie.agent.events import TurnEvent
    from evie.sessions.manager import SessionManager

#: a second Ctrl-C within this many seconds leaves
DOUBLE_INTERRUPT = 2.0


class TerminalChat:
    """The terminal platform (see :mod:`evie.platforms.contract` for the lifecycle)."""

    name = "terminal"

    def __init__(
        self,
        manager: SessionManager | None,
        *,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        key: str = "terminal",
        notice: str | None = None,
        banner: str | None = None,
        workdir: Path | None = None,
        history_path: Path | None = None,
        editor: LineEditor | None = None,
        style: Style | None = None,
        interrupts: bool = False,
        greeted: bool = False,
    ) -> None:
        """``editor`` forces the line-editor mode (tests drive one through a pipe input);
        otherwise it is used when stdin and stdout are both terminals. ``interrupts``
        makes SIGINT evie's to interpret (see the module docstring); ``greeted``: the banner
        is on the screen already (``evie chat`` wrote it). Without a ``manager``
        the chat reads and queues input until :meth:`connect` gives it one."""
        self._notice = notice
        self._banner = banner
        self._workdir = workdir
        self._interrupts = interrupts
        interactive = (
            stdin is None and stdout is None and sys.stdin.isatty() and sys.stdout.isatty()
        )
        self._editor = editor
        if editor is None and interactive:
            self._editor = LineEditor(history_path)
        if style is None:
            style = RichStyle(_terminal_width()) if interactive else PlainStyle()
        self._style: Style = style
        self._running = 0  # replies in flight (for Ctrl-C)
        self._last_interrupt = -math.inf
        self._manager = manager
        self._connected = anyio.Event()
        self._waiting = 0  # lines entered before connect(), not handled yet
        self._renderer_loading = False
        if manager is not None:
            self._connected.set()
        self._reading = anyio.Event()  # input is being read: the prompt is on the screen
        if self._editor is not None:
            self._editor.when_drawn(self._reading.set)
        self._stdin = stdin or sys.stdin
        self._stdout = stdout or sys.stdout
        self._key = key
        self._out_send: MemoryObjectSendStream[str]
        self._out_recv: MemoryObjectReceiveStream[str]
        self._out_send, self._out_recv = anyio.create_memory_object_stream[str](math.inf)
        self._mid_line = False
        self._intake = anyio.CancelScope()
        self._health = PlatformHealth("starting", name="terminal")
        # on the real terminal the greeting is written before the first prompt is drawn
        # (run()); anywhere else it is simply the first thing the writer writes
        self._on_terminal = self._editor is not None and self._stdout is sys.stdout
        self._greeted = greeted
        if not greeted and not self._on_terminal:
            self.say(self._greeting())

    def connect(
        self, manager: SessionManager, *, session: str | None = None, notice: str | None = None
    ) -> None:
        """Give the chat its session manager (if it was built without one), and show the
        session's line (e.g. "session: resumed, 8 turns") and a notice, above the prompt.
        Lines entered before this are handled now, in their order."""
        self._manager = manager
        if session:
            self.line(session)
        if notice:
            self.line(self._style.dim(f"[note] {notice}"))
        self._connected.set()

    async def wait_reading(self) -> None:
        """Return once input is being read (on a terminal: the first prompt is drawn, keys
        are read in raw mode), or once the chat is over."""
        await self._reading.wait()

    def say(self, text: str) -> None:
        """Queue text for the terminal; never blocks."""
        if text:
            self._mid_line = not text.endswith("\n")
            self._out_send.send_nowait(text)

    def line(self, text: str) -> None:
        """Queue a line of its own, below whatever was said last."""
        self.say(("\n" if self._mid_line else "") + text + "\n")

    def end_line(self) -> None:
        """End the current line, if something was said on it."""
        if self._mid_line:
            self.say("\n")

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Read input until its end, /quit, leaving by Ctrl-C or :meth:`stop_intake`; then
        return once the turns started here have finished (/quit, Ctrl-D in the editor and
        leaving by Ctrl-C cut them short)."""
        proxy = None
        with contextlib.ExitStack() as stack:
            if self._on_terminal:
                from evie.platforms.terminal_repl import above_the_prompt

                assert self._editor is not None
                if not self._greeted:
                    self._stdout.write(self._greeting())  # before the first prompt is drawn
                    self._stdout.flush()
                stack.enter_context(self._editor.raw_mode())  # for the whole chat
                # printed above the prompt line, which is redrawn under it
                self._stdout = proxy = above_the_prompt()
            try:
                await self._run(task_status)
            finally:
                self._reading.set()  # over: nobody waits for a prompt any longer
                if proxy is not None:  # its thread writes what is left, then ends
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(proxy.close)

    async def _run(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with anyio.create_task_group() as writer_tg:
            writer_tg.start_soon(self._writer)
            async with anyio.create_task_group() as tg:
                with self._intake:
                    self._health = PlatformHealth(
                        "up", detail="reading the terminal", name="terminal"
                    )
                    task_status.started()
                    if self._editor is not None:
                        await self._edit_loop(self._editor, tg)
                    else:
                        await self._line_loop(tg)
                self._health = PlatformHealth("down", detail="input closed", name="terminal")
            self._out_send.close()

    def _greeting(self) -> str:
        text = (self._banner or "evie: talking to pi. /help for commands, Ctrl-D to leave.") + "\n"
        if self._notice:
            text += self._style.dim(f"[note] {self._notice}") + "\n"
        return text

    async def _edit_loop(self, editor: LineEditor, tg: anyio.abc.TaskGroup) -> None:
        """The REPL: messages, commands, Ctrl-C (stop the reply; twice: leave), Ctrl-D."""
        watcher = anyio.CancelScope()  # owned here: ends when input does
        if self._interrupts:  # a SIGINT from outside means what Ctrl-C means here
            tg.start_soon(self._watch_sigint, watcher, lambda: self._repl_interrupt(tg))
        try:
            while True:
                entry = await editor.read()
                if entry is Key.EOF:
                    tg.cancel_scope.cancel()  # a running reply is aborted as its task ends
                    return
                if entry is Key.INTERRUPT:
                    if await self._repl_interrupt(tg):
                        return
                    continue
                assert isinstance(entry, str)
                if not await self._entered(entry, tg):
                    return
        finally:
            watcher.cancel()

    async def _repl_interrupt(self, tg: anyio.abc.TaskGroup) -> bool:
        """Ctrl-C in the REPL: stop the running reply; a second within
        :data:`DOUBLE_INTERRUPT` seconds leaves (returns True)."""
        now = time.monotonic()
        if now - self._last_interrupt < DOUBLE_INTERRUPT:
            self.line(self._style.dim("[bye]"))
            tg.cancel_scope.cancel()
            return True
        self._last_interrupt = now
        # a reply runs only once the manager is there (see _send)
        if self._running and self._manager is not None and await self._manager.abort(self._key):
            self.line(self._style.dim("[stopping the reply; Ctrl-C again to leave]"))
        else:
            self.line(self._style.dim("[Ctrl-C again to leave, or Ctrl-D]"))
        return False

    async def _line_loop(self, tg: anyio.abc.TaskGroup) -> None:
        """Pipes and tests: one message per line, from a reader thread."""
        lines_send, lines = anyio.create_memory_object_stream[str](math.inf)
        threading.Thread(
            target=self._read_lines,
            args=(lines_send, anyio.lowlevel.current_token()),
            name="evie-terminal-input",
            daemon=True,  # a read blocked on the keyboard must not keep evie from exiting
        ).start()
        self._reading.set()
        watcher = anyio.CancelScope()  # owned here: ends when input does
        if self._interrupts:
            tg.start_soon(self._watch_sigint, watcher, lambda: self._on_interrupt(tg))
        try:
            async with lines:
                async for line in lines:
                    if not line:  # EOF: let running turns finish, then leave
                        # a script reads the session's line even when it sent nothing
                        await self._connected.wait()
                        break
                    if not await self._entered(line, tg):
                        break
        finally:
            watcher.cancel()

    async def _entered(self, line: str, tg: anyio.abc.TaskGroup) -> bool:
        """One line the user entered (either loop); False when it asks to leave."""
        text = line.strip()
        if text in ("/quit", "/exit"):
            tg.cancel_scope.cancel()
            return False
        if text:
            await self._handle(text, tg)
        return True

    async def _watch_sigint(
        self, scope: anyio.CancelScope, on_signal: Callable[[], Awaitable[bool]]
    ) -> None:
        """Hands each SIGINT to ``on_signal`` until it says the chat is leaving."""
        with scope, anyio.open_signal_receiver(signal.SIGINT) as signals:
            async for _ in signals:
                if await on_signal():
                    return

    async def _on_interrupt(self, tg: anyio.abc.TaskGroup) -> bool:
        """SIGINT in line mode: stop the running turn; with none running, leave."""
        if self._manager is not None and await self._manager.abort(self._key):
            self.line("[stopping the turn; Ctrl-C again when it has stopped to leave]")
            return False
        self.line("[bye]")
        tg.cancel_scope.cancel()
        return True

    async def stop_intake(self) -> None:
        """Stop reading input; turns already started carry on."""
        self._intake.cancel()

    async def announce(self, keys: Iterable[str], take: Callable[[str], str | None]) -> int:
        """Show this terminal's pending notice, if ``keys`` has one."""
        if self._key not in frozenset(keys):
            return 0
        text = take(self._key)
        if text is None:
            return 0
        self.line(self._style.dim(f"[note] {text}"))
        return 1

    def health(self) -> PlatformHealth:
        return self._health  # nothing remote to poll: up while reading

    def _read_lines(self, send: MemoryObjectSendStream[str], token: EventLoopToken) -> None:
        """Runs in its own daemon thread: hands each line (then "" at EOF) to the loop."""
        while True:
            line = self._stdin.readline()
            try:
                anyio.from_thread.run_sync(send.send_nowait, line, token=token)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, RuntimeError):
                return  # the chat is over
            if not line:
                return

    async def _handle(self, text: str, tg: anyio.abc.TaskGroup) -> None:
        if self._manager is None or self._waiting:  # before the runtime was up: once it is
            self._waiting += 1
            tg.start_soon(self._handle_when_connected, text, tg)
        else:
            await self._handle_now(text, tg)

    async def _handle_when_connected(self, text: str, tg: anyio.abc.TaskGroup) -> None:
        """Tasks waiting on an event wake in the order they began to wait (and a wait on a
        set event yields first): lines keep the order they were typed in."""
        try:
            await self._connected.wait()
            await self._handle_now(text, tg)
        finally:
            self._waiting -= 1

    async def _handle_now(self, text: str, tg: anyio.abc.TaskGroup) -> None:
        from evie.chat.commands import TERMINAL_COMMANDS, parse_command, run_command

        assert self._manager is not None  # see _handle
        command = parse_command(text) if " " not in text and "\n" not in text else None
        if command is not None:
            answer = await run_command(
                self._manager,
                self._key,
                command,
                commands=TERMINAL_COMMANDS,
                workdir=self._workdir,
            )
            self.line(answer)
        else:
            if not self._renderer_loading and isinstance(self._style, RichStyle):
                self._renderer_loading = True  # rich, in a thread, while pi works on the reply
                tg.start_soon(anyio.to_thread.run_sync, self._style.load)
            tg.start_soon(self._send, text)

    async def _send(self, text: str) -> None:
        from evie.agent.events import Prompt
        from evie.platforms.terminal_events import show
        from evie.sessions.manager import Queued

        assert self._manager is not None  # see _handle
        style = self._style

        async def render(event: TurnEvent) -> None:
            show(event, style, self)

        self._running += 1
        try:
            result = await self._manager.send(self._key, Prompt(text), render)
        except EvieError as exc:
            self.line(f"[error] {self._style.plain(str(exc))}")
            return
        finally:
            self._running -= 1
        if isinstance(result, Queued):
            how = "steering the running turn" if result.steer else "queued as a follow-up"
            self.line(self._style.dim(f"[{how}: #{result.position}]"))

    async def _writer(self) -> None:
        async with self._out_recv:
            while True:
                try:
                    first = await self._out_recv.receive()
                except anyio.EndOfStream:
                    return
                parts = [first]
                while True:  # batch whatever else is ready into one write
                    try:
                        parts.append(self._out_recv.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                await anyio.to_thread.run_sync(self._write, "".join(parts))

    def _write(self, text: str) -> None:
        self._stdout.write(text)
        self._stdout.flush()


def _terminal_width() -> int:
    import shutil

    return max(40, min(shutil.get_terminal_size().columns, 120))
