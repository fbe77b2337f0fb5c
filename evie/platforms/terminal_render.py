"""What the terminal prints: model text made safe, and Markdown rendered with rich.

Everything the model (or a tool) produced passes through :func:`sanitize`
before it reaches the terminal: an escape sequence in a reply must not move
the cursor, retitle the window, or hide text. Replies are rendered block by
block — a paragraph, a list or a fenced code block is printed once it is
complete — so the Markdown is right and nothing is printed twice.
"""

from __future__ import annotations

import io
import re
from collections import deque

import attrs

# CSI (ESC [ ... final) and its one-byte C1 form, OSC/DCS/PM/APC strings up to their
# terminator, any other two-byte ESC sequence, then every remaining C0/C1 control
# except newline and tab.
_SEQUENCES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b[\]PX^_]|[\x90\x9d\x9e\x9f\x98])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -~]?"
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def sanitize(text: str) -> str:
    """Remove terminal control sequences and control characters, keeping \\n and \\t."""
    return _CONTROLS.sub("", _SEQUENCES.sub("", text))


# a string sequence (OSC, DCS…) not terminated yet, or a lone ESC; a CSI cut short is
# found by _CSI_SO_FAR, since the sequence pattern does not match an unfinished one
_UNFINISHED = re.compile(r"(?:\x1b[\]PX^_]|[\x90\x9d\x9e\x9f\x98])[^\x07\x1b\x9c]*\x1b?|\x1b")
_CSI_SO_FAR = re.compile(r"(?:\x1b\[|\x9b)[0-?]*[ -/]*\Z")
#: a sequence still open after this many characters is not held back any longer
HOLD_LIMIT = 4096


@attrs.define
class StreamSanitizer:
    """:func:`sanitize` for text that arrives in pieces (pi streams deltas).

    A sequence cut between two deltas (``"\\x1b]0"`` then ``";title\\x07"``) would
    otherwise lose only its head, and its tail would be printed as text. A trailing
    sequence that may still continue is held back until the next delta completes it.
    """

    _held: str = ""

    def feed(self, text: str) -> str:
        text, self._held = self._held + text, ""
        cut = len(text)
        found = deque(_SEQUENCES.finditer(text), maxlen=1)  # the last one, in linear time
        if found and found[0].end() == cut and _UNFINISHED.fullmatch(found[0].group()):
            cut = found[0].start()  # e.g. an OSC string not yet terminated
        csi = _CSI_SO_FAR.search(text)  # "\x1b[12" or "\x9b": no match yet, but may become one
        if csi is not None:
            cut = min(cut, csi.start())
        if len(text) - cut <= HOLD_LIMIT:
            text, self._held = text[:cut], text[cut:]
        return sanitize(text)

    def finish(self) -> str:
        held, self._held = self._held, ""
        return sanitize(held)


DIM = "\x1b[2m"
RESET = "\x1b[0m"


def _is_fence(line: str) -> bool:
    stripped = line.lstrip()
    return stripped.startswith("```") or stripped.startswith("~~~")


@attrs.define
class MarkdownBlocks:
    """Splits streamed Markdown into complete blocks: at blank lines outside code fences.

    Each character is looked at once (the pending line is kept apart), so a long
    reply costs linear time however it is chunked.
    """

    _block: list[str] = attrs.Factory(list)  # complete lines of the current block
    _partial: list[str] = attrs.Factory(list)  # pieces of the line being streamed
    _in_fence: bool = False

    def feed(self, text: str) -> list[str]:
        if "\n" not in text:  # a long line in many deltas is joined once, not per delta
            self._partial.append(text)
            return []
        done: list[str] = []
        pieces = ("".join(self._partial) + text).split("\n")
        self._partial = [pieces.pop()]
        for line in pieces:
            if _is_fence(line):
                self._in_fence = not self._in_fence
            if not line.strip() and not self._in_fence:
                if self._block:
                    done.append("\n".join(self._block))
                    self._block = []
                continue
            self._block.append(line)
        return done

    def finish(self) -> list[str]:
        """The rest, as a last block (an unclosed fence is closed by the renderer)."""
        partial = "".join(self._partial)
        if partial:
            self._block.append(partial)
        rest = ["\n".join(self._block)] if self._block and "".join(self._block).strip() else []
        self._block, self._partial, self._in_fence = [], [], False
        return rest


class RichStyle:
    """Replies as Markdown with highlighted code; tool and status lines dimmed."""

    def __init__(self, width: int = 100, *, color: bool = True) -> None:
        self.width = width
        self.color = color
        self._blocks = MarkdownBlocks()
        self._clean = StreamSanitizer()

    def delta(self, text: str) -> str:
        return "".join(self._render(b) for b in self._blocks.feed(self._clean.feed(text)))

    def flush(self) -> str:
        blocks = self._blocks.feed(self._clean.finish()) + self._blocks.finish()
        return "".join(self._render(b) for b in blocks)

    def dim(self, text: str) -> str:
        text = sanitize(text)
        return f"{DIM}{text}{RESET}" if self.color else text

    def plain(self, text: str) -> str:
        return sanitize(text)

    def load(self) -> None:
        """Import rich (~0.1 s of CPU, ~5 MiB). Blocking: the terminal calls it in a worker
        thread when the first message is sent, so it loads while pi works on the reply
        instead of on the event loop when the reply's first block is rendered; and a
        chat that sends nothing never loads it."""
        import rich.console
        import rich.markdown  # noqa: F401

    def _render(self, block: str) -> str:
        from rich.console import Console
        from rich.markdown import Markdown

        out = io.StringIO()
        console = Console(
            file=out,
            width=self.width,
            force_terminal=self.color,
            color_system="256" if self.color else None,
            no_color=not self.color,
            highlight=False,
            emoji=False,
        )
        console.print(Markdown(block, code_theme="monokai"))
        return out.getvalue() + "\n"  # blocks are separated by a blank line, as in the source


@attrs.define
class PlainStyle:
    """Pipes and tests: the text as it came, made safe; no styling."""

    _clean: StreamSanitizer = attrs.Factory(StreamSanitizer)

    def delta(self, text: str) -> str:
        return self._clean.feed(text)

    def flush(self) -> str:
        return self._clean.finish()

    def dim(self, text: str) -> str:
        return sanitize(text)

    def plain(self, text: str) -> str:
        return sanitize(text)


Style = RichStyle | PlainStyle
