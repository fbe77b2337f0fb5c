"""Markdown → chat messages: parsed once, rendered per platform, split by blocks.

:func:`render` is linear in the text; :func:`render_off_loop` runs it in a
worker thread when the text is big, and in a worker process (:mod:`.process`)
when it is very big, so the event loop never waits for it.
"""

from __future__ import annotations

from functools import partial

import anyio.to_thread

from evie.chat.render.blocks import parse
from evie.chat.render.process import PROCESS_MIN, render_in_process, render_process
from evie.chat.render.split import Chunk, Flavor, pack, split_plain

__all__ = [
    "INLINE_MAX",
    "PROCESS_MIN",
    "SWITCH_INTERVAL",
    "Chunk",
    "Flavor",
    "render",
    "render_off_loop",
    "render_process",
    "split_plain",
]

#: texts up to this many characters render on the loop (about a millisecond of work)
INLINE_MAX = 4096

#: the GIL switch interval the daemon runs with (Python's default is 5 ms): a worker
#: thread rendering a big reply hands the GIL back to the event loop within a millisecond
SWITCH_INTERVAL = 0.001


def render(markdown: str, flavor: Flavor, *, most: int | None = None) -> list[Chunk]:
    """The messages that carry ``markdown`` on a platform, in order; with ``most``, only
    the first of them once there are more than ``most`` (see :func:`pack`)."""
    return pack(parse(markdown), flavor, most=most)


async def render_off_loop(markdown: str, flavor: Flavor, *, most: int | None = None) -> list[Chunk]:
    """:func:`render`, never for long on the loop: a worker thread for a big text, the
    worker process for a very big one (``most`` bounds the conversion there too)."""
    if len(markdown) <= INLINE_MAX:
        return render(markdown, flavor, most=most)
    if len(markdown) > PROCESS_MIN:
        chunks = await render_in_process(markdown, flavor, most)
        if chunks is not None:
            return chunks
    return await anyio.to_thread.run_sync(partial(render, markdown, flavor, most=most))
