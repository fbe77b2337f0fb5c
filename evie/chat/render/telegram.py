"""Telegram's HTML flavour, counted the way Telegram counts.

Telegram limits a message to 4096 characters *after entities parsing*, in
UTF-16 code units (the unit of its entity offsets): tags cost nothing, and
a character outside the BMP (most emoji) costs two. Allowed tags: b, i, s,
u, code, pre, a, blockquote; blockquotes cannot nest, so an inner quote is
shown as its text.
"""

from __future__ import annotations

from collections.abc import Sequence

TELEGRAM_LIMIT = 4096

_OPEN = {"b": "<b>", "i": "<i>", "s": "<s>", "code": "<code>", "quote": "<blockquote>"}
_CLOSE = {"b": "</b>", "i": "</i>", "s": "</s>", "code": "</code>", "quote": "</blockquote>"}


def utf16_units(text: str) -> int:
    """Length in UTF-16 code units, as Telegram counts text and entity offsets."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le")) // 2


def escape(text: str) -> str:
    if "&" in text:
        text = text.replace("&", "&amp;")
    if "<" in text:
        text = text.replace("<", "&lt;")
    return text.replace(">", "&gt;") if ">" in text else text


class TelegramFlavor:
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
