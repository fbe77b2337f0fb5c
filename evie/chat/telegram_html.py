"""Markdown (as LLMs write it) to the HTML subset Telegram accepts.

Telegram's HTML mode knows b, i, s, u, code, pre, a and blockquote; anything
else must be escaped. Unbalanced or odd markup is not guessed at: it stays
literal text. If Telegram still rejects a message, the caller re-sends it as
plain text, so a reply is never lost to formatting.
"""

from __future__ import annotations

import html
import re

_FENCED = re.compile(r"^(```|~~~)([^\n`]*)\n(.*?)\n?\1[ \t]*$", re.S | re.M)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^)\s]+)\)")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|__(?=\S)(.+?)(?<=\S)__", re.S)
_ITALIC = re.compile(
    r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])|(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)"
)
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*$", re.M)
_QUOTE = re.compile(r"^(?:&gt; ?.*(?:\n|$))+", re.M)


def markdown_to_html(text: str) -> str:
    placeholders: list[str] = []

    def keep(fragment: str) -> str:
        placeholders.append(fragment)
        return f"\x00{len(placeholders) - 1}\x00"

    def fenced(m: re.Match[str]) -> str:
        lang = m.group(2).strip()
        body = html.escape(m.group(3), quote=False)
        if lang and re.fullmatch(r"[\w+#.-]+", lang):
            return keep(f'<pre><code class="language-{lang}">{body}</code></pre>')
        return keep(f"<pre>{body}</pre>")

    out = _FENCED.sub(fenced, text)
    out = _INLINE_CODE.sub(
        lambda m: keep(f"<code>{html.escape(m.group(1), quote=False)}</code>"), out
    )
    out = _LINK.sub(
        lambda m: keep(
            f'<a href="{html.escape(m.group(2))}">{html.escape(m.group(1), quote=False)}</a>'
        ),
        out,
    )
    out = html.escape(out, quote=False)
    out = _HEADING.sub(lambda m: f"<b>{m.group(1)}</b>", out)
    out = _BOLD.sub(lambda m: f"<b>{m.group(1) or m.group(2)}</b>", out)
    out = _ITALIC.sub(lambda m: f"<i>{m.group(1) or m.group(2)}</i>", out)
    out = _STRIKE.sub(lambda m: f"<s>{m.group(1)}</s>", out)
    out = _QUOTE.sub(
        lambda m: (
            "<blockquote>"
            + "\n".join(
                line[4:].lstrip() if line.startswith("&gt;") else line
                for line in m.group(0).rstrip("\n").split("\n")
            )
            + "</blockquote>"
            + ("\n" if m.group(0).endswith("\n") else "")
        ),
        out,
    )
    return re.sub("\x00(\\d+)\x00", lambda m: placeholders[int(m.group(1))], out)
