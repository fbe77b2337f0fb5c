"""Split a long Markdown reply into messages a chat platform accepts.

Splits happen at paragraph boundaries first, then at line boundaries, and a
fenced code block that must be split is closed and re-opened in the next
message so each message renders on its own. The limit applies to the
*rendered* text (Telegram counts the HTML it is sent), so callers pass the
renderer they will use.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_FENCE = re.compile(r"^(```|~~~)")


def _blocks(text: str) -> list[str]:
    """Paragraphs and whole fenced code blocks, in order."""
    blocks: list[str] = []
    current: list[str] = []
    fence: str | None = None
    for line in text.split("\n"):
        m = _FENCE.match(line.lstrip())
        if fence is None and m:
            if current:
                blocks.append("\n".join(current))
                current = []
            fence = m.group(1)
            current.append(line)
            continue
        if fence is not None:
            current.append(line)
            if line.strip().startswith(fence) and len(current) > 1:
                blocks.append("\n".join(current))
                current = []
                fence = None
            continue
        if not line.strip():
            if current:
                blocks.append("\n".join(current))
                current = []
            continue
        current.append(line)
    if current:
        blocks.append("\n".join(current))
    return blocks


def _split_block(
    block: str, limit: int, render: Callable[[str], str], fits: Callable[[str], bool]
) -> list[str]:
    """Split one block that does not fit, by lines; code fences are repeated per piece.

    Lines are packed by their individually rendered lengths (linear time), and
    each piece is then checked as a whole and trimmed if rendering it together
    came out longer.
    """
    lines = block.split("\n")
    opener = closer = ""
    if _FENCE.match(lines[0].lstrip()):
        opener = lines[0]
        closer = lines[-1] if len(lines) > 1 and _FENCE.match(lines[-1].lstrip()) else "```"
        lines = lines[1:-1] if len(lines) > 1 and lines[-1].strip() == closer.strip() else lines[1:]

    def wrap(body: list[str]) -> str:
        inner = "\n".join(body)
        return f"{opener}\n{inner}\n{closer}" if opener else inner

    overhead = len(render(wrap([]))) if opener else 0
    pieces: list[str] = []
    current: list[str] = []
    size = overhead
    pending = list(reversed(lines))
    while pending:
        line = pending.pop()
        cost = len(render(line)) + 1
        if current and size + cost > limit:
            while len(current) > 1 and not fits(wrap(current)):
                pending.append(current.pop())  # rendered together it came out longer
            pieces.append(wrap(current))
            current, size = [], overhead
        if not current and not fits(wrap([line])):
            pieces.extend(_cut_line(line, wrap, fits))  # a line longer than a message
            continue
        current.append(line)
        size += cost
    if current:
        while len(current) > 1 and not fits(wrap(current)):
            pending.append(current.pop())
        pieces.append(wrap(current))
        if pending:
            pieces.extend(_split_block(wrap(list(reversed(pending))), limit, render, fits))
    return pieces


def _cut_line(
    line: str, wrap: Callable[[list[str]], str], fits: Callable[[str], bool]
) -> list[str]:
    pieces = []
    rest = line
    while rest:
        lo, hi = 1, len(rest)
        while lo < hi:  # the longest prefix that fits
            mid = (lo + hi + 1) // 2
            if fits(wrap([rest[:mid]])):
                lo = mid
            else:
                hi = mid - 1
        pieces.append(wrap([rest[:lo]]))
        rest = rest[lo:]
    return pieces


def split_message(text: str, limit: int, render: Callable[[str], str] = lambda s: s) -> list[str]:
    """Markdown chunks whose rendering is at most ``limit`` characters each."""
    text = text.strip("\n")
    if not text:
        return []

    def fits(candidate: str) -> bool:
        return len(render(candidate)) <= limit

    if fits(text):
        return [text]
    chunks: list[str] = []
    current = ""
    for block in _blocks(text):
        candidate = f"{current}\n\n{block}" if current else block
        if fits(candidate):
            current = candidate
            continue
        if current:
            chunks.append(current)
            current = ""
        if fits(block):
            current = block
        else:
            pieces = _split_block(block, limit, render, fits)
            chunks.extend(pieces[:-1])
            current = pieces[-1] if pieces else ""
    if current:
        chunks.append(current)
    return chunks
