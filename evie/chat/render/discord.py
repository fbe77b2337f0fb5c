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
from itertools import chain, zip_longest
from typing import Final

from evie.chat.render.blocks import (
    code_block,
    convertible,
    is_bare_url,
    unescape,
    visible_text,
)

DISCORD_LIMIT = 2000

#: escaped one character at a time with str.replace: a C pass per character that is
#: present, ~7× faster than str.translate with multi-character results (a dict lookup per
#: character); the backslash goes first so the inserted ones are not escaped again
_ESCAPED = "*_~`|<>#[]"
#: a "- " or "1." at a line's start would start a list: escaped. A NUL also counts as a
#: line start, so texts joined by NUL are escaped in one pass as each would be alone (md4c
#: turns U+0000 into U+FFFD: no text holds a NUL of its own)
#: (The patterns start with the newline or NUL itself, a character class the regex engine
#: scans for in a tight loop, instead of ``^`` tried at every position: 4× faster; the text
#: gets a newline in front so its own start counts too.)
_BULLET = re.compile(r"([\n\x00][ \t]*)([-+])(?=[ \t\x00\n]|\Z)")
_NUMBER = re.compile(r"([\n\x00][ \t]*)(\d+)([.)])")
_FENCE_IN_CODE = re.compile(r"``(?=`)")
_TICKS_IN_CODE = re.compile(r"`(?=`)")
_SIMPLE = {"b": ("**", "**"), "i": ("*", "*"), "s": ("~~", "~~")}

#: a paragraph's HTML in pieces: text, tag, text, tag, …, text
_PARTS = re.compile(r"(<[^>]*>)")
_HREF = re.compile(r'href="([^"]*)"')
_WHOLE_TAGS = {
    "<strong>": "**", "</strong>": "**", "<em>": "*", "</em>": "*",
    "<del>": "~~", "</del>": "~~", "<br>": "",
}  # fmt: skip

#: a run is escaped as one string with every tag replaced by a NUL-wrapped mark: a NUL
#: on each side keeps each text's edges as they are when texts are joined by NUL alone
#: (``_escape_texts``), and no text holds a NUL, so the marks are found again after
_BOLD, _ITALIC, _STRIKE, _BREAK = "\x00\x01\x00", "\x00\x02\x00", "\x00\x03\x00", "\x00\x04\x00"
_STASHED = "\x00\x05\x00"  # code, links, code blocks: their markup kept aside, in order
_END = "\x00\x06\x00"  # the end of each block
_QUOTE = "\x00\x07\x00"  # the start of a quote
_RUN_TAGS: Final = (
    ("<strong>", _BOLD), ("</strong>", _BOLD), ("<em>", _ITALIC), ("</em>", _ITALIC),
    ("<del>", _STRIKE), ("</del>", _STRIKE), ("<br>", _BREAK),
    ("<blockquote>\n<p>", _QUOTE), ("</p>\n</blockquote>\n", _END), ("<p>", ""), ("</p>\n", _END),
    *((f"<h{n}>", _BOLD) for n in range(1, 7)),
    *((f"</h{n}>\n", _BOLD + _END) for n in range(1, 7)),
)  # fmt: skip
_RUN_MARKS: Final = ((_BOLD, "**"), (_ITALIC, "*"), (_STRIKE, "~~"), (_BREAK, ""))
#: what a run's conversion keeps aside: code blocks, code spans, links (with their label
#: when it holds no tag), and link ends
_RUN_STASHED = re.compile(
    r'<pre>(.*?)</pre>\n|<code>([^<]*)</code>|<a href="([^"]*)"[^>]*>(?:([^<]*)</a>)?|</a>',
    re.S,
)
_RUN_QUOTE = re.compile(f"{_QUOTE}(.*?){_END}", re.S)


def _escape_texts(texts: list[str], tilde: str) -> list[str]:
    """:func:`escape` of each text (unescaped from HTML), in one pass over them all."""
    return escape(unescape("\x00".join(texts), tilde)).split("\x00")


def escape(text: str) -> str:
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    for c in _ESCAPED:
        if c in text:
            text = text.replace(c, "\\" + c)
    bullet = "-" in text or "+" in text
    number = "." in text or ")" in text
    if bullet or number:
        text = "\n" + text
        if bullet:
            text = _BULLET.sub(r"\1\\\2", text)
        if number:
            text = _NUMBER.sub(r"\1\2\\\3", text)
        text = text[1:]
    return text


class DiscordFlavor:
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
        if not convertible(html, tilde):
            return None
        plain = visible_text(html, tilde)
        if not plain:
            return None
        if "<" not in html:
            return self._block(_escape_texts([html], tilde)[0], kind), plain
        parts = _PARTS.split(html)
        texts, tags = parts[0::2], parts[1::2]
        raw: dict[int, str] = {}  # texts written as they are: code and bare URLs
        marks: list[str] = []
        code_close = link_close = ""
        for i, tag in enumerate(tags):
            mark = _WHOLE_TAGS.get(tag)
            if mark is None:
                if tag == "<code>":
                    code = unescape(texts[i + 1], tilde)
                    if "``" in code:
                        code = _TICKS_IN_CODE.sub("`\u200b", code)
                    raw[i + 1] = code
                    mark, code_close = ("`` ", " ``") if "`" in texts[i + 1] else ("`", "`")
                elif tag == "</code>":
                    mark = code_close
                elif tag == "</a>":
                    mark = link_close
                else:  # <a href="…"> (an image, an empty address: not convertible)
                    found = _HREF.search(tag)
                    href = unescape(found.group(1), tilde) if found else ""
                    label = unescape(texts[i + 1], tilde) if tags[i + 1] == "</a>" else None
                    if is_bare_url(label, href):
                        raw[i + 1] = label or ""
                        mark, link_close = "<", ">"
                    elif len(href) > self.limit // 4:
                        mark = link_close = ""  # shown as its label
                    else:
                        mark = "["
                        link_close = "](" + href.replace(" ", "%20").replace(")", "%29") + ")"
            marks.append(mark)
        escaped = iter(_escape_texts([t for i, t in enumerate(texts) if i not in raw], tilde))
        out = [raw[0] if 0 in raw else next(escaped)]
        for i, mark in enumerate(marks, 1):
            out.append(mark)
            out.append(raw[i] if i in raw else next(escaped))
        return self._block("".join(out), kind), plain

    def whole_run(self, html: str, tilde: str) -> list[str] | None:
        """A run of blocks as :meth:`whole` converts each, in passes over all of them: the
        tags become marks, the texts are escaped in one pass, the marks become Markdown.
        Code, links and code blocks (a few per block) are converted one by one and kept
        aside; quotes get their "> " at the end."""
        stash: list[str] = []
        failed: list[bool] = []
        link_close = [""]

        def aside(found: re.Match[str]) -> str:
            pre, code, href, label = found.groups()
            if pre is not None:
                converted = self.whole(pre, "pre", tilde)
                if converted is None:
                    failed.append(True)
                    return ""
                stash.append(converted[0])
                return _STASHED + _END
            if code is not None:
                stash.append(self._code(code, tilde))
                return _STASHED
            if href is None:  # </a>
                stash.append(link_close[0])
                return _STASHED
            href = unescape(href, tilde)
            text = None if label is None else unescape(label, tilde)
            if is_bare_url(text, href):
                stash.append("<" + (text or "") + ">")
                return _STASHED
            opening, link_close[0] = self._link(href)
            stash.append(opening)
            if label is None:  # its label holds tags: its end comes as a </a> of its own
                return _STASHED
            stash.append(link_close[0])
            return _STASHED + label + _STASHED

        html = _RUN_STASHED.sub(aside, html)
        if failed:
            return None
        for old, new in _RUN_TAGS:
            if old in html:
                html = html.replace(old, new)
        if "<" in html:  # a tag the run conversion does not know: the per-block path
            return None
        markup = escape(unescape(html, tilde))
        for mark, written in _RUN_MARKS:
            if mark in markup:
                markup = markup.replace(mark, written)
        if stash:
            parts = markup.split(_STASHED)
            if len(parts) != len(stash) + 1:
                return None
            markup = "".join(chain.from_iterable(zip_longest(parts, stash, fillvalue="")))
        if _QUOTE in markup:
            markup = _RUN_QUOTE.sub(_quoted, markup)
        markups = markup.split(_END)
        markups.pop()  # after the last block's end
        return markups

    @staticmethod
    def _code(html: str, tilde: str) -> str:
        """A code span from its inside: raw, in a fence its backticks cannot end."""
        code = unescape(html, tilde)
        if "``" in code:
            code = _TICKS_IN_CODE.sub("`\u200b", code)
        return "`` " + code + " ``" if "`" in html else "`" + code + "`"

    def _link(self, href: str) -> tuple[str, str]:
        """A link's opening and closing markup (none for a giant URL: its label shows)."""
        if len(href) > self.limit // 4:
            return "", ""
        return "[", "](" + href.replace(" ", "%20").replace(")", "%29") + ")"

    @staticmethod
    def _block(markup: str, kind: str) -> str:
        if kind == "h":
            return "**" + markup + "**"
        if kind == "quote":
            return "> " + markup.replace("\n", "\n> ")
        return markup


def _quoted(found: re.Match[str]) -> str:
    """A quote of a run, "> " on each of its lines, and its block's end."""
    return "> " + found.group(1).replace("\n", "\n> ") + _END
