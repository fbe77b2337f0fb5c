"""Markdown parsed once into blocks of a small, platform-neutral markup.

md4c parses (C, linear time, adr/0017) and renders HTML; one pass over
that HTML turns it into :class:`Block` s — top-level paragraphs, headings,
code blocks, quotes, tables, and each top-level list item — made of three
kinds of token: text (what the reader sees), an opening (bold, italic,
strike, code, pre, link, url, quote) and a closing. The platform flavours
(``telegram.py``, ``discord.py``) render tokens; ``split.py`` packs blocks
into messages.

Raw HTML is never passed on: md4c treats it as text (``MD_FLAG_NOHTML``), so
``use <br> here`` reads as written. A lone ``~`` is swapped for a private-use
character before parsing and back after: md4c strikes ``~one~`` as GFM does,
and "~5 min … ~x~" must stay text (only ``~~two~~`` strikes, adr/0017).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator
from typing import Final

import attrs

from evie.chat.render.parser import to_html

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
#: the tokens that open and close strong, em and del, by :func:`tag_kind` less 2
_INLINE_OPENS: Final = tuple((OPEN, _INLINE[tag], "") for tag in ("strong", "em", "del"))
_INLINE_CLOSES: Final = tuple((CLOSE, _INLINE[tag], "") for tag in ("strong", "em", "del"))
_BLOCK_TAGS: Final = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "ul", "ol", "li", "blockquote", "hr"}
    | {"table", "thead", "tbody", "tr", "th", "td"}
)
#: list items indent two spaces per level up to this depth: md4c nests as deep as the text
#: does (cmark-gfm stopped near 100), and 5,000 levels indented in full would be quadratic
MAX_INDENT: Final = 10
_WHOLE: Final = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre"})
_WHOLE_CLOSE: Final = {tag: f"</{tag}>" for tag in _WHOLE}
#: a code block's inside in md4c's HTML
PRE_CODE = re.compile(r'<code(?: class="language-([^"]*)")?>(.*)</code>\n?', re.S)
_LANG = re.compile(r"[\w+#.-]{1,40}")
#: a table's layout tags other than ends of cells and rows (md4c ends each with a newline)
_TABLE_LAYOUT = re.compile(r"</?(?:thead|tbody|tr)>\n|<t[hd](?: [^>]*)?>")
#: a table cell's inside (md4c writes each cell on a line of its own)
_CELL = re.compile(r"<t[hd](?: [^>]*)?>(.*)</t[hd]>\n")
_TRAILING_SPACE = re.compile(r"[^\S\n]+$", re.MULTILINE)  # what str.rstrip takes of a line
_INLINE_TAGS: Final = (
    "<strong>", "</strong>", "<em>", "</em>", "<del>", "</del>", "<code>", "</code>", "<br>",
)  # fmt: skip
_IMG = re.compile(r"<img [^>]*>")
_IMG_ALT = re.compile(r' alt="([^"]*)"')
_ANY_TAG = re.compile(r"<[^>]*>")
#: a paragraph's HTML in pieces: text, tag, text, tag, …, text (the texts are what
#: :func:`visible_text` keeps)


def split_tags(html: str) -> list[str]:
    """``re.split(r"(<[^>]*>)", html)``: texts and tags alternating, by two ``str.find`` a tag
    in a compiled loop, where the regex's search and match cost a paragraph ~15,000
    instructions. A tag is a "<" and everything up to the first ">" after it; a "<"
    with no ">" after it (nor then after any later "<") ends the tags."""
    parts: list[str] = []
    last = 0
    while True:
        start = html.find("<", last)
        if start < 0:
            break
        end = html.find(">", start + 1)
        if end < 0:
            break
        parts.append(html[last:start])
        parts.append(html[start : end + 1])
        last = end + 1
    parts.append(html[last:] if last else html)
    return parts


#: md4c's inline tags whose markup is fixed on every platform, in the order of the
#: flavours' tuples of marks (``fixed_tag`` gives the index)
FIXED_TAGS: Final = ("<strong>", "</strong>", "<em>", "</em>", "<del>", "</del>", "<br>")


def fixed_tag(tag: str) -> int:
    """The index of ``tag`` in :data:`FIXED_TAGS`, -1 when it is not there: by its length
    and one or two compares, where a dict lookup first hashes the fresh tag string (a
    paragraph's tags are new strings every time)."""
    size = len(tag)
    if size == 4:
        return 2 if tag == "<em>" else 6 if tag == "<br>" else -1
    if size == 5:
        return 3 if tag == "</em>" else 4 if tag == "<del>" else -1
    if size == 6:
        return 5 if tag == "</del>" else -1
    if size == 8:
        return 0 if tag == "<strong>" else -1
    if size == 9:
        return 1 if tag == "</strong>" else -1
    return -1


def tag_kind(name: str) -> int:
    """1 for a name in :data:`_BLOCK_TAGS`, 2, 3, 4 for strong, em, del, else 0: by its
    length and a few compares (a native read per character), where a set lookup first
    hashes the fresh name the walk sliced (every tag of the reply)."""
    size = len(name)
    if size == 2:
        first, second = ord(name[0]), ord(name[1])
        if first == 104:  # h1…h6, hr
            return 1 if 49 <= second <= 54 or second == 114 else 0
        if first == 116:  # tr, th, td
            return 1 if second == 114 or second == 104 or second == 100 else 0
        if first == 117 or first == 111:  # ul, ol
            return 1 if second == 108 else 0
        if first == 108:  # li
            return 1 if second == 105 else 0
        return 3 if first == 101 and second == 109 else 0  # em
    if size == 1:
        return 1 if name == "p" else 0
    if size == 3:
        return 1 if name == "pre" else 4 if name == "del" else 0
    if size == 5:
        return 1 if name == "table" or name == "thead" or name == "tbody" else 0
    if size == 6:
        return 2 if name == "strong" else 0
    if size == 10:
        return 1 if name == "blockquote" else 0
    return 0


def _img_alt(m: re.Match[str]) -> str:
    """Inside a table cell only text shows: an image leaves its alt text."""
    alt = _IMG_ALT.search(m.group(0))
    return (alt.group(1) if alt else "") or "image"


class Block:
    """One unit of chunking: kept whole in a message when it fits.

    A plain class, not attrs: compiled with mypyc (adr/0017, fourth follow-up) it is a
    native class whose constructor and attributes cost a C access each; attrs' generated
    ``__init__`` stays interpreted Python, and one is made per block (11,500 per MB of
    ordinary text)."""

    __slots__ = ("html", "kind", "sep", "table", "tilde", "tokens")

    def __init__(
        self,
        tokens: list[Token],
        sep: str = "\n\n",
        html: str | None = None,
        kind: str = "p",
        tilde: str = "",
        table: Table | None = None,
    ) -> None:
        self.tokens = tokens
        #: what separates it from the block before in the same message
        self.sep = sep
        #: a top-level paragraph, heading, code block or one-paragraph quote is kept as
        #: md4c's HTML of its inside, which the flavours convert whole at C speed
        #: (``whole``); its tokens are made only when needed
        self.html = html
        #: "p", "h", "pre" or "quote" (a quote's html is its paragraph's inside)
        self.kind = kind
        #: the stand-in for a lone "~" in ``html``
        self.tilde = tilde
        #: a long top-level table, laid out only as far as its messages are read (its
        #: tokens are made only when needed)
        self.table = table


#: a top-level table of more rows than this is laid out lazily (:class:`Table`); a short
#: one costs less laid out at once
LAZY_TABLE_ROWS: Final = 32
_FIRST_ROWS = 32  # rows in the first lazily laid-out batch; each next batch doubles, up to
_MOST_ROWS = 4096


@attrs.frozen
class Table:
    """A table's cells (its text as shown, row after row) and its columns' widths.

    The widths need every row, and are found with C-speed passes; laying the rows out
    (format, trailing spaces, and later escaping and splitting) is what costs, and a huge
    table is mostly sent as a file (issue 12): :meth:`pieces` lays out rows in growing
    batches, only as far as the messages that are shown need them."""

    cells: list[str]
    widths: list[int]

    def text(self) -> str:
        """The whole text (:func:`_table_lines`), laid out at once."""
        return _table_lines(self.cells, self.widths)

    def pieces(self) -> Iterator[str]:
        """:meth:`text` in pieces, each laid out when it is asked for: the header, the
        rule under it, then batches of rows, each batch starting with its newline."""
        columns, cells, widths = len(self.widths), self.cells, self.widths
        rows = len(cells) // columns
        line = _row_format(widths)
        yield _TRAILING_SPACE.sub("", line.format(*cells[:columns]))
        if rows > 1:
            yield "\n" + "-+-".join("-" * w for w in widths)
        start, batch = 1, _FIRST_ROWS
        while start < rows:
            stop = min(rows, start + batch)
            lines = ("\n" + line) * (stop - start)
            text = lines.format(*cells[start * columns : stop * columns])
            yield _strip_ragged(text, cells, columns, start, stop, 1)
            start, batch = stop, min(2 * batch, _MOST_ROWS)


def _row_format(widths: list[int]) -> str:
    """A row's format string: each column padded to its width but the last, whose padding
    would only be stripped again with the line's trailing spaces."""
    last = len(widths) - 1
    return " | ".join([f"{{:<{w}}}" if i < last else "{}" for i, w in enumerate(widths)])


def _strip_ragged(
    text: str, cells: list[str], columns: int, start: int, stop: int, lead: int
) -> str:
    """``text``, rows ``start``…``stop`` laid out by :func:`_row_format` one per line
    (after ``lead`` empty lines), with the trailing whitespace of each line removed, as
    ``_TRAILING_SPACE`` would: only a row whose last cell is empty or ends in whitespace
    has any (the cells hold no newline), so only those lines are stripped, found by a
    look at each last cell — the regex tried every space of the text (a third of a huge
    table's layout)."""
    ragged: list[int] = []
    for row in range(start, stop):
        cell = cells[row * columns + columns - 1]
        if not cell or cell[-1].isspace():
            ragged.append(row - start + lead)
    if not ragged:
        return text
    lines = text.split("\n")
    for at in ragged:
        lines[at] = lines[at].rstrip()
    return "\n".join(lines)


_WRAP: Final = {
    "p": ("<p>", "</p>"),
    "h": ("<h1>", "</h1>"),
    "pre": ("<pre>", "</pre>"),
    "quote": ("<blockquote>\n<p>", "</p>\n</blockquote>"),
}
_INLINE_TAG = re.compile(r"<(/?)(strong|em|del|code|a)\b")
_TEXT_BR = r"[^<]*+(?:<br>[^<]*+)*+"  # text and line breaks, no other tag
#: a paragraph whose inline elements each hold only text, every one closed right after it
#: opens (the common case): balanced, found by one regex instead of a step per tag
_FLAT = re.compile(rf"{_TEXT_BR}(?:<(strong|em|del|code|a)\b[^>]*+>{_TEXT_BR}</\1>{_TEXT_BR})*+")


def balanced(html: str) -> bool:
    """Every inline tag of a paragraph closed in order (md4c can leave one open, adr/0017):
    one regex for a flat paragraph, else a Python step per inline tag, none per character."""
    if _FLAT.fullmatch(html):
        return True
    stack: list[str] = []
    for closing, tag in _INLINE_TAG.findall(html):
        if not closing:
            stack.append(tag)
        elif not stack or stack.pop() != tag:
            return False
    return not stack


def flat_step(tag: str, fixed: int, opened: str) -> str | None:
    """One tag's step of reading whether a paragraph is flat (what ``_FLAT`` takes: every
    inline element holding only text and line breaks): the close now awaited ("" when no
    element is open) after ``tag`` (``fixed``: its :func:`fixed_tag`), None when the
    paragraph is not flat. One function for :func:`read_tags` and Telegram's loop over
    the tags (compiled: a native call)."""
    if fixed == 6:  # <br>
        return opened
    if opened:
        return "" if tag == opened else None
    if fixed >= 0:
        return None if fixed % 2 else FIXED_TAGS[fixed + 1]  # a close: not flat
    if tag == "<code>":
        return "</code>"
    if tag.startswith("<a ") or tag == "<a>":
        return "</a>"
    return None


def read_tags(parts: list[str]) -> int:
    """Whether a paragraph of md4c's, split by :func:`split_tags`, converts whole to the
    same markup as its tokens, by one look at each tag: -1 when it holds an image (it
    becomes a link), a link without address or an empty element (the token walk opens
    elements lazily, so it writes none); 1 when it is flat (every inline element holding
    only text and line breaks: balanced); else 0, and :func:`balanced` decides. The
    flavours look for a "~" stand-in percent-encoded in a URL (``%EE%80``) in the whole
    paragraph first. In md4c's HTML every "<" starts a tag and every ">" ends one, so
    "<img" and ``href=""`` can only be in a tag, and "></" is an empty text between a tag
    and a closing one (the four passes over the paragraph this replaced, adr/0017)."""
    size = len(parts)
    flat = True
    opened = ""  # the close of the element open, "" when none is
    for i in range(1, size, 2):
        tag = parts[i]
        fixed = fixed_tag(tag)
        if fixed < 0 and (tag.startswith("<img") or 'href=""' in tag):
            return -1
        if not parts[i + 1] and i + 2 < size and parts[i + 2].startswith("</"):
            return -1
        if flat:
            step = flat_step(tag, fixed, opened)
            if step is None:
                flat = False
            else:
                opened = step
    return 1 if flat and not opened and "<" not in parts[-1] else 0


def code_block(html: str, tilde: str) -> tuple[str, str] | None:
    """A code block's (language, text) from its inside, as the token walk reads them;
    None when it has no text."""
    # md4c's two shapes read with a few finds and compares, what PRE_CODE's match and its
    # groups give (a match object and its methods cost a code block ~5,000 instructions);
    # anything else by the regex
    start = stop = -1
    lang = ""
    if html.startswith('<code class="language-'):
        quote = html.find('"', 22)
        if quote >= 0 and html.startswith('">', quote):
            lang, start = html[22:quote], quote + 2
    elif html.startswith("<code>"):
        start = 6
    if html.endswith("</code>"):
        stop = len(html) - 7
    elif html.endswith("</code>\n"):
        stop = len(html) - 8
    if start < 0 or stop < start:
        found = PRE_CODE.fullmatch(html)
        if found is None:
            return None
        lang, body = found.group(1) or "", found.group(2)
    else:
        body = html[start:stop]
    lang = unescape(lang, tilde) if lang else ""
    text = unescape(body, tilde).removesuffix("\n")
    return (lang if lang and _LANG.fullmatch(lang) else ""), text


def visible_text(html: str, tilde: str) -> str:
    """What a reader sees of a paragraph's HTML: no tags, entities decoded."""
    text = _ANY_TAG.sub("", html) if "<" in html else html
    return unescape(text, tilde)


def tokens_of(block: Block) -> list[Token]:
    """The block's tokens, walked from its HTML when it was kept whole, or laid out at
    once from its table."""
    if block.table is not None and not block.tokens:
        block.tokens = [(OPEN, "pre", ""), (TEXT, block.table.text(), ""), (CLOSE, "pre", "")]
    if block.html is not None and not block.tokens:
        start, end = _WRAP[block.kind]
        walked = _Builder(block.tilde, whole=False).feed(start + block.html + end)
        block.tokens = [token for part in walked for token in part.tokens]
    return block.tokens


_LONE_TILDE = re.compile(r"(?<!~)~(?!~)")


def unescape(text: str, tilde: str) -> str:
    # md4c escapes exactly these four in text and attributes
    if "&" in text:
        text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
        text = text.replace("&amp;", "&")
    return text.replace(tilde, "~") if tilde in text else text


def _attrs(raw: str, tilde: str) -> dict[str, str]:
    # md4c percent-encodes non-ASCII in URLs: the stand-in for "~" too
    found = _ATTR.findall(raw)
    if "%EE%80" not in raw:  # the stand-ins are U+E000…U+E007
        return {k: unescape(v, tilde) for k, v in found}
    quoted = urllib.parse.quote(tilde)
    return {k: unescape(v, tilde).replace(quoted, "~") for k, v in found}


def is_bare_url(label: str | None, href: str) -> bool:
    """A link whose text is its own address (an autolink): md4c percent-encodes the
    address, not the text. One whose text holds a ">" is shown as a link with a label
    (Discord writes bare URLs in <…>)."""
    return (
        label is not None
        and ">" not in label
        and (label == href or ("%" in href and label == urllib.parse.unquote(href)))
    )


class _Builder:
    """Walks md4c's HTML (which has a fixed, known shape) and collects blocks."""

    def __init__(self, tilde: str, *, whole: bool = True) -> None:
        self.tilde = tilde
        self.whole = whole  # keep top-level paragraphs and headings as HTML
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
            self.after_bullet = False  # an empty last item does not reach past its list
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
        the rarer tags go through :meth:`start` / :meth:`end` (adr/0013's profile). The
        text after the last tag is trimmed as if a block tag followed it."""
        pos = 0
        after_block = True
        tilde = self.tilde
        inline = self.inline
        while True:
            start, end, closing, tag, raw = _next_tag(html, pos)
            if start < 0:  # the end: what is left is text before no tag at all
                start, is_block, kind = len(html), True, 1
            else:
                kind = tag_kind(tag)
                is_block = kind == 1
            if start > pos:
                text = html[pos:start]
                if not self.in_pre:  # newlines beside block tags are layout
                    if after_block:
                        text = text.lstrip("\n")
                    if is_block:
                        text = text.rstrip("\n")
                if text:
                    self.after_bullet = False
                    if "&" in text or tilde in text:
                        text = unescape(text, tilde)
                    self.tokens.append((TEXT, text, ""))
            if end < 0:
                break
            after_block = is_block
            pos = end
            if kind >= 2 and not self.in_pre:  # strong, em, del
                if not closing:
                    self.tokens.append(_INLINE_OPENS[kind - 2])
                    inline.append(True)
                elif inline and inline.pop():
                    self.tokens.append(_INLINE_CLOSES[kind - 2])
                continue  # an inline tag never ends a block
            if closing:
                self.end(tag)
                if tag == "li" and self.depth > 2 and not self.in_pre:
                    pos = self.close_nested(html, pos)
            elif tag == "li" and self.after_bullet and self.depth > 1 and not self.in_pre:
                pos = self.open_nested(html, pos)
            elif tag in _WHOLE and self.depth == 0 and self.whole and not self.in_pre:
                pos = self.whole_at(tag, html, pos)
            elif tag == "blockquote" and self.depth == 0 and self.whole and not self.in_pre:
                pos = self.quote_at(raw, html, pos)
            elif tag == "table" and not self.in_pre:
                pos = self.table_at(html, pos)  # a whole table at C speed
            else:
                self.start(tag, raw, html, pos)
            blocks = self.blocks
            if blocks:
                if len(blocks) == 1:  # (the common case: no iterator, no clear)
                    yield blocks.pop()
                else:
                    yield from blocks
                    blocks.clear()
        self.depth = 0
        self.end_block()
        yield from self.blocks

    def start(self, tag: str, raw: str, html: str, pos: int) -> None:
        if self.in_pre:
            if tag == "code":
                lang = _attrs(raw, self.tilde).get("class", "").removeprefix("language-")
                arg = lang if _LANG.fullmatch(lang) else ""
                self.tokens.append((OPEN, "pre", arg))
            return
        # lists first: the commonest tags here (each compare of a tag costs)
        if tag == "li":
            if self.depth == 1 and self.lists:  # each top-level item is a block of its own
                self.end_block(force=True)
                self.sep, self.item_sep = self.item_sep, "\n"
            else:
                self.newline()
            self.bullet()
            return
        if tag == "ul" or tag == "ol":
            self.start_block()
            start = _attrs(raw, self.tilde).get("start", "1") if tag == "ol" else ""
            self.lists.append([int(start) if start.isdigit() else (1 if tag == "ol" else -1)])
            if self.depth == 0:
                self.item_sep = "\n\n"
            self.depth += 1
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
            href = _attrs(raw, self.tilde).get("href", "")
            end = html.find("</a>", pos)
            label = unescape(html[pos:end], self.tilde) if end >= 0 else None
            if not href:
                self.inline.append(False)
            else:
                self.tokens.append((OPEN, "url" if is_bare_url(label, href) else "a", href))
                self.inline.append(True)
        elif tag == "img":
            found = _attrs(raw, self.tilde)
            alt, src = found.get("alt") or "image", found.get("src", "")
            if src:
                self.tokens += [(OPEN, "a", src), (TEXT, alt, ""), (CLOSE, "a", "")]
            else:
                self.text(alt)
        elif tag == "br":
            pass  # md4c follows it with a newline in the text
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
        elif tag == "blockquote":
            self.start_block()
            if self.after_bullet:  # a quote must start its own line (Discord's "> ")
                self.text("\n")
            self.tokens.append((OPEN, "quote", ""))
            self.depth += 1

    def whole_at(self, tag: str, html: str, pos: int) -> int:
        """A top-level paragraph or heading in one step, as its HTML (no block tag can
        be inside it); where its end tag ends."""
        close = _WHOLE_CLOSE[tag]  # (its hash is known: not a new string per block)
        end = html.find(close, pos)
        end = len(html) if end < 0 else end
        self.start_block()
        kind = tag if tag in ("p", "pre") else "h"
        self.blocks.append(Block([], "\n\n", html[pos:end], kind, self.tilde))
        return end + len(close)

    def quote_at(self, raw: str, html: str, pos: int) -> int:
        """A top-level quote of one paragraph in one step (the common case); any other
        quote is walked."""
        end = html.find("</p>\n</blockquote>", pos)
        inside = html[pos + 4 : end] if end >= 0 and html.startswith("\n<p>", pos) else None
        if inside is None or "</p>" in inside:
            self.start("blockquote", raw, html, pos)
            return pos
        self.start_block()
        self.blocks.append(Block([], "\n\n", inside, "quote", self.tilde))
        return end + len("</p>\n</blockquote>")

    def bullet(self, nested: int = 0) -> None:
        """An item's marker, indented by its depth unless it follows its parent's marker
        on the same line ("- - x" reads "• • x"); ``nested``: bullet items opened right
        inside it."""
        counter = self.lists[-1] if self.lists else [-1]
        bullet = "• " if counter[0] < 0 else f"{counter[0]}. "
        if counter[0] >= 0:
            counter[0] += 1
        indent = "" if self.after_bullet else "  " * min(len(self.lists) - 1, MAX_INDENT)
        self.lists += [[-1]] * nested  # bullet counters never change: one list serves all
        self.depth += nested
        self.text(indent + bullet + "• " * nested)
        self.after_bullet = True

    def open_nested(self, html: str, pos: int) -> int:
        """An item that starts right after its parent's marker, and every bullet list
        opened right inside it, in one step: 5,000 nested lists are 25,000 tags."""
        nested = _repeats(html, pos, "<ul>\n<li>")
        self.newline()
        self.bullet(nested)
        return pos + nested * len("<ul>\n<li>")

    def close_nested(self, html: str, pos: int) -> int:
        """The ends of nested lists right after an item's end, in one step (not the one
        that ends a top-level item: that ends a block)."""
        nested = min(_repeats(html, pos, "\n</ul>\n</li>"), self.depth - 2)
        if nested > 0:
            del self.lists[-nested:]
            self.depth -= nested
        return pos + nested * len("\n</ul>\n</li>")

    def table_at(self, html: str, pos: int) -> int:
        """A whole table from just after its ``<table>``; where its ``</table>`` ends.

        A table is the commonest huge reply and its cells hold only inline text (each
        cell on a line of its own in md4c's HTML, every row as wide as the header),
        so it is read with a few whole-string passes instead of a Python step per tag."""
        self.start_block()
        end = html.find("</table>", pos)
        end = len(html) if end < 0 else end
        head = html.find("</thead>", pos, end)
        columns = html.count("</th>", pos, head) if head >= 0 else 0
        cells = _cells(html, pos, end)
        if cells is None:  # not md4c's usual lines: the regex reads them
            cells = _CELL.findall(html, pos, end)  # md4c pads every row to the header's width
        if not columns or len(cells) % columns or html.find("\x1f", pos, end) >= 0:
            # not md4c's usual shape (or the text holds the separator): row by row
            text = self.table_text(html[pos:end])
        else:
            body = "\x1f".join(cells)
            if "<img" in body:
                body = _IMG.sub(_img_alt, body)
            if "<" in body:
                for tag in _INLINE_TAGS:
                    if tag in body:
                        body = body.replace(tag, "")
                if "<" in body:
                    body = _ANY_TAG.sub("", body)
            body = unescape(body, self.tilde)
            if "\n" in body:
                body = body.replace("\n", " ")
            if body.strip("\x1f"):
                self.after_bullet = False
            cells = body.split("\x1f")
            if len(cells) <= _FEW_ROWS * columns:  # a compiled loop: no slice, max, min each
                widths = [0] * columns
                for at in range(len(cells)):
                    column, size = at % columns, min(40, len(cells[at]))
                    if size > widths[column]:
                        widths[column] = size
            else:
                lengths = list(map(len, cells))  # one pass over the cells, then over numbers
                widths = [min(40, max(lengths[i::columns])) for i in range(columns)]
            if self.depth == 0 and len(cells) > LAZY_TABLE_ROWS * columns:
                self.blocks.append(Block([], self.sep, table=Table(cells, widths)))
                return end + len("</table>") if end < len(html) else end
            text = _table_lines(cells, widths)
        self.tokens += [(OPEN, "pre", ""), (TEXT, text, ""), (CLOSE, "pre", "")]
        self.end_block()
        return end + len("</table>") if end < len(html) else end

    def close_inline(self) -> None:
        """md4c can leave an emphasis open at the end of its paragraph (seen: ``*see
        http://e.com/a_b*c*``) or close one it never opened: the first is closed here,
        the second ignored, so every block is balanced."""
        while self.inline:
            if self.inline.pop():
                self.tokens.append((CLOSE, "i", ""))

    def table_text(self, body: str) -> str:
        """A table's text from its HTML, row by row (a shape :meth:`table_at` does not
        expect: kept from before, adr/0013)."""
        body = body.lstrip("\n").replace("\x1f", " ")
        body = body.replace("</td>\n", "\x1f").replace("</th>\n", "\x1f")
        body = _TABLE_LAYOUT.sub("", body.replace("</tr>\n", "\0"))
        if "<img" in body:
            body = _IMG.sub(_img_alt, body)
        if "<" in body:
            body = _ANY_TAG.sub("", body)
        if body.strip("\x1f\0"):
            self.after_bullet = False
        body = unescape(body, self.tilde).replace("\n", " ").replace("\0", "\n")
        rows = [row.split("\x1f")[:-1] for row in body.split("\n") if row]
        widths = [min(40, max(map(len, column))) for column in zip(*rows, strict=False)]
        return _table_text(rows, widths)

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
        if tag == "li":  # (lists first: the commonest tags here)
            self.close_inline()
            if self.depth == 1:
                self.end_block(force=True)
        elif tag == "ul" or tag == "ol":
            self.lists.pop()
            self.depth -= 1
            self.end_block()
        elif tag in _INLINE or tag in ("code", "a"):
            if self.inline and self.inline.pop():
                self.tokens.append((CLOSE, _INLINE.get(tag, tag), ""))
        elif tag in ("p", "h1", "h2", "h3", "h4", "h5", "h6"):
            self.close_inline()
            if tag[0] == "h":
                self.tokens.append((CLOSE, "b", ""))
            self.end_block()
        elif tag == "blockquote":
            self.tokens.append((CLOSE, "quote", ""))
            self.depth -= 1
            self.end_block()


def _next_tag(html: str, pos: int) -> tuple[int, int, str, str, str]:
    """The first tag at or after ``pos`` as ``_TAG`` finds it: (start, end, "/" or "", name,
    attributes); start and end -1 when there is none. md4c's tags (every "<" of its HTML
    starts one) are read with two ``str.find`` and a native loop over the name, without
    a match object and the method calls to read it (a third of the walk's time per tag
    once compiled); anything else is left to the regex."""
    start = html.find("<", pos)
    if start < 0:
        return -1, -1, "", "", ""
    size = len(html)
    at = start + 1
    closing = ""
    if at < size and ord(html[at]) == 47:  # "/"
        closing = "/"
        at += 1
    stop = at
    while stop < size:
        code = ord(html[stop])
        if 97 <= code <= 122 or 48 <= code <= 57:  # [a-z0-9]
            stop += 1
        else:
            break
    if stop > at:  # then _TAG matches here if a ">" follows: [^>]* takes all up to it
        end = html.find(">", stop)
        if end < 0:
            return -1, -1, "", "", ""  # no ">" after this "<", nor after any later one
        return start, end + 1, closing, html[at:stop], html[stop:end]
    found = _TAG.search(html, start + 1)  # no tag starts at this "<"
    if found is None:
        return -1, -1, "", "", ""
    slash, name, attributes = found.groups()
    return found.start(), found.end(), slash, name, attributes


#: the lines of md4c's table HTML that are not cells
_TABLE_LINES: Final = ("<tr>", "</tr>", "", "<tbody>", "</tbody>", "<thead>", "</thead>")


def _cells(html: str, pos: int, end: int) -> list[str] | None:
    """What ``_CELL.findall(html, pos, end)`` finds, line by line: md4c writes each cell
    on a line of its own (``<td>…</td>``, ``<th align="…">…</th>``) and the rest of a
    table as lines of one tag. A compiled loop with a ``find`` per line and a few
    character reads (a regex match per cell cost ~2,700 instructions, most of it trying
    ``</t[hd]>`` back from each line's end). None for any other line, which the regex
    then reads: its matches could start inside it."""
    if end <= pos or ord(html[end - 1]) != 10:  # "\n": every line ends with one
        return None
    cells: list[str] = []
    at = pos
    while at < end:
        stop = html.find("\n", at, end)
        size = stop - at
        if (
            size >= 9  # <td></td>
            and ord(html[at]) == 60  # "<"
            and ord(html[at + 1]) == 116  # "t"
            and (ord(html[at + 2]) == 100 or ord(html[at + 2]) == 104)  # "d", "h"
            and ord(html[stop - 5]) == 60  # "<"
            and ord(html[stop - 4]) == 47  # "/"
            and ord(html[stop - 3]) == 116  # "t"
            and (ord(html[stop - 2]) == 100 or ord(html[stop - 2]) == 104)
            and ord(html[stop - 1]) == 62  # ">"
        ):
            mark = ord(html[at + 3])
            if mark == 62:  # ">"
                opened = at + 4
            elif mark == 32:  # " ": attributes, up to the first ">"
                opened = html.find(">", at + 4, stop) + 1
                if opened == 0:
                    return None
            else:
                return None
            if opened > stop - 5:
                return None
            cells.append(html[opened : stop - 5])
        elif html[at:stop] not in _TABLE_LINES:
            return None
        at = stop + 1
    return cells


def _repeats(text: str, pos: int, unit: str) -> int:
    """How many times ``unit`` repeats from ``pos``: a few C comparisons, not a step each."""
    count, step = 0, 1
    while text.startswith(unit * step, pos):
        count, pos, step = count + step, pos + len(unit) * step, step * 2
    while step > 1:
        step //= 2
        if text.startswith(unit * step, pos):
            count, pos = count + step, pos + len(unit) * step
    return count


def _table_lines(cells: list[str], widths: list[int]) -> str:
    """:func:`_table_text` of rows of ``len(widths)`` cells, in one ``str.format`` call
    and one regex (the trailing spaces of each line) instead of a step per row."""
    rows = len(cells) // len(widths)
    if rows <= _FEW_ROWS:
        return _few_table_lines(cells, widths)
    text = "\n".join([_row_format(widths)] * rows).format(*cells)
    text = _strip_ragged(text, cells, len(widths), 0, rows, 0)
    if rows > 1:
        first = text.find("\n")
        text = text[:first] + "\n" + "-+-".join("-" * w for w in widths) + text[first:]
    return text


#: a table of at most this many rows is laid out row by row in a compiled loop: the
#: format string, its parsing and the regex cost a small table more than they save
_FEW_ROWS: Final = 8


def _few_table_lines(cells: list[str], widths: list[int]) -> str:
    """:func:`_table_lines` row by row: ``ljust`` is what ``{:<w}`` does to a text, and a
    line's ``rstrip`` what ``_TRAILING_SPACE`` takes of it (the cells hold no newline)."""
    columns = len(widths)
    lines: list[str] = []
    for start in range(0, len(cells), columns):
        padded = [cells[start + i].ljust(widths[i]) for i in range(columns)]
        lines.append(" | ".join(padded).rstrip())
    if len(lines) > 1:
        lines.insert(1, "-+-".join(["-" * width for width in widths]))
    return "\n".join(lines)


def _table_text(rows: list[list[str]], widths: list[int]) -> str:
    """A table as aligned columns, for a monospaced block (no chat platform has tables)."""
    line = " | ".join(f"{{:<{w}}}" for w in widths).format
    lines = [line(*row).rstrip() for row in rows]
    if len(lines) > 1:
        lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def parse(markdown: str, *, alone: bool = False) -> Iterator[Block]:
    """Parse once; every later step works on these blocks, as they come. ``alone``: no
    other thread of this process waits for the GIL (see :func:`to_html`)."""
    tilde = next((c for c in _PUA if c not in markdown), None)
    if tilde is None:  # the text uses all eight stand-ins: give up on keeping "~" lone
        tilde = _PUA[0]
        markdown = markdown.replace(tilde, "\ufffd")
    pieces = [markdown[i : i + _SLICE] for i in range(0, len(markdown), _SLICE)]
    if "~" in markdown:  # a run of tildes never spans slices: each run is kept in one
        pieces = _tilde_safe_slices(markdown)
        pieces = [_LONE_TILDE.sub(tilde, piece) for piece in pieces]
    return _Builder(tilde).feed(to_html(pieces, alone=alone))


def _tilde_safe_slices(markdown: str) -> list[str]:
    """Slices of about :data:`_SLICE` characters that never cut a run of ``~``."""
    pieces, start = [], 0
    while start < len(markdown):
        end = min(len(markdown), start + _SLICE)
        while 0 < end < len(markdown) and markdown[end - 1] == "~" and markdown[end] == "~":
            end += 1
        pieces.append(markdown[start:end])
        start = end
    return pieces
