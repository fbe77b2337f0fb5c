"""Discord's Markdown flavour: the subset Discord renders, counted in characters.

Discord limits ``content`` to 2000 characters of the Markdown as sent, so
markup counts. Text is escaped with backslashes (Discord hides them); code
is sent raw, except that a run of backticks that would end it gets a
zero-width space; a quote is ``> `` on every line (Discord has no nested quotes);
a bare URL goes in angle brackets: a link that ends where it should, without
an embed preview.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from evie.chat.render.blocks import (
    balanced,
    code_block,
    fixed_tag,
    is_bare_url,
    read_tags,
    split_tags,
    unescape,
)
from evie.chat.render.split import Flavor

DISCORD_LIMIT = 2000

#: escaped one character at a time with str.replace: a C pass per character that is
#: present, ~7× faster than str.translate with multi-character results (a dict lookup per
#: character); the backslash goes first so the inserted ones are not escaped again
_ESCAPED = "*_~`|<>#[]"
#: each with its escaped form, made once (not a concatenation per character present)
_ESCAPES: Final = tuple((c, "\\" + c) for c in _ESCAPED)
#: a "- " or "1." at a line's start would start a list: escaped. A NUL also counts as a
#: line start, so texts joined by NUL are escaped in one pass as each would be alone (md4c
#: turns U+0000 into U+FFFD: no text holds a NUL of its own)
#: (The patterns start with the newline or NUL itself, a character class the regex engine
#: scans for in a tight loop, instead of ``^`` tried at every position: a 200-character
#: paragraph escapes in 4.8 µs instead of 7.9; the text gets a newline in front so its own
#: start counts too.)
_BULLET = re.compile(r"([\n\x00][ \t]*)([-+])(?=[ \t\x00\n]|\Z)")
_NUMBER = re.compile(r"([\n\x00][ \t]*)(\d+)([.)])")
_FENCE_IN_CODE = re.compile(r"``(?=`)")
_TICKS_IN_CODE = re.compile(r"`(?=`)")
_SIMPLE = {"b": ("**", "**"), "i": ("*", "*"), "s": ("~~", "~~")}

#: md4c's fixed inline tags (``FIXED_TAGS``) → Discord's marks
_FIXED_MARKS: Final = ("**", "**", "*", "*", "~~", "~~", "")


def _escape_joined(joined: str, texts: list[str]) -> list[str]:
    """:func:`escape` of each text, given the texts (as in md4c's HTML) and ``joined``,
    them unescaped and joined by NUL: one pass over them all."""
    text = _escape_specials(joined)
    marked = "\n" in joined
    for each in texts:  # (a compiled loop: a native call per text)
        if marked:
            break
        marked = _starts_like_marker(each)
    if marked:
        text = _escape_markers(text)
    return text.split("\x00")


def escape(text: str) -> str:
    text = _escape_specials(text)
    if "\n" in text or "\x00" in text or _starts_like_marker(text):
        text = _escape_markers(text)
    return text


def _starts_like_marker(text: str) -> bool:
    """Whether ``text`` starts, after spaces and tabs, with what could begin a list marker
    (``-``, ``+``, a digit; also as an entity of md4c's HTML: none of these is escaped):
    a check of its first characters that spares the line-start regexes, which cost a
    paragraph 2 µs (they try each NUL and newline) where this costs a few comparisons
    (``ord`` of an indexed character is a native read once compiled)."""
    size = len(text)
    at = 0
    while at < size:
        code = ord(text[at])
        if code == 32 or code == 9:  # " ", "\t"
            at += 1
            continue
        if code == 45 or code == 43 or 48 <= code <= 57:  # "-", "+", "0"…"9"
            return True
        return code > 127 and text[at].isdecimal()  # what \d matches beyond ASCII
    return False


def _escape_specials(text: str) -> str:
    if len(text) <= _SHORT and not _has_special(text):
        return text  # (most texts of list items, headings and table cells)
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    for c, escaped in _ESCAPES:
        if c in text:
            text = text.replace(c, escaped)
    return text


#: texts up to this long are looked over by one compiled loop before any ``in`` (a pass
#: each for the 11 special characters costs a short text more than a look at each of its
#: characters; over a paragraph the passes are the cheaper)
_SHORT: Final = 32


def _has_special(text: str) -> bool:
    """Whether ``text`` holds a character of :data:`_ESCAPED` or a backslash."""
    for at in range(len(text)):
        code = ord(text[at])
        if 97 <= code <= 122 or 48 <= code <= 57 or code == 32:  # [a-z0-9 ]: most
            continue
        # \\ * _ ~ ` | < > # [ ]
        if (
            code == 92 or code == 42 or code == 95 or code == 126 or code == 96
            or code == 124 or code == 60 or code == 62 or code == 35 or code == 91
            or code == 93
        ):  # fmt: skip
            return True
    return False


def _escape_markers(text: str) -> str:
    """The list markers at the start of ``text`` and of its lines and NUL-separated texts
    escaped (``escape`` calls this only when there may be one)."""
    bullet = "-" in text or "+" in text
    number = "." in text or ")" in text
    if not (bullet or number):
        return text
    lined = "\n" + text
    if bullet:
        lined = _backslash_before(_BULLET, 2, lined)
    if number:
        lined = _backslash_before(_NUMBER, 3, lined)
    return lined[1:]


def _backslash_before(pattern: re.Pattern[str], group: int, text: str) -> str:
    """``text`` with a backslash before ``group`` of each match: what ``pattern.sub`` with
    a template would do, without the template (Python 3.11 expands a template in Python
    code at every call: a list item's "1. " cost ~11,000 instructions, now ~4,000)."""
    pieces: list[str] = []
    last = 0
    for found in pattern.finditer(text):
        at = found.start(group)
        pieces.append(text[last:at])
        last = at
    if not pieces:
        return text
    pieces.append(text[last:])
    return "\\".join(pieces)


class DiscordFlavor(Flavor):
    def __init__(self, limit: int = DISCORD_LIMIT) -> None:
        self.limit = limit

    def open(self, kind: str, arg: str, outer: Sequence[str]) -> str | None:
        if "pre" in outer or "code" in outer or "url" in outer:
            return None
        if kind == "quote":
            return None if "quote" in outer else "> "
        if kind == "pre":
            markup = f"```{arg}\n"
        elif kind == "code":
            markup = arg + " " if len(arg) > 1 else arg
        elif kind == "a":
            if len(arg) > self.limit // 4:
                return None  # a giant URL would eat the message: show the label only
            markup = "["
        elif kind == "url":
            markup = "<"
        else:
            markup = _SIMPLE[kind][0]
        return markup.replace("\n", "\n> ") if "quote" in outer else markup

    def close(self, kind: str, arg: str, outer: Sequence[str]) -> str:
        if kind == "pre":
            markup = "\n```"
        elif kind == "code":
            markup = " " + arg if len(arg) > 1 else arg
        elif kind == "a":
            markup = "](" + arg.replace(" ", "%20").replace(")", "%29") + ")"
        elif kind == "url":
            markup = ">"
        elif kind == "quote":
            markup = ""
        else:
            markup = _SIMPLE[kind][1]
        return markup.replace("\n", "\n> ") if "quote" in outer else markup

    def text(self, text: str, outer: Sequence[str]) -> str:
        if outer:
            if "pre" in outer:  # ``` inside code would end the block: break it invisibly
                text = _FENCE_IN_CODE.sub("``\u200b", text) if "```" in text else text
            elif "code" in outer:
                text = _TICKS_IN_CODE.sub("`\u200b", text) if "``" in text else text
            elif "url" not in outer:
                text = escape(text)
            if "quote" in outer:
                text = text.replace("\n", "\n> ")
            return text
        return escape(text)

    def units(self, markup: str, visible: str) -> int:
        return len(markup)

    def whole(self, html: str, kind: str, tilde: str) -> tuple[str, str] | None:
        """A paragraph's HTML → Discord Markdown: its texts escaped in one pass, then a
        light step per tag (code spans and bare URLs keep their text raw)."""
        if kind == "pre":
            block = code_block(html, tilde)
            if block is None or not block[1]:
                return None
            lang, text = block
            return f"```{lang}\n" + self.text(text, ("pre",)) + "\n```", text
        if "<" not in html:
            plain = unescape(html, tilde)
            return (self._block(escape(plain), kind), plain) if plain else None
        if "%EE%80" in html:  # a "~" stand-in percent-encoded in a URL (see read_tags)
            return None
        # texts and tags alternate; the tags are replaced by their marks in place, by one
        # compiled loop: the fixed marks looked up, code spans and links decided (slices
        # into lists of texts and tags, a map and slice assignments cost more)
        parts: list[str] = split_tags(html)  # (typed: its items compare as str)
        shape = read_tags(parts)  # refused, flat, or up to balanced()
        if shape < 0 or (shape == 0 and not balanced(html)):
            return None
        texts = parts[0::2]
        # the visible text is the texts unescaped (md4c's entities never span a tag), here
        # joined by NUL for the one escaping pass (NUL is a line start to the escapes)
        joined = unescape("\x00".join(texts), tilde)
        plain = joined.replace("\x00", "")
        if not plain:
            return None
        # every text escaped in one pass; code and bare URLs are then put back raw (each
        # text's escaping depends only on itself: NUL is a line start to the escapes)
        out = _escape_joined(joined, texts)
        code_close = link_close = ""
        i, size = 1, len(parts)
        while i < size:
            tag = parts[i]
            fixed = fixed_tag(tag)
            step = 2
            if fixed >= 0:
                mark = _FIXED_MARKS[fixed]
            else:
                after = (i + 1) // 2  # the text after this tag (parts[i + 1]) in texts
                if tag == "<code>":
                    code = unescape(texts[after], tilde)
                    if "``" in code:
                        code = _TICKS_IN_CODE.sub("`\u200b", code)
                    out[after] = code
                    mark, code_close = ("`` ", " ``") if "`" in texts[after] else ("`", "`")
                    if i + 2 < size and parts[i + 2] == "</code>":  # (always: only text)
                        parts[i + 2], step = code_close, 4
                elif tag == "</code>":
                    mark = code_close
                elif tag == "</a>":
                    mark = link_close
                else:  # <a href="…"> (an image, an empty address: not convertible)
                    # what ``href="([^"]*)"`` finds, by two finds (no regex, no match object)
                    at = tag.find('href="')
                    stop = tag.find('"', at + 6) if at >= 0 else -1
                    href = unescape(tag[at + 6 : stop], tilde) if stop >= 0 else ""
                    ended = i + 2 < size and parts[i + 2] == "</a>"
                    label = unescape(texts[after], tilde) if ended else None
                    if is_bare_url(label, href):
                        out[after] = label or ""
                        mark, link_close = "<", ">"
                    elif len(href) > self.limit // 4:
                        mark = link_close = ""  # shown as its label
                    else:
                        mark = "["
                        link_close = "](" + href.replace(" ", "%20").replace(")", "%29") + ")"
                    if ended:  # a label of text only: its end is the next tag
                        parts[i + 2], step = link_close, 4
            parts[i] = mark
            i += step
        for at in range(len(out)):
            parts[2 * at] = out[at]
        return self._block("".join(parts), kind), plain

    @staticmethod
    def _block(markup: str, kind: str) -> str:
        if kind == "h":
            return "**" + markup + "**"
        if kind == "quote":
            return "> " + markup.replace("\n", "\n> ")
        return markup
