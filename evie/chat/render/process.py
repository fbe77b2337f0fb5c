"""Very big replies render in a worker *process*, so nothing they do can stall the loop.

A worker thread shares the GIL with the event loop: one C-level step over a
10 MB reply (a regex, a replace, a garbage collection) holds it for tens to
hundreds of milliseconds however short the switch interval (adr/0013). Above
:data:`PROCESS_MIN` characters the render runs in one spawned worker process;
the parent only waits in a thread and receives bytes. The pool is owned by
whoever enters :func:`render_process` (the daemon), and shut down on exit.
"""

from __future__ import annotations

import array
import contextlib
import itertools
import logging
import multiprocessing
from collections.abc import AsyncIterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import anyio
import anyio.to_thread

from evie.chat.render.blocks import parse
from evie.chat.render.split import Chunk, Flavor, pack

log = logging.getLogger(__name__)

#: replies longer than this many characters (256 K) render in the worker process when one runs
PROCESS_MIN = 1 << 18

_SLICE = 1 << 18  # the text is encoded in slices: no step holds the GIL for long
_pool: ProcessPoolExecutor | None = None


def _render_packed(data: bytes, flavor: Flavor) -> tuple[bytes, bytes]:
    """In the worker: the chunks as one UTF-8 blob and the end offset of each piece
    (markup, plain, markup, …). Bytes cross the pipe as a memcpy: the parent never
    holds the GIL to decode megabytes at once, only one message at a time."""
    markdown = data.decode("utf-8", "surrogatepass")
    pieces: list[bytes] = []
    ends = array.array("q")
    end = 0
    for chunk in pack(parse(markdown), flavor):
        for text in (chunk.markup, chunk.plain):
            piece = text.encode("utf-8", "surrogatepass")
            pieces.append(piece)
            end += len(piece)
            ends.append(end)
    return b"".join(pieces), ends.tobytes()


def _encode(markdown: str) -> bytes:
    return b"".join(
        markdown[i : i + _SLICE].encode("utf-8", "surrogatepass")
        for i in range(0, len(markdown), _SLICE)
    )


def _unpack(blob: bytes, ends_raw: bytes) -> list[Chunk]:
    ends = array.array("q")
    ends.frombytes(ends_raw)
    view = memoryview(blob)
    texts = [
        str(view[start:end], "utf-8", "surrogatepass")
        for start, end in zip(itertools.chain((0,), ends), ends, strict=False)
    ]
    return [Chunk(texts[i], texts[i + 1]) for i in range(0, len(texts), 2)]


def _warm() -> None:
    """Imports are done in the worker before the first real reply needs it."""


@contextlib.asynccontextmanager
async def render_process() -> AsyncIterator[None]:
    """While open, replies over :data:`PROCESS_MIN` render in one worker process."""
    global _pool
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    previous, _pool = _pool, pool
    try:
        try:
            await anyio.to_thread.run_sync(lambda: pool.submit(_warm).result())
        except BrokenProcessPool as exc:  # big replies then render in a thread, as before
            log.warning("render process did not start (%s): rendering in threads", exc)
        yield
    finally:
        _pool = previous
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: pool.shutdown(wait=True, cancel_futures=True))


async def render_in_process(markdown: str, flavor: Flavor) -> list[Chunk] | None:
    """The chunks rendered in the worker process; None when none runs (or it broke)."""
    pool = _pool
    if pool is None:
        return None
    try:
        data = await anyio.to_thread.run_sync(_encode, markdown)
        future: Future[tuple[bytes, bytes]] = pool.submit(_render_packed, data, flavor)
    except (BrokenProcessPool, RuntimeError) as exc:  # RuntimeError: shut down meanwhile
        log.warning("render process unavailable (%s): rendering in a thread", exc)
        return None
    try:
        blob, ends = await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        future.cancel()
        raise
    except BrokenProcessPool as exc:
        log.warning("render process died (%s): rendering in a thread", exc)
        return None
    return await anyio.to_thread.run_sync(_unpack, blob, ends)
