"""The terminal's line editor: prompt_toolkit, with evie's keys (adr/0015).

Line editing and arrow keys stay in the editor (they never reach the model),
history persists in the state dir, a bracketed paste is one message however
many lines it has, Alt-Enter inserts a newline, and Ctrl-C / Ctrl-D come back
as :class:`Key` values so the chat decides what they mean (stop the reply,
leave). The editor runs on evie's event loop: no thread, no raw stdin reads.

``evie chat`` draws its first prompt before anyio and the runtime are loaded
(adr/0015, start-up): :meth:`LineEditor.begin` starts that prompt on the bare
asyncio loop, and the chat's first :meth:`LineEditor.read` returns what was
entered in it.
"""

from __future__ import annotations

import asyncio
import enum
import os
from collections.abc import Callable
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.output import Output


class Key(enum.Enum):
    INTERRUPT = "ctrl-c"
    EOF = "ctrl-d"


def _history(path: Path | None) -> History:
    if path is None:
        return InMemoryHistory()
    # private like the rest of the state dir: what you typed to your agent
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    return FileHistory(str(path))


def _bindings() -> KeyBindings:
    kb = KeyBindings()

    @kb.add("escape", "enter")  # Alt-Enter (and Esc, Enter): a newline inside the message
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    return kb


class LineEditor:
    def __init__(
        self,
        history_path: Path | None = None,
        *,
        input: Input | None = None,
        output: Output | None = None,
        prompt: str = "› ",
    ) -> None:
        self._session: PromptSession[str] = PromptSession(
            prompt,
            history=_history(history_path),
            key_bindings=_bindings(),
            input=input,
            output=output,
            multiline=False,
            prompt_continuation="  ",
            erase_when_done=False,
        )
        self._drawn = False
        self._on_drawn: list[Callable[[], None]] = []
        self._session.app.after_render += self._after_render
        self._first: asyncio.Task[str | Key] | None = None

    def _after_render(self, _app: object) -> None:
        if not self._drawn:
            self._drawn = True
            for callback in self._on_drawn:
                callback()
            self._on_drawn.clear()

    def when_drawn(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the first prompt is on the screen (at once if it is): from
        then on keys are read in raw mode (prompt_toolkit enters it, and attaches its input,
        before it draws). ``evie chat`` loads its runtime only then, beside the prompt."""
        if self._drawn:
            callback()
        else:
            self._on_drawn.append(callback)

    def begin(self) -> asyncio.Task[str | Key]:
        """Draw the first prompt now, before the chat that reads it exists; its task, which
        the next :meth:`read` awaits (or :meth:`close` cancels), is returned to be watched.

        A bare asyncio task rather than one in an anyio task group: it runs while anyio
        itself is still being imported beside it (``evie chat``, adr/0015). Its owner is
        this editor; whoever calls ``begin`` must ``read`` or ``close``.
        """
        if self._first is None:
            self._first = asyncio.ensure_future(self._prompt())
        return self._first

    def close(self) -> None:
        """Cancel a prompt begun and never read."""
        first, self._first = self._first, None
        if first is not None:
            first.cancel()

    async def read(self) -> str | Key:
        """The next message (may contain newlines), or the key that ended the prompt."""
        first, self._first = self._first, None
        if first is not None:  # cancelling this read cancels that prompt too
            return await first
        return await self._prompt()

    async def _prompt(self) -> str | Key:
        try:
            return await self._session.prompt_async(
                set_exception_handler=False,  # evie's loop keeps its own handler
                handle_sigint=False,  # Ctrl-C arrives as a key in raw mode; signals are evie's
            )
        except KeyboardInterrupt:
            return Key.INTERRUPT
        except EOFError:
            return Key.EOF
