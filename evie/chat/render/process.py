"""Very big replies render in a worker *process*, so nothing they do can stall the loop.

A worker thread shares the GIL with the event loop: one C-level step over a
10 MB reply (a regex, a replace, a garbage collection) holds it for tens to
hundreds of milliseconds however short the switch interval (adr/0013). Above
:data:`PROCESS_MIN` characters the render runs in one spawned worker process;
the text goes to it and the chunks come back through temporary files, which
the parent writes and reads in pieces in a thread. The pool is owned by
whoever enters :func:`render_process` (the daemon), and shut down on exit.
"""

from __future__ import annotations

import array
import contextlib
import logging
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import anyio
import anyio.to_thread

from evie.chat.render.blocks import parse
from evie.chat.render.split import Chunk, Flavor, pack

log = logging.getLogger(__name__)

#: replies longer than this many characters (64 K) render in the worker process when one runs:
#: a render thread shares the GIL and the scheduler's time with the loop, and on a busy
#: machine a 100 KB render in a thread stalled the loop by ~40 ms (adr/0013); the worker
#: runs at a lower priority and costs a millisecond or two of round trip
PROCESS_MIN = 1 << 16

_SLICE = 1 << 18  # the text is encoded in slices: no step holds the GIL for long
_pool: ProcessPoolExecutor | None = None


def _render_to_file(source: str, flavor: Flavor, most: int | None) -> tuple[str, bytes]:
    """In the worker: read the text from ``source`` (then delete it), write the chunks as
    UTF-8 to a new file and return its path and the end offset of each piece (markup,
    plain, markup, …).

    Both ways go through files, not the executor's pipe: a pickled result of 20 to 40 MB is
    received into a growing buffer and unpickled with the parent's GIL held for tens of
    milliseconds (the last stall left at 10 MB, adr/0013); a file is read piece by piece."""
    with open(source, "rb") as f:
        markdown = f.read().decode("utf-8", "surrogatepass")
    os.unlink(source)
    ends = array.array("q")
    end = 0
    fd, path = tempfile.mkstemp(prefix="evie-render-", suffix=".out")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in pack(parse(markdown, alone=True), flavor, most=most):
                for text in (chunk.markup, chunk.plain):
                    piece = text.encode("utf-8", "surrogatepass")
                    out.write(piece)
                    end += len(piece)
                    ends.append(end)
    except BaseException:
        os.unlink(path)
        raise
    return path, ends.tobytes()


def _write_text(markdown: str) -> str:
    """The text in a temporary file, encoded and written in slices (no long GIL hold)."""
    fd, path = tempfile.mkstemp(prefix="evie-render-", suffix=".md")
    try:
        with os.fdopen(fd, "wb") as f:
            for i in range(0, len(markdown), _SLICE):
                f.write(markdown[i : i + _SLICE].encode("utf-8", "surrogatepass"))
    except BaseException:
        os.unlink(path)
        raise
    return path


def _read_chunks(path: str, ends_raw: bytes) -> list[Chunk]:
    """The worker's chunks, decoded one message at a time; the file is removed. The file
    is read in one call (the GIL is released while the kernel copies it), not in one
    call per message: 10 MB for Discord is 10,000 of them, each taking the GIL back."""
    ends = array.array("q")
    ends.frombytes(ends_raw)
    with open(path, "rb") as f:
        os.unlink(path)
        view = memoryview(f.read())
    texts: list[str] = []
    start = 0
    for end in ends:
        texts.append(str(view[start:end], "utf-8", "surrogatepass"))
        start = end
    return [Chunk(texts[i], texts[i + 1]) for i in range(0, len(texts), 2)]


def _discard(future: Future[tuple[str, bytes]]) -> None:
    """A result nobody will read (its reader was cancelled): remove its file."""
    if not future.cancelled() and future.exception() is None:
        with contextlib.suppress(OSError):
            os.unlink(future.result()[0])


#: the worker's niceness: on a busy machine the daemon's own process (its event loop)
#: is scheduled first when it wakes, and the background render takes what is left
WORKER_NICE = 10


#: how often the worker checks that the daemon that started it is still there
ORPHAN_CHECK_S = 1.0


def _exit_when_orphaned(parent: int) -> None:
    """A daemon killed outright (SIGKILL, OOM) cannot shut its pool down, and an idle
    worker waiting for work would live on for ever: it leaves once its parent is gone.
    (Not PR_SET_PDEATHSIG: that fires when the *thread* that spawned the worker ends.)"""
    while os.getppid() == parent:
        time.sleep(ORPHAN_CHECK_S)
    os._exit(0)


def _init_worker(parent: int) -> None:
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()


def _warm() -> None:
    """Imports are done in the worker before the first real reply needs it."""


@contextlib.asynccontextmanager
async def render_process() -> AsyncIterator[None]:
    """While open, replies over :data:`PROCESS_MIN` render in one worker process."""
    global _pool
    pool = ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(os.getpid(),),
    )
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


async def render_in_process(
    markdown: str, flavor: Flavor, most: int | None = None
) -> list[Chunk] | None:
    """The chunks rendered in the worker process; None when none runs (or it broke)."""
    pool = _pool
    if pool is None:
        return None
    try:
        source = await anyio.to_thread.run_sync(_write_text, markdown)
    except OSError as exc:  # no room for a temporary file: the thread needs none
        log.warning("render process unavailable (%s): rendering in a thread", exc)
        return None
    try:
        future: Future[tuple[str, bytes]] = pool.submit(_render_to_file, source, flavor, most)
    except (BrokenProcessPool, RuntimeError) as exc:  # RuntimeError: shut down meanwhile
        os.unlink(source)
        log.warning("render process unavailable (%s): rendering in a thread", exc)
        return None
    try:
        path, ends = await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        if not future.cancel():  # running: its file is removed once it is written
            future.add_done_callback(_discard)
        else:
            with contextlib.suppress(OSError):
                os.unlink(source)
        raise
    except (BrokenProcessPool, OSError) as exc:
        with contextlib.suppress(OSError):
            os.unlink(source)
        log.warning("render process failed (%s): rendering in a thread", exc)
        return None
    return await anyio.to_thread.run_sync(_read_chunks, path, ends)
