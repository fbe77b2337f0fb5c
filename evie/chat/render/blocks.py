"""Markdown parsed once into blocks of a small, platform-neutral markup.

cmark-gfm parses (C, linear time, adr/0013) and renders HTML; one pass over
that HTML turns it into :class:`Block` s — top-level paragraphs, headings,
code blocks, quotes, tables, and each top-level list item — made of three
kinds of token: text (what the reader sees), an opening (bold, italic,
strike, code, pre, link, url, quote) and a closing. The platform flavours
(``telegram.py``, ``discord.py``) render tokens; ``split.py`` packs blocks
into messages.

Raw HTML is never passed on: ``<`` is swapped for a private-use character
before parsing and back after, so ``use <br> here`` reads as written and
inline code keeps its ``<``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

import attrs

from evie.chat.render.cmark import to_html

TEXT: Final = 0
OPEN: Final = 1
CLOSE: Final = 2

#: (TEXT, text, "") | (OPEN, kind, arg) | (CLOSE, kind, "")
Token = tuple[int, str, str]

_SLICE = 1 << 18  # big texts are prepared in slices: no single step holds the GIL for long
_PUA = "\ue000\ue001\ue002\ue003\ue004\ue005\ue006\ue007"
_TAG = re.compile(r"<(/?)([a-z0-9]+)([^>]*)>")
_ATTR = re.compile(r'([a-z]+)="([^"]*)"')
_INLINE: Final = {"strong": "b", "em": "i", "del": "s"}
_INLINE_OPEN: Final = {tag: (OPEN, kind, "") for tag, kind in _INLINE.items()}
_INLINE_CLOSE: Final = {tag: (CLOSE, kind, "") for tag, kind in _INLINE.items()}
_BLOCK_TAGS: Final = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "ul", "ol", "li", "blockquote", "hr"}
    | {"table", "thead", "tbody", "tr", "th", "td"}
)
_LANG = re.compile(r"[\w+#.-]{1,40}")
#: a table's layout tags other than ends of cells and rows (cmark ends each with a newline)
_TABLE_LAYOUT = re.compile(r"</?(?:thead|tbody|tr)>\n|<t[hd](?: [^>]*)?>")
_IMG = re.compile(r"<img [^>]*>")
_IMG_ALT = re.compile(r' alt="([^"]*)"')
_ANY_TAG = re.compile(r"<[^>]*>")


def _img_alt(m: re.Match[str]) -> str:
    """Inside a table cell only text shows: an image leaves its alt text."""
    alt = _IMG_ALT.search(m.group(0))
    return (alt.group(1) if alt else "") or "image"


@attrs.define
class Block:
    """One unit of chunking: kept whole in a message when it fits."""

    tokens: list[Token]
    #: what separates it from the block before in the same message
    sep: str = "\n\n"


def _unescape(text: str, lt: str) -> str:
    # cmark escapes exactly these four in text and attributes (and ' as &#x27; in URLs)
    if "&" in text:
        text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
        text = text.replace("&#x27;", "'").replace("&amp;", "&")
    return text.replace(lt, "<") if lt in text else text


def _attrs(raw: str, lt: str) -> dict[str, str]:
    return {k: _unescape(v, lt) for k, v in _ATTR.findall(raw)}


class _Builder:
    """Walks cmark's HTML (which has a fixed, known shape) and collects blocks."""

    def __init__(self, lt: str) -> None:
        self.lt = lt
        self.blocks: list[Block] = []
        self.tokens: list[Token] = []
        self.depth = 0  # open containers (lists, quotes)
        self.lists: list[list[int]] = []  # per open list: [next number or -1 for bullets]
        self.inline: list[bool] = []  # per open inline tag: did it open a token?
        self.in_pre = False
        self.sep = "\n\n"
        self.after_bullet = False
        self.item_sep = "\n\n"  # the first item of a top-level list starts a paragraph

    # -- helpers -------------------------------------------------------------------

    def text(self, text: str) -> None:
        self.after_bullet = False
        if text:
            self.tokens.append((TEXT, text, ""))

    def newline(self) -> None:
        """Separate a new block-level child from what came before it in its container."""
        if self.after_bullet:
            return
        for kind, text, _ in reversed(self.tokens):
            if kind == TEXT:
                if not text.endswith("\n"):
                    self.tokens.append((TEXT, "\n", ""))
                return

    def start_block(self) -> None:
        if self.depth == 0:
            self.end_block()
            self.sep = "\n\n"
        else:
            self.newline()

    def end_block(self, *, force: bool = False) -> None:
        if (self.depth == 0 or force) and self.tokens:
            self.blocks.append(Block(self.tokens, self.sep))
            self.tokens = []

    # -- the walk ------------------------------------------------------------------

    def feed(self, html: str) -> Iterator[Block]:
        """Blocks as they complete: only one block's tokens are alive at a time, so a 10 MB
        reply never holds millions of objects (whose garbage collection would stall).

        This loop runs once per tag of the whole reply: text and the inline tags (bold,
        italic, strike) are handled in it directly, with shared token tuples, and only
        the rarer tags go through :meth:`start` / :meth:`end` (adr/0013's profile)."""
        pos = 0
        after_block = True
        search = _TAG.search
        lt = self.lt
        inline = self.inline
        while (m := search(html, pos)) is not None:
            closing, tag, raw = m.groups()
            start = m.start()
            is_block = tag in _BLOCK_TAGS
            if start > pos:
                text = html[pos:start]
                if not self.in_pre:  # newlines beside block tags are layout
                    if after_block:
                        text = text.lstrip("\n")
                    if is_block:
                        text = text.rstrip("\n")
                if text:
                    self.after_bullet = False
                    if "&" in text or lt in text:
                        text = _unescape(text, lt)
                    self.tokens.append((TEXT, text, ""))
            after_block = is_block
            pos = m.end()
            if not self.in_pre and tag in _INLINE_OPEN:
                if not closing:
                    self.tokens.append(_INLINE_OPEN[tag])
                    inline.append(True)
                elif inline and inline.pop():
                    self.tokens.append(_INLINE_CLOSE[tag])
                continue  # an inline tag never ends a block
            if closing:
                self.end(tag)
            elif tag == "table" and not self.in_pre:
                pos = self.table_at(html, pos)  # a whole table at C speed
            else:
                self.start(tag, raw, html, pos)
            if self.blocks:
                yield from self.blocks
                self.blocks.clear()
        if pos < len(html):
            self.data(html[pos:], after_block, True)
        self.depth = 0
        self.end_block()
        yield from self.blocks

    def data(self, raw: str, after_block: bool, before_block: bool) -> None:
        if not self.in_pre:  # newlines beside block tags are layout
            if after_block:
                raw = raw.lstrip("\n")
            if before_block:
                raw = raw.rstrip("\n")
        if raw:
            self.text(_unescape(raw, self.lt))

    def start(self, tag: str, raw: str, html: str, pos: int) -> None:
        if self.in_pre:
            if tag == "code":
                lang = _attrs(raw, self.lt).get("class", "").removeprefix("language-")
                arg = lang if _LANG.fullmatch(lang) else ""
                self.tokens.append((OPEN, "pre", arg))
            return
        kind = _INLINE.get(tag)
        if kind is not None:
            self.tokens.append((OPEN, kind, ""))
            self.inline.append(True)
        elif tag == "code":
            end = html.find("</code>", pos)
            fence = "``" if "`" in html[pos:end] else "`"
            self.tokens.append((OPEN, "code", fence))
            self.inline.append(True)
        elif tag == "a":
            href = _attrs(raw, self.lt).get("href", "")
            end = html.find("</a>", pos)
            label = _unescape(html[pos:end], self.lt) if end >= 0 else None
            if not href:
                self.inline.append(False)
            else:
                self.tokens.append((OPEN, "url" if label == href else "a", href))
                self.inline.append(True)
        elif tag == "img":
            found = _attrs(raw, self.lt)
            alt, src = found.get("alt") or "image", found.get("src", "")
            if src:
                self.tokens += [(OPEN, "a", src), (TEXT, alt, ""), (CLOSE, "a", "")]
            else:
                self.text(alt)
        elif tag == "br":
            pass  # cmark follows it with a newline in the text
        elif tag in ("p", "h1", "h2", "h3", "h4", "h5", "h6"):
            self.start_block()
            if tag[0] == "h":
                self.tokens.append((OPEN, "b", ""))
        elif tag == "pre":
            self.start_block()
            if self.after_bullet:  # a fence must start its own line
                self.text("\n")
            self.in_pre = True
        elif tag == "hr":
            self.start_block()
            self.text("———")
            self.end_block()
        elif tag in ("ul", "ol"):
            self.start_block()
            start = _attrs(raw, self.lt).get("start", "1") if tag == "ol" else ""
            self.lists.append([int(start) if start.isdigit() else (1 if tag == "ol" else -1)])
            if self.depth == 0:
                self.item_sep = "\n\n"
            self.depth += 1
        elif tag == "li":
            if self.depth == 1 and self.lists:  # each top-level item is a block of its own
                self.end_block(force=True)
                self.sep, self.item_sep = self.item_sep, "\n"
            else:
                self.newline()
            counter = self.lists[-1] if self.lists else [-1]
            bullet = "• " if counter[0] < 0 else f"{counter[0]}. "
            if counter[0] >= 0:
                counter[0] += 1
            self.text("  " * (len(self.lists) - 1) + bullet)
            self.after_bullet = True
        elif tag == "blockquote":
            self.start_block()
            if self.after_bullet:  # a quote must start its own line (Discord's "> ")
                self.text("\n")
            self.tokens.append((OPEN, "quote", ""))
            self.depth += 1

    def table_at(self, html: str, pos: int) -> int:
        """A whole table from just after its ``<table>``; where its ``</table>`` ends.

        A table is the commonest huge reply and its cells hold only inline text (each
        cell on a line of its own in cmark's HTML, every row as wide as the header),
        so it is read with a few whole-string passes instead of a Python step per tag."""
        self.start_block()
        end = html.find("</table>", pos)
        end = len(html) if end < 0 else end
        body = html[pos:end].lstrip("\n").replace("\x1f", " ")
        body = body.replace("</td>\n", "\x1f").replace("</th>\n", "\x1f")
        body = _TABLE_LAYOUT.sub("", body.replace("</tr>\n", "\0"))
        if "<img" in body:
            body = _IMG.sub(_img_alt, body)
        if "<" in body:
            body = _ANY_TAG.sub("", body)
        if body.strip("\x1f\0"):
            self.after_bullet = False
        body = _unescape(body, self.lt).replace("\n", " ").replace("\0", "\n")
        rows = [row.split("\x1f")[:-1] for row in body.split("\n") if row]
        widths = [min(40, max(map(len, column))) for column in zip(*rows, strict=False)]
        text = _table_text(rows, widths)
        self.tokens += [(OPEN, "pre", ""), (TEXT, text, ""), (CLOSE, "pre", "")]
        self.end_block()
        return end + len("</table>") if end < len(html) else end

    def end(self, tag: str) -> None:
        if self.in_pre:
            if tag == "pre":
                self.in_pre = False
                if self.tokens and self.tokens[-1][0] == TEXT:
                    _, text, _ = self.tokens[-1]
                    self.tokens[-1] = (TEXT, text.removesuffix("\n"), "")
                self.tokens.append((CLOSE, "pre", ""))
                self.end_block()
            return
        if tag in _INLINE or tag in ("code", "a"):
            if self.inline and self.inline.pop():
                self.tokens.append((CLOSE, _INLINE.get(tag, tag), ""))
        elif tag in ("p", "h1", "h2", "h3", "h4", "h5", "h6"):
            if tag[0] == "h":
                self.tokens.append((CLOSE, "b", ""))
            self.end_block()
        elif tag == "li":
            if self.depth == 1:
                self.end_block(force=True)
        elif tag in ("ul", "ol"):
            self.lists.pop()
            self.depth -= 1
            self.end_block()
        elif tag == "blockquote":
            self.tokens.append((CLOSE, "quote", ""))
            self.depth -= 1
            self.end_block()


def _table_text(rows: list[list[str]], widths: list[int]) -> str:
    """A table as aligned columns, for a monospaced block (no chat platform has tables)."""
    line = " | ".join(f"{{:<{w}}}" for w in widths).format
    lines = [line(*row).rstrip() for row in rows]
    if len(lines) > 1:
        lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def parse(markdown: str) -> Iterator[Block]:
    """Parse once; every later step works on these blocks, as they come."""
    lt = next((c for c in _PUA if c not in markdown), None)
    if lt is None:  # the text uses all eight stand-ins: give up on keeping "<" raw-safe
        lt = _PUA[0]
        markdown = markdown.replace(lt, "\ufffd")
    html = to_html(
        [markdown[i : i + _SLICE].replace("<", lt) for i in range(0, len(markdown), _SLICE)]
    )
    return _Builder(lt).feed(html)
