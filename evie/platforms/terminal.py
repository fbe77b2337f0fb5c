"""``evie chat``: one session from the terminal, through the same SessionManager.

Ctrl-C is evie's to interpret (``interrupts=True``, as in ``evie chat``): pi
runs in its own session, so the terminal's SIGINT never reaches it; a Ctrl-C
stops the running turn like ``/stop``, and with nothing running it leaves.

Input is read in a worker thread and every message is sent from its own task,
so ``/status`` and ``/stop`` work while a turn streams. Output goes through a
single writer task that writes in a thread: a stalled terminal or pipe never
blocks the event loop (and so never stops pi's stdout from being drained).
"""

from __future__ import annotations

import math
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import TextIO

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from anyio.lowlevel import EventLoopToken
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from evie.agent.events import (
    AssistantMessage,
    FollowUpStarted,
    Notice,
    Outcome,
    Prompt,
    RetryScheduled,
    TextDelta,
    ToolFinished,
    ToolStarted,
    TurnEvent,
    TurnFinished,
)
from evie.chat.commands import TERMINAL_COMMANDS, parse_command, run_command
from evie.chat.streaming import unanswered_line
from evie.errors import EvieError
from evie.platforms.contract import PlatformHealth
from evie.sessions.manager import Queued, SessionManager


class TerminalChat:
    """The terminal platform (see :mod:`evie.platforms.contract` for the lifecycle)."""

    name = "terminal"

    def __init__(
        self,
        manager: SessionManager,
        *,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        key: str = "terminal",
        notice: str | None = None,
        interrupts: bool = False,
    ) -> None:
        self._notice = notice
        self._interrupts = interrupts
        self._manager = manager
        self._stdin = stdin or sys.stdin
        self._stdout = stdout or sys.stdout
        self._key = key
        self._out_send: MemoryObjectSendStream[str]
        self._out_recv: MemoryObjectReceiveStream[str]
        self._out_send, self._out_recv = anyio.create_memory_object_stream[str](math.inf)
        self._mid_line = False
        self._intake = anyio.CancelScope()
        self._health = PlatformHealth("starting")

    def say(self, text: str) -> None:
        """Queue text for the terminal; never blocks."""
        if text:
            self._mid_line = not text.endswith("\n")
            self._out_send.send_nowait(text)

    def _line(self, text: str) -> None:
        self.say(("\n" if self._mid_line else "") + text + "\n")

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Read lines until end of input, /quit or :meth:`stop_intake`; then return once
        the turns started here have finished (/quit cuts them short)."""
        async with anyio.create_task_group() as writer_tg:
            writer_tg.start_soon(self._writer)
            self._line("evie: talking to pi. /help for commands, Ctrl-D to leave.")
            if self._notice:
                self._line(f"[note] {self._notice}")
            lines_send, lines = anyio.create_memory_object_stream[str](math.inf)
            threading.Thread(
                target=self._read_lines,
                args=(lines_send, anyio.lowlevel.current_token()),
                name="evie-terminal-input",
                daemon=True,  # a read blocked on the keyboard must not keep evie from exiting
            ).start()
            self._health = PlatformHealth("up", detail="reading the terminal")
            task_status.started()
            async with anyio.create_task_group() as tg, lines:
                with self._intake:
                    watcher = anyio.CancelScope()  # owned here: ends when input does
                    if self._interrupts:
                        tg.start_soon(self._on_interrupt, tg, watcher)
                    async for line in lines:
                        if not line:
                            break  # EOF: let running turns finish, then leave
                        text = line.strip()
                        if not text:
                            continue
                        if text in ("/quit", "/exit"):
                            tg.cancel_scope.cancel()
                            break
                        await self._handle(text, tg)
                    watcher.cancel()
                self._health = PlatformHealth("down", detail="input closed")
            self._out_send.close()

    async def _on_interrupt(self, tg: anyio.abc.TaskGroup, scope: anyio.CancelScope) -> None:
        with scope, anyio.open_signal_receiver(signal.SIGINT) as signals:
            async for _ in signals:
                if await self._manager.abort(self._key):
                    self._line("[stopping the turn; Ctrl-C again when it has stopped to leave]")
                else:
                    self._line("[bye]")
                    tg.cancel_scope.cancel()
                    return

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
        self._line(f"[note] {text}")
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
        command = parse_command(text) if " " not in text else None
        if command is not None:
            self._line(
                await run_command(self._manager, self._key, command, commands=TERMINAL_COMMANDS)
            )
        else:
            tg.start_soon(self._send, text)

    async def _send(self, text: str) -> None:
        try:
            result = await self._manager.send(self._key, Prompt(text), self._render)
        except EvieError as exc:
            self._line(f"[error] {exc}")
            return
        if isinstance(result, Queued):
            how = "steering the running turn" if result.steer else "queued as a follow-up"
            self._line(f"[{how}: #{result.position}]")

    async def _render(self, event: TurnEvent) -> None:
        match event:
            case TurnFinished(outcome=Outcome.DONE, unanswered=()):
                if self._mid_line:
                    self.say("\n")
            case TurnFinished(outcome=outcome, error=error, unanswered=unanswered):
                if outcome is not Outcome.DONE:
                    self._line(f"[{outcome.value}] {error or ''}".rstrip())
                if unanswered:
                    self._line(unanswered_line(len(unanswered)))
            case AssistantMessage(text=text) if text:
                # the text was already streamed as deltas; end the paragraph
                self.say("\n" if self._mid_line else "")
            case ToolStarted(tool_name=name, summary=summary):
                self._line(f"[{name}] {summary}".rstrip())
            case ToolFinished(is_error=True, tool_name=name):
                self._line(f"[{name} failed]")
            case FollowUpStarted(text=text):
                self._line(f"[now answering] {text}")
            case RetryScheduled(attempt=a, max_attempts=m, delay_ms=d, error=err):
                self._line(f"[retry {a}/{m} in {d / 1000:g}s] {err}")
            case TextDelta(text=text):
                self.say(text)
            case Notice(text=text):
                self._line(f"[note] {text}")
            case _:
                pass

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
