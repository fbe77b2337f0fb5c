"""The terminal's line editor: prompt_toolkit, with evie's keys (adr/0015).

Line editing and arrow keys stay in the editor (they never reach the model),
history persists in the state dir, a bracketed paste is one message however
many lines it has, Alt-Enter inserts a newline, and Ctrl-C / Ctrl-D come back
as :class:`Key` values so the chat decides what they mean (stop the reply,
leave). The editor runs on evie's event loop: no thread, no raw stdin reads.
"""

from __future__ import annotations

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

    def when_drawn(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when the next prompt is on the screen: from then on, keys
        are read in raw mode (prompt_toolkit enters it, and attaches its input, before it
        draws). ``evie chat`` starts its runtime only then, beside the prompt (adr/0015)."""
        called = False

        def after_render(_app: object) -> None:
            nonlocal called
            if not called:
                called = True
                callback()

        self._session.app.after_render += after_render

    async def read(self) -> str | Key:
        """The next message (may contain newlines), or the key that ended the prompt."""
        try:
            return await self._session.prompt_async(
                set_exception_handler=False,  # evie's loop keeps its own handler
                handle_sigint=False,  # Ctrl-C arrives as a key in raw mode; signals are evie's
            )
        except KeyboardInterrupt:
            return Key.INTERRUPT
        except EOFError:
            return Key.EOF
