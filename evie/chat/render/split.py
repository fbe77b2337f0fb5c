"""Blocks → messages: each block rendered once, packed whole when it fits, split when not.

A block too long for one message is cut at a newline (else a space, else
anywhere) inside its text; every element open at the cut is closed at the
end of one message and reopened at the start of the next, so a code block
split in two is two valid code blocks with the same language. All sizes are
counted in the platform's own units (``Flavor.units``), and the work is
linear: each token is rendered once, and a cut searches only the window that
can still fit.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import attrs

from evie.chat.render.blocks import CLOSE, OPEN, TEXT, Block, Token, tokens_of


class Flavor:
    """How one platform writes the neutral tokens, and how it counts a message.

    A base class the flavours derive from, not a ``Protocol``: compiled with mypyc, its
    methods are then called through a native vtable with unboxed arguments, where a
    protocol's are looked up by name and called through Python at every block and token
    (adr/0017, sixth follow-up)."""

    #: the most units one message may have
    limit: int

    def open(self, kind: str, arg: str, outer: Sequence[str]) -> str | None:
        """Markup that opens ``kind`` inside ``outer`` kinds; None: not shown on this platform."""
        raise NotImplementedError

    def close(self, kind: str, arg: str, outer: Sequence[str]) -> str:
        raise NotImplementedError

    def text(self, text: str, outer: Sequence[str]) -> str:
        """Visible text as markup inside ``outer`` (escaped as needed)."""
        raise NotImplementedError

    def units(self, markup: str, visible: str) -> int:
        """The size the platform counts for this piece of a message."""
        raise NotImplementedError

    def whole(self, html: str, kind: str, tilde: str) -> tuple[str, str] | None:
        """A top-level block (``Block.kind``) from md4c's HTML of its inside, converted
        whole at C speed: (markup, visible text), exactly what its tokens would give;
        None when it holds something only the token walk handles."""
        raise NotImplementedError


@attrs.frozen
class Chunk:
    """One message: formatted, and the same words without formatting (the fallback)."""

    markup: str
    plain: str


@attrs.define
class _Open:
    kind: str
    arg: str
    markup: str | None  # None: this platform does not show it
    shown: bool = False  # opened in the current message (opens are lazy: no empty tags)
    close: str = ""
    close_units: int = 0


class _Writer:
    """Builds messages token by token, closing and reopening elements at each cut."""

    def __init__(self, flavor: Flavor, most: int | None = None) -> None:
        self.flavor = flavor
        self.most = most  # stop once there are more messages than this (see pack)
        self.stack: list[_Open] = []
        self.kinds: list[str] = []
        self.chunks: list[Chunk] = []
        self._reset()

    def _reset(self) -> None:
        self.parts: list[str] = []
        self.plain: list[str] = []
        self.used = 0
        self.closing = 0  # units the closes of the shown elements will take

    # -- structure -------------------------------------------------------------------

    def push(self, kind: str, arg: str) -> None:
        markup = self.flavor.open(kind, arg, self.kinds)
        entry = _Open(kind, arg, markup)
        if markup is not None:
            entry.close = self.flavor.close(kind, arg, self.kinds)
            entry.close_units = self.flavor.units(entry.close, "")
        self.stack.append(entry)
        self.kinds.append(kind)

    def pop(self) -> None:
        entry = self.stack.pop()
        self.kinds.pop()
        if entry.shown:
            self.parts.append(entry.close)
            self.used += entry.close_units
            self.closing -= entry.close_units

    def _pending_units(self) -> int:
        """Units the not-yet-shown opens (and their closes) will take once text comes."""
        return sum(
            self.flavor.units(e.markup, "") + e.close_units
            for e in self.stack
            if e.markup is not None and not e.shown
        )

    def _show_opens(self) -> None:
        for entry in self.stack:
            if entry.markup is not None and not entry.shown:
                entry.shown = True
                self.parts.append(entry.markup)
                self.used += self.flavor.units(entry.markup, "")
                self.closing += entry.close_units

    # -- text --------------------------------------------------------------------------

    def write(self, text: str) -> None:
        self._show_opens()
        markup = self.flavor.text(text, self.kinds)
        self.parts.append(markup)
        self.plain.append(text)
        self.used += self.flavor.units(markup, text)

    def room(self) -> int:
        return self.flavor.limit - self.used - self.closing - self._pending_units()

    def fit(self, text: str, pos: int, room: int) -> int:
        """How many characters of ``text[pos:]`` fit in ``room`` units (cut at a line end,
        else a word end). Only the window that can fit is looked at: linear overall."""
        if room <= 0:
            return 0
        window = text[pos : pos + room]  # no character costs less than one unit
        flavor, kinds = self.flavor, self.kinds

        def cost(n: int) -> int:
            piece = window[:n]
            return flavor.units(flavor.text(piece, kinds), piece)

        full = cost(len(window))
        if full <= room:
            take = len(window)
        else:
            # every character costs at least one unit: from a proportional guess, the
            # excess (or the slack) bounds how far the answer can be; then bisect that gap
            guess = len(window) * room // full
            at = cost(guess)
            if at <= room:
                lo, hi = guess, min(len(window) - 1, guess + room - at)
            else:
                lo, hi = 0, guess - (at - room)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if cost(mid) <= room:
                    lo = mid
                else:
                    hi = mid - 1
            take = lo
        if pos + take < len(text):  # a cut: at the end of a line, else of a word
            for lo in (take // 2, 0):
                for mark in ("\n", " "):
                    at = window.rfind(mark, lo, take)
                    if at >= 0:
                        return at + 1
            if self.plain:
                return 0  # start the next message with this word
        return take

    def cut(self) -> None:
        for entry in reversed(self.stack):
            if entry.shown:
                self.parts.append(entry.close)
                entry.shown = False
        self.emit()

    def emit(self) -> None:
        plain = "".join(self.plain)
        if plain.strip():  # platforms refuse empty messages
            self.chunks.append(Chunk("".join(self.parts), plain))
        self._reset()

    def write_split(self, tokens: list[Token]) -> None:
        for kind, value, arg in tokens:
            if kind == OPEN:
                self.push(value, arg)
            elif kind == CLOSE:
                self.pop()
            elif not self.write_text((value,)):
                return

    def write_text(self, pieces: Iterable[str]) -> bool:
        """One text, given in pieces, cut into messages; False once there are enough
        (see :func:`pack`). Pieces are read only as far as the cuts need: more than a
        message ahead of the cut, since a cut looks at most ``limit`` characters ahead
        (every character costs a unit at least) — so a text laid out lazily (a huge
        table) is laid out only as far as the messages made of it, and is cut exactly as
        the whole text would be."""
        rest = iter(pieces)
        value, pos, more = "", 0, True
        while True:
            while more and len(value) - pos <= self.flavor.limit:
                piece = next(rest, None)
                if piece is None:
                    more = False
                else:
                    value = value[pos:] + piece if pos < len(value) else piece
                    pos = 0
            if pos >= len(value):
                return True
            take = self.fit(value, pos, self.room())
            if take == 0:
                if not self.plain:  # nothing fits even in an empty message
                    take = 1
                else:
                    self.cut()
                    continue
            piece = value[pos : pos + take]
            pos += take
            if pos < len(value) and piece.endswith("\n") and len(piece) > 1:
                piece = piece[:-1]  # the cut itself ends the line
            self.write(piece)
            if pos < len(value):
                self.cut()
                if self.enough():
                    return False

    def enough(self) -> bool:
        return self.most is not None and len(self.chunks) > self.most


def render_block(block: Block, flavor: Flavor) -> tuple[str, str, int] | None:
    """A whole block as (markup, visible text, units), rendered once; None when one of
    its texts alone is over the limit (it will be split: not worth escaping whole).

    The same output as :class:`_Writer` (lazy opens: no empty elements) without its
    bookkeeping, because most blocks fit and this is the hot path.
    """
    parts: list[str] = []
    plain: list[str] = []
    stack: list[list[Any]] = []  # [markup or None, close, shown]
    kinds: list[str] = []
    hidden = 0  # opens not shown yet
    for kind, value, arg in tokens_of(block):
        if kind == TEXT:
            if not value:
                continue
            if len(value) > flavor.limit:
                return None
            if hidden:
                for entry in stack:
                    if not entry[2] and entry[0] is not None:
                        parts.append(entry[0])
                        entry[2] = True
                hidden = 0
            parts.append(flavor.text(value, kinds))
            plain.append(value)
        elif kind == OPEN:
            markup = flavor.open(value, arg, kinds)
            close = "" if markup is None else flavor.close(value, arg, kinds)
            stack.append([markup, close, False])
            kinds.append(value)
            hidden += markup is not None
        else:
            markup, close, shown = stack.pop()
            kinds.pop()
            if shown:
                parts.append(close)
            elif markup is not None:
                hidden -= 1
    text, seen = "".join(parts), "".join(plain)
    return text, seen, flavor.units(text, seen)


def pack(
    blocks: Iterable[Block], flavor: Flavor, *, whole: bool = True, most: int | None = None
) -> list[Chunk]:
    """Messages within ``flavor.limit``: whole blocks where they fit, split blocks otherwise.

    ``whole=False`` renders every block from its tokens (the reference the C-speed
    conversion of paragraphs and headings is tested against). With ``most``, packing
    stops once more than ``most`` messages are done: the first ones are those of the whole
    reply, and the rest of its blocks are never converted (a reply that long is sent as
    its first message and a file)."""
    writer = _Writer(flavor, most)
    sep_units = {sep: flavor.units(sep, sep) for sep in ("\n", "\n\n")}
    for block in blocks:
        if most is not None and len(writer.chunks) > most:  # writer.enough(), inline
            return writer.chunks
        if block.table is not None and whole and not block.tokens:
            # a long table: laid out, escaped and split only as far as the messages need
            # it; at most a message long, it goes on as any block, from its tokens
            pieces = block.table.pieces()
            head = _longer_than(pieces, flavor.limit)
            if len(head) > flavor.limit:
                writer.emit()
                writer.push("pre", "")
                if writer.write_text(itertools.chain((head,), pieces)):
                    writer.pop()
                continue
            block.tokens = [(OPEN, "pre", ""), (TEXT, head, ""), (CLOSE, "pre", "")]
        markup = plain = ""
        units = -1  # not rendered yet (no tuple made per block for the three)
        # a block whose HTML is much longer than a message will be split anyway: the
        # token walk (same output) without converting it whole first
        if block.html is not None and whole and len(block.html) <= 4 * flavor.limit:
            converted = flavor.whole(block.html, block.kind, block.tilde)
            if converted is not None:
                markup, plain = converted
                units = flavor.units(markup, plain)
        if units < 0:
            rendered = render_block(block, flavor)
            if rendered is not None:
                markup, plain, units = rendered
        if units < 0 or len(plain) > flavor.limit:
            writer.emit()  # too big for any message (a unit per character at least)
            writer.write_split(tokens_of(block))
            continue
        parts, plains = writer.parts, writer.plain
        if plains:  # after another block: with its separator, if both fit
            sep = sep_units.get(block.sep)
            if sep is None:
                sep = sep_units[block.sep] = flavor.units(block.sep, block.sep)
            if writer.used + sep + units <= flavor.limit:
                parts.append(block.sep)
                parts.append(markup)
                plains.append(block.sep)
                plains.append(plain)
                writer.used += sep + units
                continue
            writer.emit()
        if units <= flavor.limit:
            writer.parts.append(markup)
            writer.plain.append(plain)
            writer.used += units
        else:
            writer.write_split(tokens_of(block))
    writer.emit()
    return writer.chunks


def _longer_than(pieces: Iterator[str], limit: int) -> str:
    """The first pieces joined, as many as make more than ``limit`` characters (or all)."""
    head: list[str] = []
    size = 0
    for piece in pieces:
        head.append(piece)
        size += len(piece)
        if size > limit:
            break
    return "".join(head)


class _Plain(Flavor):
    """Unformatted text, measured like the platform measures it."""

    def __init__(self, flavor: Flavor) -> None:
        self.limit = flavor.limit
        self._units = flavor.units

    def open(self, kind: str, arg: str, outer: Sequence[str]) -> str | None:
        return None

    def close(self, kind: str, arg: str, outer: Sequence[str]) -> str:
        return ""

    def text(self, text: str, outer: Sequence[str]) -> str:
        return text

    def units(self, markup: str, visible: str) -> int:
        return self._units(markup, markup)

    def whole(self, html: str, kind: str, tilde: str) -> tuple[str, str] | None:
        return None


def split_plain(text: str, flavor: Flavor) -> list[str]:
    """Plain text in pieces within the platform's limit (cut at line ends, then spaces)."""
    writer = _Writer(_Plain(flavor))
    writer.write_split([(TEXT, text, "")])
    writer.emit()
    return [chunk.plain for chunk in writer.chunks]
