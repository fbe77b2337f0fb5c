"""A long reply as Markdown files, each within the platform's upload limit.

A reply bigger than what a bot may upload (Discord: 10 MiB in a DM, Telegram:
50 MB) was refused whole and reached the user as "could not send as file".
Cut at line ends into numbered parts, each within the limit, it arrives complete.
"""

from __future__ import annotations

import anyio.to_thread
import attrs

REPLY_FILE = "reply.md"
_OFF_LOOP = 256 * 1024  # bytes of Markdown above which the encoding and cutting run in a thread


@attrs.frozen
class ReplyFile:
    name: str
    text: str  # for the outbox, which keeps Markdown as text
    data: bytes  # the same as UTF-8, for an upload
    caption: str


def reply_files(markdown: str, max_bytes: int, caption: str) -> list[ReplyFile]:
    """``markdown`` as ``reply.md``, or as ``reply-1-of-N.md``… when it is over
    ``max_bytes``: each part ends at a line end (or, in a line longer than the limit,
    between two characters), so the parts joined are the reply byte for byte."""
    data = markdown.encode("utf-8")
    if len(data) <= max_bytes:
        return [ReplyFile(REPLY_FILE, markdown, data, caption)]
    parts: list[bytes] = []
    start = 0
    while len(data) - start > max_bytes:
        end = start + max_bytes
        cut = data.rfind(b"\n", start, end) + 1
        if cut <= start:  # no line end within reach: cut before a character's first byte
            cut = end
            while data[cut] & 0xC0 == 0x80:
                cut -= 1
        parts.append(data[start:cut])
        start = cut
    parts.append(data[start:])
    n = len(parts)
    return [
        ReplyFile(
            f"reply-{i}-of-{n}.md", part.decode("utf-8"), part, f"{caption} (part {i} of {n})"
        )
        for i, part in enumerate(parts, 1)
    ]


async def encoded_off_loop(text: str) -> bytes:
    """``text`` as UTF-8, in a worker thread when it is big (a document from the outbox)."""
    if len(text) <= _OFF_LOOP:
        return text.encode("utf-8")
    return await anyio.to_thread.run_sync(str.encode, text, "utf-8")


async def reply_files_off_loop(markdown: str, max_bytes: int, caption: str) -> list[ReplyFile]:
    """:func:`reply_files`, in a worker thread when the reply is big (encoding 10 MB is
    milliseconds the loop should not stand still for)."""
    if len(markdown) <= _OFF_LOOP:
        return reply_files(markdown, max_bytes, caption)
    return await anyio.to_thread.run_sync(reply_files, markdown, max_bytes, caption)
