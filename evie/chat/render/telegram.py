"""Telegram's HTML flavour, counted the way Telegram counts.

Telegram limits a message to 4096 characters *after entities parsing*, in
UTF-16 code units (the unit of its entity offsets): tags cost nothing, and
a character outside the BMP (most emoji) costs two. Allowed tags: b, i, s,
u, code, pre, a, blockquote; blockquotes cannot nest, so an inner quote is
shown as its text.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from typing import Final

from evie.chat.render.blocks import (
    balanced,
    code_block,
    fixed_tag,
    flat_step,
    split_tags,
    unescape,
)
from evie.chat.render.split import Flavor

TELEGRAM_LIMIT = 4096

_OPEN = {"b": "<b>", "i": "<i>", "s": "<s>", "code": "<code>", "quote": "<blockquote>"}
#: md4c's fixed inline tags (``FIXED_TAGS``) → Telegram's (code and a are the same; <br> is
#: followed by "\n")
_FIXED_MARKS: Final = ("<b>", "</b>", "<i>", "</i>", "<s>", "</s>", "")
_TITLE = re.compile(r' title="[^"]*"')
_CLOSE = {"b": "</b>", "i": "</i>", "s": "</s>", "code": "</code>", "quote": "</blockquote>"}


def utf16_units(text: str) -> int:
    """Length in UTF-16 code units, as Telegram counts text and entity offsets."""
    if text.isascii():
        return len(text)
    # the codec's own function: ``str.encode("utf-16-le")`` looks the codec up by its name
    # and calls it through Python at every call, 2.5× the cost of the encoding itself
    return len(codecs.utf_16_le_encode(text)[0]) // 2


def escape(text: str) -> str:
    if "&" in text:
        text = text.replace("&", "&amp;")
    if "<" in text:
        text = text.replace("<", "&lt;")
    return text.replace(">", "&gt;") if ">" in text else text


class TelegramFlavor(Flavor):
    def __init__(self, limit: int = TELEGRAM_LIMIT) -> None:
        self.limit = limit

    def open(self, kind: str, arg: str, outer: Sequence[str]) -> str | None:
        if "pre" in outer or "code" in outer:
            return None  # code cannot hold other entities
        if kind == "quote":
            return None if "quote" in outer else "<blockquote>"
        if kind == "pre":
            return f'<pre><code class="language-{arg}">' if arg else "<pre>"
        if kind in ("a", "url"):
            return f'<a href="{escape(arg).replace(chr(34), "&quot;")}">'
        return _OPEN[kind]

    def close(self, kind: str, arg: str, outer: Sequence[str]) -> str:
        if kind == "pre":
            return "</code></pre>" if arg else "</pre>"
        if kind in ("a", "url"):
            return "</a>"
        return _CLOSE[kind]

    def text(self, text: str, outer: Sequence[str]) -> str:
        return escape(text)

    def units(self, markup: str, visible: str) -> int:
        return utf16_units(visible)

    def whole(self, html: str, kind: str, tilde: str) -> tuple[str, str] | None:
        """md4c's HTML is already Telegram's but for the tag names and ``&quot;``: a few
        replaces over the whole paragraph instead of a step per token."""
        if kind == "pre":
            block = code_block(html, tilde)
            if block is None or not block[1]:
                return None
            lang, text = block
            if lang:
                return f'<pre><code class="language-{lang}">{escape(text)}</code></pre>', text
            return f"<pre>{escape(text)}</pre>", text
        if "<" in html:
            if "%EE%80" in html:  # a "~" stand-in percent-encoded in a URL (see read_tags)
                return None
            # texts and tags alternate: the visible text is the texts, the markup has
            # the tags renamed in place by one compiled loop over the tags, which also
            # makes ``read_tags``' checks on the tags it reads (not a second look at each
            # tag, as calling it would be; once a pass over the paragraph each) and sees
            # whether a link has a title: one split instead of a regex to remove the
            # tags and a pass per tag name
            parts = split_tags(html)
            size = len(parts)
            titled = False
            flat = True
            opened = ""  # the close of the element open, "" when none is (flat_step)
            for i in range(1, size, 2):  # (compiled: no slices, no map, no list)
                tag = parts[i]
                fixed = fixed_tag(tag)
                if fixed >= 0:
                    parts[i] = _FIXED_MARKS[fixed]
                elif tag.startswith("<img") or 'href=""' in tag:
                    return None  # (read_tags: an image, a link without address)
                elif not titled and ' title="' in tag:  # only a link's tag has attributes
                    titled = True
                if not parts[i + 1] and i + 2 < size and parts[i + 2].startswith("</"):
                    return None  # an empty element (read_tags: "></")
                if flat:  # read_tags' reading
                    step = flat_step(tag, fixed, opened)
                    if step is None:
                        flat = False
                    else:
                        opened = step
            if (not flat or opened or "<" in parts[-1]) and not balanced(html):
                return None
            plain = unescape("".join(parts[0::2]), tilde)
            if not plain:
                return None
            markup = "".join(parts)
            if titled:
                markup = _TITLE.sub("", markup)
        else:
            plain = unescape(html, tilde)
            if not plain:
                return None
            markup = html
        if "&quot;" in markup:
            markup = markup.replace("&quot;", '"')
        if tilde in markup:
            markup = markup.replace(tilde, "~")
        if kind == "h":
            markup = "<b>" + markup + "</b>"
        elif kind == "quote":
            markup = "<blockquote>" + markup + "</blockquote>"
        return markup, plain
