"""Warm spares: pi processes started ahead of need (adr/0016).

pi takes about a second to boot. Each spare is booted as the *next* new
session: ``spec_for(id)`` with a freshly minted id, so it already has that
session's file, working directory and command line. A new session (a new
chat, or ``/new``) is given a spare's id when one is ready (:meth:`claim_id`),
and takes that very process: nothing to switch.

A session that already exists (its idle pi was stopped) can still take a spare
by pointing it at its own file with pi's ``switch_session``, which loads the
history exactly as ``pi --session FILE`` does at start-up — but only when the
spare would run it the same way: the same command line and environment, and
the same working directory. pi takes a session's working directory from its
file's header (or, for a file not written yet, from its own cwd, which Node
caches at start), so with a private work dir per session (no ``[agent] cwd``)
an existing session never fits another session's spare and starts cold.

Spares count against ``max_processes`` and are the first processes given up
when sessions need room. One owner task (:meth:`SparePool.run`) keeps the pool
filled; every spare's pumps run in the manager's task group, so a taken spare
simply becomes the session's process. The refill after a take waits for that
session's first turn to end (at most ``HOLD_SECONDS``): a pi booting beside it
would slow the very reply the spare is there to speed up.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import anyio
import anyio.abc
import anyio.to_thread
import attrs

from evie.agent.process import LaunchSpec, PiProcess
from evie.errors import AgentError
from evie.metrics import Metrics

log = logging.getLogger(__name__)

#: a claimed spare whose session has not started by then is stopped (and replaced)
CLAIM_SECONDS = 120.0
#: the longest a refill waits for the first turn of the spare just taken (see ``_holding``)
HOLD_SECONDS = 10.0


class SpecSource(Protocol):
    def spec_for(self, session_id: str) -> LaunchSpec: ...


def session_file_of(spec: LaunchSpec) -> Path | None:
    """The ``--session`` path in a pi command line, if any."""
    argv = spec.argv
    for i, arg in enumerate(argv[:-1]):
        if arg == "--session":
            return Path(argv[i + 1])
    return None


def _masked(spec: LaunchSpec) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The command line without the session path, and the environment: what must match."""
    argv = list(spec.argv)
    for i, arg in enumerate(argv[:-1]):
        if arg == "--session":
            argv[i + 1] = ""
    return tuple(argv), tuple(sorted(spec.env.items()))


def header_cwd(session_file: Path) -> Path | None:
    """The working directory recorded in a session file's header (its first line)."""
    try:
        with session_file.open("rb") as f:
            first = f.readline(1 << 20)
    except OSError:
        return None
    try:
        header = json.loads(first)
    except ValueError:
        return None
    cwd = header.get("cwd") if isinstance(header, dict) else None
    return Path(cwd) if isinstance(cwd, str) and cwd else None


def can_switch(spare: LaunchSpec, target: LaunchSpec) -> bool:
    """Would this spare, switched to ``target``'s file, run it as a cold start would?

    Blocking (it reads the session file's header): call it off the loop.
    """
    if _masked(spare) != _masked(target):
        return False
    session_file = session_file_of(target)
    if session_file is None:
        return False
    recorded = header_cwd(session_file) if session_file.exists() else None
    return (recorded or target.cwd) == spare.cwd


def _remove_unused_work_dir(cwd: Path, session_id: str) -> None:
    """A spare never used leaves its private work dir empty: remove it (never another dir)."""
    if cwd.name == session_id:
        try:
            cwd.rmdir()  # only if empty
        except OSError:
            pass


@attrs.define(eq=False)
class _Spare:
    process: PiProcess
    session_id: str
    claimed_at: float | None = None


class SparePool:
    """Keeps up to ``count`` booted pi processes ready to be taken."""

    def __init__(
        self,
        launcher: SpecSource,
        count: int,
        tasks: anyio.abc.TaskGroup,
        *,
        room: Callable[[], int],
        metrics: Metrics,
        mint: Callable[[], str],
        held: bool = False,
    ) -> None:
        """``room()`` says how many more processes ``max_processes`` allows right now.

        ``held``: boot nothing until :meth:`release` (``evie run`` releases the pool
        once its platforms poll, so pi's boot does not compete with its own start-up).
        """
        self._launcher = launcher
        self.count = count
        self._tasks = tasks
        self._room = room
        self._metrics = metrics
        self._mint = mint
        self._spares: list[_Spare] = []  # booted, oldest first
        self._starting = 0
        self._wake = anyio.Event()
        self._settled = anyio.Event()  # set when no spare is booting
        self._settled.set()
        self._stopped = False
        self._booting: anyio.CancelScope | None = None  # the spawn in progress, if any
        self._held_by: PiProcess | None = None  # the spare taken last, serving its first turn
        self._held_since = 0.0
        self._released = anyio.Event()
        if not held:
            self._released.set()

    @property
    def ready(self) -> list[int]:
        """The pids of the booted spares nobody has claimed."""
        return [s.process.pid for s in self._spares if s.claimed_at is None]

    @property
    def size(self) -> int:
        """Spares alive or booting: what counts against ``max_processes``."""
        return len(self._spares) + self._starting

    def poke(self) -> None:
        """Something changed (a spare was taken, a process stopped): reconsider the pool."""
        self._wake.set()

    def release(self) -> None:
        """Start booting spares (a pool created ``held``)."""
        self._released.set()

    def claim_id(self) -> str | None:
        """The session id of a ready spare, promised to the new session that takes it.

        Synchronous and O(spares): safe under the session-map guard.
        """
        for spare in self._spares:
            if spare.claimed_at is None and spare.process.alive:
                spare.claimed_at = time.monotonic()
                return spare.session_id
        return None

    async def run(self) -> None:
        """The owner task: refill while there is room, expire stale claims; stop all on exit."""
        try:
            await self._released.wait()
            while not self._stopped:
                self._expire_claims()
                room = self._room()
                if room < 0:  # sessions took the room while a spare was booting
                    self.give_up(-room)
                unclaimed = len(self.ready) + self._starting
                holding = self._holding()
                if unclaimed < self.count and room > 0 and not holding:
                    await self._start_one()
                    continue
                with anyio.move_on_after(0.1 if holding else 1):  # stopping processes free room
                    await self._wake.wait()
                self._wake = anyio.Event()
        finally:
            with anyio.CancelScope(shield=True):
                await self.close()

    def _holding(self) -> bool:
        """Is the spare taken last still on its session's first turn?

        Booting pi is about a second of CPU: a refill started the moment a spare is
        taken competes with that very session's first reply (on 2 cores it added
        0.25 to 0.35 s to it, adr/0016). The refill waits for that turn to end, at
        most ``HOLD_SECONDS``, so a slow model does not keep the pool empty.
        """
        held = self._held_by
        if held is None:
            return False
        turn = held.turn
        done = turn is not None and turn.finished is not None
        if done or not held.alive or time.monotonic() - self._held_since > HOLD_SECONDS:
            self._held_by = None
            return False
        return True

    def _hold(self, process: PiProcess) -> None:
        self._held_by = process
        self._held_since = time.monotonic()

    def _expire_claims(self) -> None:
        now = time.monotonic()
        for spare in list(self._spares):
            if spare.claimed_at is not None and now - spare.claimed_at > CLAIM_SECONDS:
                self._spares.remove(spare)
                self._tasks.start_soon(self._discard, spare)

    async def _start_one(self) -> None:
        self._starting += 1
        self._settled = anyio.Event()
        started = False
        try:
            # close() cancels a boot in progress; a cancelled spawn stops the process it
            # started, so nothing is left unowned and nobody waits for pi's boot
            with anyio.CancelScope() as self._booting:
                session_id = self._mint()
                spec = await anyio.to_thread.run_sync(self._launcher.spec_for, session_id)
                process = await PiProcess.spawn(spec, self._tasks)
                self._spares.append(_Spare(process, session_id))
                self._tasks.start_soon(self._watch, process)
                started = True
                log.info("spare pi ready (pid %d)", process.pid)
        except (AgentError, OSError) as exc:
            log.warning("could not start a spare pi: %s; trying again in 30 s", exc)
        finally:
            self._booting = None
            self._starting -= 1
            if not self._starting:
                self._settled.set()
        if not started and not self._stopped:
            await anyio.sleep(30)  # a spare is an optimisation: never a spawn loop

    async def _watch(self, process: PiProcess) -> None:
        await process.exited.wait()
        for spare in self._spares:
            if spare.process is process:  # died while waiting: forget it and refill
                self._spares.remove(spare)
                log.warning("spare pi %d exited while waiting", process.pid)
                self.poke()
                break

    def take_claimed(self, session_id: str) -> PiProcess | None:
        """The spare claimed for this new session (:meth:`claim_id`), if it is still alive.

        Synchronous, and without recomputing the launch spec: the spare was booted with
        ``spec_for(session_id)`` by the same launcher, so preparing it again (a thread
        hop and file-system calls: 1-5 ms on a busy 2-core machine, on the path of the
        first reply) would only repeat it. A directory removed since then is the same as
        one removed under a running session.
        """
        spare = self._claimed_for(session_id)
        return None if spare is None else self._hand_over(spare)

    def _claimed_for(self, session_id: str) -> _Spare | None:
        for spare in self._spares:
            if spare.session_id == session_id and spare.process.alive:
                return spare
        return None

    def _hand_over(self, spare: _Spare) -> PiProcess:
        """``spare``'s process, no longer a spare (its lifetime is the session's now)."""
        self._spares.remove(spare)
        self._taken(spare.process)
        return spare.process

    def _taken(self, process: PiProcess) -> None:
        self._metrics.spares_taken += 1
        self._hold(process)
        self.poke()

    async def take(self, session_id: str, target: LaunchSpec) -> PiProcess | None:
        """A booted pi for ``target``: the one claimed for it, or one switched to its file.

        None when no spare fits: the caller starts pi cold.
        """
        claimed = self._claimed_for(session_id)
        if claimed is not None and claimed.process.spec == target:  # else: the launcher
            return self._hand_over(claimed)  # changed its mind; another may still switch
        for spare in self._spares:
            if spare.claimed_at is not None or not spare.process.alive:
                continue
            if not await anyio.to_thread.run_sync(can_switch, spare.process.spec, target):
                continue
            if spare not in self._spares:  # taken while we looked
                continue
            self._spares.remove(spare)
            session_file = session_file_of(target)
            assert session_file is not None
            try:
                await spare.process.switch_session(session_file, target)
            except AgentError as exc:
                log.warning("spare pi %d could not switch session: %s", spare.process.pid, exc)
                self._tasks.start_soon(self._discard, spare)
                break
            self._taken(spare.process)
            return spare.process
        self._metrics.spares_missed += 1
        self.poke()
        return None

    def give_up(self, n: int) -> int:
        """Stop up to ``n`` unclaimed spares to make room for sessions; how many were stopped."""
        dropped = 0
        for spare in reversed(list(self._spares)):
            if dropped >= n:
                break
            if spare.claimed_at is None:
                self._spares.remove(spare)
                self._tasks.start_soon(self._discard, spare)
                dropped += 1
        return dropped

    async def close(self) -> None:
        """Stop refilling and stop every spare, waiting for one being booted."""
        self._stopped = True
        self._wake.set()
        if self._booting is not None:
            self._booting.cancel()
        await self._settled.wait()
        spares, self._spares = self._spares, []
        async with anyio.create_task_group() as tg:
            for spare in spares:
                tg.start_soon(self._discard, spare)

    async def _discard(self, spare: _Spare) -> None:
        await spare.process.close()
        cwd = spare.process.spec.cwd
        await anyio.to_thread.run_sync(_remove_unused_work_dir, cwd, spare.session_id)
