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
import contextlib
import enum
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.application import get_app_or_none
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.output import Output
from prompt_toolkit.patch_stdout import StdoutProxy

log = logging.getLogger(__name__)


class Key(enum.Enum):
    INTERRUPT = "ctrl-c"
    EOF = "ctrl-d"


#: the newest lines the editor recalls with ↑ (a shell's HISTSIZE), and what the file keeps
#: when it is compacted (:func:`read_history`)
HISTORY_SIZE = 10_000

#: an entry of prompt_toolkit's ``FileHistory``: a run of lines that begin with "+", ended
#: by any other line (its "# timestamp" comment, the blank line before it) or the file's end
_ENTRY = re.compile(rb"(?:^\+[^\n]*(?:\n|\Z))+", re.MULTILINE)


def read_history(path: Path, lock: threading.Lock) -> list[str]:
    """The newest :data:`HISTORY_SIZE` entries of the history file, newest first, as
    prompt_toolkit's ``FileHistory`` reads them; the file is compacted on the way when it
    holds more than twice that many. Blocking: run in a thread.

    Why twice: the file is then rewritten once per :data:`HISTORY_SIZE` lines typed (a
    write and an fsync of ~1 MB), rather than on every start once it passes the cap (at
    ``HISTORY_SIZE + 1``), and a start never reads more than twice what it keeps, instead
    of every line of the file's whole life.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
            was = os.fstat(f.fileno())
    except FileNotFoundError:
        return []
    spans = [m.span() for m in _ENTRY.finditer(data)]
    if len(spans) > 2 * HISTORY_SIZE:
        cut = spans[-HISTORY_SIZE - 1][1]  # just past the last entry dropped
        _drop_stale_temps(path)
        _compact(path, data[cut:], (was.st_dev, was.st_ino, len(data)), lock)
    return [_entry(data[start:end]) for start, end in reversed(spans[-HISTORY_SIZE:])]


#: a compaction's temp file older than this was left by a process killed mid-write (one
#: takes well under a second); removed by the next compaction, so kills never pile them up
STALE_TEMP_S = 600.0


def _drop_stale_temps(path: Path) -> None:
    now = time.time()
    for temp in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if now - temp.stat().st_mtime > STALE_TEMP_S:
                temp.unlink()


def _entry(raw: bytes) -> str:
    """One entry's text: its lines without their "+" and the last newline (``FileHistory``
    decodes line by line; a newline never falls inside an invalid UTF-8 sequence, so the
    whole entry decodes to the same text)."""
    return raw.decode("utf-8", errors="replace")[1:].replace("\n+", "\n")[:-1]


def _compact(path: Path, tail: bytes, read: tuple[int, int, int], lock: threading.Lock) -> bool:
    """Replace the history file with ``tail`` (its newest entries, byte for byte: timestamps
    and all), atomically: a temp file beside it (0o600), fsync'd, renamed over it, so that a
    crash leaves the old file or the new one, never neither. Returns whether it was replaced.

    A line stored meanwhile must not be lost, and ``store_string`` appends on the event loop,
    which must not wait for this write. So the temp file is written without the lock, and
    only the check and the rename are done under the lock ``store_string`` takes (two system
    calls): if the file is no longer the one read (``read`` is its device, inode and the
    length read; a line appended since makes it longer), the compaction is dropped. The file
    then keeps every line, and the next start compacts it.
    """
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            view = memoryview(tail)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        with lock:
            now = os.stat(path)
            if (now.st_dev, now.st_ino, now.st_size) != read:
                return False
            os.replace(tmp, path)
        tmp = None
        with contextlib.suppress(OSError):  # (done: only the rename's durability is at stake)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the rename itself survives a power loss
            finally:
                os.close(dir_fd)
        return True
    except OSError as e:  # (disk full, read-only dir): the file stays as it was, uncompacted
        log.warning("could not compact the terminal history %s: %s", path, e)
        return False
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


class RecentFileHistory(History):
    """The history file's newest :data:`HISTORY_SIZE` entries, read in a thread.

    prompt_toolkit's ``FileHistory`` reads and parses the whole file on the event loop
    once the first prompt is drawn, ~3 ms per thousand entries: a months-old history of
    100,000 lines held the loop for ~0.3 s, while the runtime loads beside the prompt
    (adr/0015). Each entry is also handed to the editor on the loop, hence the cap. The
    read also compacts the file (:func:`read_history`), which would otherwise grow for
    ever. ``loaded`` is set once the editor has every entry.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = path
        self._file = FileHistory(str(path))
        self._lock = threading.Lock()  # a store vs. a compaction's rename (see _compact)
        self.loaded = asyncio.Event()

    def _recent(self) -> list[str]:
        return read_history(self._path, self._lock)

    async def load(self) -> AsyncGenerator[str, None]:
        if not self._loaded:
            recent = await asyncio.get_running_loop().run_in_executor(None, self._recent)
            if not self._loaded:  # (two loads at once: the first one's list stands)
                typed = self._loaded_strings  # lines entered meanwhile, newest first
                if recent[: len(typed)] != typed:  # the read came before their writes
                    recent = typed + recent
                self._loaded_strings, self._loaded = recent, True
        for item in self._loaded_strings:
            yield item
        self.loaded.set()

    def load_history_strings(self) -> Iterable[str]:
        return self._recent()

    def store_string(self, string: str) -> None:
        with self._lock:
            self._file.store_string(string)


def _history(path: Path | None) -> History:
    if path is None:
        return InMemoryHistory()
    # private like the rest of the state dir: what you typed to your agent
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    return RecentFileHistory(path)


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

    async def history_loaded(self) -> None:
        """Wait until ↑ can recall every line of the history file (read in a thread once
        the first prompt is drawn: a key pressed sooner finds the lines read so far)."""
        history = self._session.history
        if isinstance(history, RecentFileHistory):
            await history.loaded.wait()

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
        the next :meth:`read` awaits (or :meth:`aclose` cancels), is returned to be watched.

        A bare asyncio task rather than one in an anyio task group: it runs while anyio
        itself is still being imported beside it (``evie chat``, adr/0015). Its owner is
        this editor; whoever calls ``begin`` must ``read`` or ``aclose``.
        """
        if self._first is None:
            self._first = asyncio.ensure_future(self._prompt())
        return self._first

    def raw_mode(self) -> AbstractContextManager[None]:
        """Hold the terminal in raw mode for a whole chat, prompts and replies alike: held
        outside them, each prompt's own raw mode restores raw when it ends, and keys typed
        while no prompt is drawn wait in the terminal for the next one (Ctrl-D included),
        instead of meeting the line discipline (echo, Ctrl-D as end of file)."""
        return self._session.input.raw_mode()

    async def aclose(self) -> None:
        """Cancel a prompt begun and never read, and wait until it has left the screen and
        restored the terminal's mode."""
        first, self._first = self._first, None
        if first is not None:
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)

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


def above_the_prompt() -> StdoutProxy:
    """A stdout whose text is printed above the prompt, which is redrawn under it; the
    terminal stays in raw mode meanwhile (see :class:`_AbovePrompt`)."""
    return _AbovePrompt(raw=True)


class _AbovePrompt(StdoutProxy):
    """prompt_toolkit's ``StdoutProxy``, printing without leaving raw mode.

    Its own printing goes through ``run_in_terminal``, which detaches the input and puts
    the terminal in cooked mode for every write: keys typed while a reply streams met the
    line discipline then (echoed into the reply; Ctrl-D taken as end of file, never seen
    by the editor). Here each write erases the prompt, prints and redraws the prompt, in
    the event loop like the original, and the input stays attached and raw. (Overrides
    the one method that decides how; ``tests/test_chat_startup.py`` watches the modes.)
    """

    def _write_and_flush(self, loop: asyncio.AbstractEventLoop | None, text: str) -> None:
        def write() -> None:
            self._output.enable_autowrap()
            self._output.write_raw(text)
            self._output.flush()

        def write_above() -> None:
            app = get_app_or_none()
            if app is None or not app.is_running:
                write()
                return
            app.renderer.erase()  # the prompt, with the cursor back where it began
            write()
            app.renderer.request_absolute_cursor_position()
            app.invalidate()  # the prompt, redrawn under the text

        if loop is None:
            write()
        else:
            loop.call_soon_threadsafe(write_above)
