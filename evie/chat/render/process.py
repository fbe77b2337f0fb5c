"""Very big replies render in a worker *process*, so nothing they do can stall the loop.

A worker thread shares the GIL with the event loop: one C-level step over a
10 MB reply (a regex, a replace, a garbage collection) holds it for tens to
hundreds of milliseconds however short the switch interval (adr/0013). Above
:data:`PROCESS_MIN` characters the render runs in one spawned worker process.

The loop speaks to the worker itself, over a socket pair, in slices of at most
:data:`_SLICE` bytes (no step holds the GIL for long): no thread hop, no
temporary file and no executor, which together cost the daemon 2-3 ms of CPU
per render (adr/0017, fifth follow-up). One render at a time. The worker is
replaced when it dies (a kill, the OOM killer) and when a caller stops waiting
for a render in progress (a cancelled turn, shutdown: it is killed, so no CPU
goes on a render nobody reads and the next reply does not queue behind it); when
none can start, big replies render in a thread. The worker leaves when the
daemon's end of the socket closes, however the daemon ended.
"""

from __future__ import annotations

import array
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from multiprocessing.process import BaseProcess

import anyio
import anyio.lowlevel
import anyio.to_thread

from evie.chat.render.blocks import parse
from evie.chat.render.split import Chunk, Flavor, pack

log = logging.getLogger(__name__)

#: replies longer than this many characters (64 K) render in the worker process when one runs:
#: a render thread shares the GIL and the scheduler's time with the loop, and on a busy
#: machine a 100 KB render in a thread stalled the loop by ~40 ms (adr/0013); the worker
#: runs at a lower priority and costs well under a millisecond of the daemon's CPU
PROCESS_MIN = 1 << 16

#: the worker's niceness: on a busy machine the daemon's own process (its event loop)
#: is scheduled first when it wakes, and the background render takes what is left
WORKER_NICE = 10

#: after a worker failed to start, big replies render in threads for this long
RESTART_AFTER_S = 60.0

#: how long a starting worker may take to import the renderer and say it is ready
READY_TIMEOUT_S = 60.0

_SLICE = 1 << 18  # bytes encoded, sent, received or decoded per step on the loop
_LENGTH = struct.Struct("<Q")
_READY = b"\x01"


class _Gone(Exception):
    """The worker's end of the socket closed: it died (or was killed)."""


# -- in the worker -----------------------------------------------------------------


def _receive_exactly(sock: socket.socket, size: int) -> bytearray | None:
    """``size`` bytes from a blocking socket; None when it closes first."""
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return buffer


def _render_bytes(data: bytearray, flavor: Flavor, most: int | None) -> tuple[bytes, bytes]:
    """The chunks as UTF-8 (markup, plain, markup, …) and the end offset of each piece."""
    markdown = data.decode("utf-8", "surrogatepass")
    del data
    ends = array.array("q")
    pieces: list[bytes] = []
    end = 0
    for chunk in pack(parse(markdown, alone=True), flavor, most=most):
        for text in (chunk.markup, chunk.plain):
            piece = text.encode("utf-8", "surrogatepass")
            pieces.append(piece)
            end += len(piece)
            ends.append(end)
    return b"".join(pieces), ends.tobytes()


def _serve(sock: socket.socket) -> None:
    """The worker: read a job (a pickled header, then the text), answer with a pickled
    header (the pieces' end offsets, or an error) and the pieces; leave when the daemon's
    end closes (an idle worker of a killed daemon) or is gone (a busy one's answer)."""
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)
    # Ctrl-C in the daemon's terminal reaches the whole process group: the daemon stops
    # in order and closes its end, and that ends the worker (no traceback from it)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError), sock:
        sock.sendall(_READY)
        while True:
            head = _receive_exactly(sock, _LENGTH.size)
            if head is None:
                return
            meta = _receive_exactly(sock, _LENGTH.unpack(head)[0])
            if meta is None:
                return
            flavor, most, size = pickle.loads(meta)
            data = _receive_exactly(sock, size)
            if data is None:
                return
            try:
                body, ends = _render_bytes(data, flavor, most)
                answer = pickle.dumps((ends, None))
            except Exception as exc:  # told to the daemon, which renders it in a thread
                body, answer = b"", pickle.dumps((b"", f"{type(exc).__name__}: {exc}"))
            del data
            sock.sendall(_LENGTH.pack(len(answer)) + answer)
            sock.sendall(body)


# -- in the daemon -----------------------------------------------------------------


async def _wait(until: Callable[[socket.socket], Awaitable[None]], sock: socket.socket) -> None:
    """``until(sock)``; the socket closed meanwhile (the worker stopped) is :class:`_Gone`."""
    try:
        await until(sock)
    except anyio.ClosedResourceError:
        raise _Gone("the render worker was stopped") from None


async def _send(sock: socket.socket, data: bytes | memoryview) -> None:
    """All of ``data``, yielding to the loop after every slice (a socket with room takes
    slice after slice without ever making the loop wait)."""
    view, sent = memoryview(data), 0
    while sent < len(view):
        try:
            sent += sock.send(view[sent : sent + _SLICE])
        except BlockingIOError:
            await _wait(anyio.wait_writable, sock)
            continue
        except OSError as exc:
            raise _Gone(str(exc)) from exc
        if sent < len(view):
            await anyio.lowlevel.checkpoint()


async def _receive_some(sock: socket.socket, most: int) -> bytes:
    """At least one and at most ``most`` bytes, once the worker has sent them."""
    while True:
        try:
            data = sock.recv(most)
        except BlockingIOError:
            await _wait(anyio.wait_readable, sock)
            continue
        except OSError as exc:
            raise _Gone(str(exc)) from exc
        if not data:
            raise _Gone("the render worker closed its end")
        return data


async def _receive(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes (a header: small)."""
    parts: list[bytes] = []
    while size:
        data = await _receive_some(sock, min(size, _SLICE))
        parts.append(data)
        size -= len(data)
    return b"".join(parts)


class _Worker:
    """One spawned worker and the daemon's end of its socket (non-blocking)."""

    def __init__(self, process: BaseProcess, sock: socket.socket) -> None:
        self.process = process
        self.sock = sock

    def close(self) -> None:
        """Close the daemon's end (the worker leaves when it sees it); a task waiting on
        the socket is woken (it raises :class:`_Gone`) instead of waiting for ever."""
        if self.sock.fileno() >= 0:
            anyio.notify_closing(self.sock)
            self.sock.close()

    def kill(self) -> None:
        """End it now (a render nobody will read, or shutdown); reaped by :meth:`reap`."""
        self.close()
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()

    def reap(self, timeout: float) -> None:
        """Wait (in a thread) up to ``timeout`` seconds for it to exit; kill it after."""
        self.process.join(timeout)
        if self.process.exitcode is None:
            with contextlib.suppress(OSError, ValueError):
                self.process.kill()
            self.process.join(5)


def _spawn() -> tuple[BaseProcess, socket.socket]:
    """Start a worker (in a thread: a spawn writes the child's set-up data)."""
    ours, theirs = socket.socketpair()
    try:
        process = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(theirs,), name="evie-render", daemon=True
        )
        process.start()
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()  # the worker holds its own copy: EOF reaches it when ours closes
    return process, ours


class RenderWorker:
    """The worker process big replies render in, started and replaced as needed."""

    def __init__(self) -> None:
        self._lock = anyio.Lock()
        self._worker: _Worker | None = None
        self._dead: list[_Worker] = []
        self._retry_at = 0.0
        self._closed = False  # after close(): no worker is started again
        self.starts = 0

    @property
    def pid(self) -> int | None:
        """The running worker's pid, if one runs (for tests)."""
        return None if self._worker is None else self._worker.process.pid

    async def start(self) -> _Worker | None:
        """A running worker: the current one, or a new one once it said it is ready."""
        worker = self._worker
        if worker is not None and worker.process.exitcode is None:
            return worker
        if worker is not None:
            self._drop(worker)
        if self._closed or time.monotonic() < self._retry_at:
            return None
        try:
            process, sock = await anyio.to_thread.run_sync(_spawn)
        except Exception as exc:
            self._retry_at = time.monotonic() + RESTART_AFTER_S
            log.warning("render worker did not start (%s): rendering in threads", exc)
            return None
        sock.setblocking(False)
        worker = _Worker(process, sock)
        try:
            with anyio.fail_after(READY_TIMEOUT_S):
                await _receive(sock, len(_READY))
        except (_Gone, TimeoutError) as exc:
            self._drop(worker)
            self._retry_at = time.monotonic() + RESTART_AFTER_S
            why = str(exc) or f"not ready within {READY_TIMEOUT_S:g} s"
            log.warning("render worker did not start (%s): rendering in threads", why)
            return None
        except BaseException:
            self._drop(worker)
            raise
        if self._closed:  # closed while this one started
            worker.kill()
            await anyio.to_thread.run_sync(worker.reap, 2.0)
            return None
        self._worker = worker
        self.starts += 1
        return worker

    def _drop(self, worker: _Worker) -> None:
        if self._worker is worker:
            self._worker = None
        worker.kill()
        self._dead.append(worker)
        for dead in [d for d in self._dead if d.process.exitcode is not None]:
            self._dead.remove(dead)  # exitcode read it: reaped

    async def render(self, markdown: str, flavor: Flavor, most: int | None) -> list[Chunk] | None:
        """The chunks rendered in the worker; None when no worker runs or it failed.

        A worker found dead is replaced and the render tried once more in the new one
        (it may have died while idle, unnoticed); a second death is the text's own doing
        (the OOM killer), so the thread renders it."""
        async with self._lock:
            for attempt in (1, 2):
                worker = await self.start()
                if worker is None:
                    return None
                try:
                    return await _exchange(worker.sock, markdown, flavor, most)
                except _Gone as exc:
                    self._drop(worker)
                    then = (
                        "restarting it"
                        if attempt == 1
                        else "twice on one reply: a thread renders it"
                    )
                    log.warning("render worker died (%s): %s", exc, then)
                except _Failed as exc:
                    log.debug("render failed in the worker: %s", exc)
                    return None  # the thread renders it again and raises the same error there
                except BaseException:  # cancelled mid-render: a job nobody will read
                    self._drop(worker)
                    raise
            return None

    async def close(self) -> None:
        """Let the worker leave (its socket closes) and wait for it; kill a busy one."""
        self._closed = True  # a render still under way falls back to a thread
        workers = self._dead + ([self._worker] if self._worker is not None else [])
        self._worker, self._dead = None, []
        for worker in workers:
            worker.close()
        with anyio.CancelScope(shield=True):
            for worker in workers:
                await anyio.to_thread.run_sync(worker.reap, 2.0)


class _Failed(Exception):
    """The worker could not render this text (reported, not crashed)."""


async def _exchange(
    sock: socket.socket, markdown: str, flavor: Flavor, most: int | None
) -> list[Chunk]:
    """Send one job and read its answer, a slice per step."""
    pieces: list[bytes] = []
    for i in range(0, len(markdown), _SLICE):
        pieces.append(markdown[i : i + _SLICE].encode("utf-8", "surrogatepass"))
        if i:
            await anyio.lowlevel.checkpoint()
    size = sum(len(piece) for piece in pieces)
    meta = pickle.dumps((flavor, most, size))
    await _send(sock, _LENGTH.pack(len(meta)) + meta)
    for piece in pieces:
        await _send(sock, piece)
    del pieces
    head = await _receive(sock, _LENGTH.size)
    ends_raw, error = pickle.loads(await _receive(sock, _LENGTH.unpack(head)[0]))
    if error is not None:
        raise _Failed(error)
    ends = array.array("q")
    ends.frombytes(ends_raw)
    return await _receive_texts(sock, ends)


async def _receive_texts(sock: socket.socket, ends: array.array[int]) -> list[Chunk]:
    """The worker's pieces, decoded into chunks as they arrive, a slice at a time: no
    buffer of the whole answer (tens of MB for 10 MB of Discord messages: its page faults
    alone would hold the loop for ~20 ms), and no step over all the chunks at the end
    (5,000 of them built at once held the loop for ~10 ms)."""
    chunks: list[Chunk] = []
    markup: str | None = None  # a chunk's first piece, until its second has arrived
    total = ends[-1] if ends else 0
    pending, got, i = b"", 0, 0
    while True:
        if i < len(ends) and ends[i] <= got:  # every piece that has arrived whole
            base = got - len(pending)
            view = memoryview(pending)
            pos = 0
            while i < len(ends) and ends[i] <= got:
                end = ends[i] - base
                text = str(view[pos:end], "utf-8", "surrogatepass")
                if markup is None:
                    markup = text
                else:
                    chunks.append(Chunk(markup, text))
                    markup = None
                pos, i = end, i + 1
            pending = pending[pos:]
        if got >= total:
            break
        if got:  # the worker refills the socket as fast as it is read: yield meanwhile
            await anyio.lowlevel.checkpoint()
        data = await _receive_some(sock, min(_SLICE, total - got))
        got += len(data)
        pending = pending + data if pending else data
    return chunks


_current: RenderWorker | None = None


@contextlib.asynccontextmanager
async def render_process() -> AsyncIterator[RenderWorker]:
    """While open, replies over :data:`PROCESS_MIN` render in one worker process (started
    here, so its imports are done before the first reply needs it)."""
    global _current
    worker = RenderWorker()
    previous, _current = _current, worker
    try:
        async with worker._lock:
            await worker.start()
        yield worker
    finally:
        _current = previous
        await worker.close()


async def render_in_process(
    markdown: str, flavor: Flavor, most: int | None = None
) -> list[Chunk] | None:
    """The chunks rendered in the worker process; None when none runs (or it failed)."""
    worker = _current
    if worker is None:
        return None
    return await worker.render(markdown, flavor, most)
