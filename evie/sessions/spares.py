"""Warm spares: pi processes started ahead of need (adr/0016).

pi takes about a second to boot; a session that needs a process (a new chat,
``/new``, or one whose idle pi was stopped) takes a booted spare instead and
points it at its own session file with pi's ``switch_session``, which loads the
file's history exactly as ``pi --session FILE`` does at start-up.

A spare may only serve a session that would run in the same working
directory with the same command line and environment:

* pi takes a session's working directory from its file's header, or from its
  own cwd for a file that does not exist yet; so an existing session fits
  only a spare whose cwd is the one in its header;
* with a private work dir per session (no ``[agent] cwd``), a spare waits in
  an empty placeholder dir beside the others (``work/.spare-…``); a *new*
  session renames it to its own work dir, so pi's cwd (which follows the
  directory) becomes the session's before the switch. A session whose work
  dir already exists is never served by a placeholder: it cold-starts.

Spares count against ``max_processes`` and are the first processes given up
when sessions need room. One owner task (:meth:`SparePool.run`) keeps the pool
filled; every spare's pumps run in the manager's task group, so a taken spare
simply becomes the session's process.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import anyio
import anyio.abc
import anyio.to_thread

from evie.agent.process import LaunchSpec, PiProcess
from evie.errors import AgentError
from evie.metrics import Metrics

log = logging.getLogger(__name__)

SPARE_PREFIX = ".spare-"


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


def plan_adoption(spare: LaunchSpec, target: LaunchSpec) -> Path | bool | None:
    """Can this spare serve ``target``? False: no. None: as it is. A path: rename its cwd there.

    Blocking (it reads the session file's header): call it off the loop.
    """
    if _masked(spare) != _masked(target):
        return False
    session_file = session_file_of(target)
    if session_file is None:
        return False
    if session_file.exists():
        recorded = header_cwd(session_file)
        wanted = recorded if recorded is not None else target.cwd
        return None if wanted == spare.cwd else False
    if target.cwd == spare.cwd:
        return None
    placeholder = spare.cwd.name.startswith(SPARE_PREFIX)
    if placeholder and target.cwd.parent == spare.cwd.parent and not target.cwd.exists():
        return target.cwd
    return False


def _adopt(spare: LaunchSpec, target: LaunchSpec) -> bool:
    """Check the fit and, for a placeholder, move its dir to the session's (off the loop)."""
    plan = plan_adoption(spare, target)
    if plan is False:
        return False
    if isinstance(plan, Path):
        try:
            os.rename(spare.cwd, plan)  # atomic; fails if the target appeared meanwhile
        except OSError:
            return False
    return True


def _remove_placeholder(cwd: Path) -> None:
    if cwd.name.startswith(SPARE_PREFIX):
        try:
            cwd.rmdir()  # only if pi left it empty
        except OSError:
            pass


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
    ) -> None:
        """``room()`` says how many more processes ``max_processes`` allows right now."""
        self._launcher = launcher
        self.count = count
        self._tasks = tasks
        self._room = room
        self._ready: list[PiProcess] = []
        self._starting = 0
        self._wake = anyio.Event()
        self._settled = anyio.Event()  # set when no spare is booting
        self._settled.set()
        self._stopped = False
        self._metrics = metrics

    @property
    def ready(self) -> list[int]:
        """The pids of the spares waiting to be taken."""
        return [p.pid for p in self._ready]

    @property
    def size(self) -> int:
        """Spares alive or booting: what counts against ``max_processes``."""
        return len(self._ready) + self._starting

    def poke(self) -> None:
        """Something changed (a spare was taken, a process stopped): reconsider the pool."""
        self._wake.set()

    async def run(self) -> None:
        """The owner task: refill the pool while there is room; stop the spares on exit."""
        try:
            while not self._stopped:
                if self.size < self.count and self._room() > 0:
                    await self._start_one()
                    continue
                with anyio.move_on_after(1):  # sessions' processes stopping free room too
                    await self._wake.wait()
                self._wake = anyio.Event()
        finally:
            with anyio.CancelScope(shield=True):
                await self.close()

    async def _start_one(self) -> None:
        self._starting += 1
        self._settled = anyio.Event()
        process: PiProcess | None = None
        try:
            spec = await anyio.to_thread.run_sync(
                self._launcher.spec_for, SPARE_PREFIX + secrets.token_hex(6)
            )
            # shielded (bounded by the startup timeout): a spawn cut short would leave a
            # process nobody owns; close() waits for it and stops it instead
            with anyio.CancelScope(shield=True):
                spawned = await PiProcess.spawn(spec, self._tasks)
            process = spawned
            self._ready.append(spawned)
            self._tasks.start_soon(self._watch, spawned)
            log.info("spare pi ready (pid %d)", spawned.pid)
        except (AgentError, OSError) as exc:
            log.warning("could not start a spare pi: %s; trying again in 30 s", exc)
        finally:
            self._starting -= 1
            if not self._starting:
                self._settled.set()
        if process is None:
            await anyio.sleep(30)  # a spare is an optimisation: never a spawn loop

    async def _watch(self, process: PiProcess) -> None:
        await process.exited.wait()
        if process in self._ready:  # died while waiting: forget it and refill
            self._ready.remove(process)
            log.warning("spare pi %d exited while waiting", process.pid)
            self.poke()

    async def take(self, target: LaunchSpec) -> PiProcess | None:
        """A booted pi now pointed at ``target``'s session file, or None (start one cold)."""
        while self._ready:
            process = self._ready.pop(0)
            if not process.alive:
                continue
            fits = await anyio.to_thread.run_sync(_adopt, process.spec, target)
            if not fits:
                self._ready.append(process)  # keep it for a session it does fit
                self._metrics.spares_missed += 1
                return None
            session_file = session_file_of(target)
            assert session_file is not None
            try:
                await process.switch_session(session_file, target)
            except AgentError as exc:
                log.warning("spare pi %d could not switch session: %s", process.pid, exc)
                await self._discard(process)
                self.poke()
                return None
            self._metrics.spares_taken += 1
            self.poke()
            return process
        self._metrics.spares_missed += 1
        self.poke()
        return None

    def give_up(self, n: int) -> int:
        """Stop up to ``n`` waiting spares to make room for sessions; how many were stopped."""
        dropped = 0
        while dropped < n and self._ready:
            self._tasks.start_soon(self._discard, self._ready.pop())
            dropped += 1
        return dropped

    async def _discard(self, process: PiProcess) -> None:
        await process.close()
        await anyio.to_thread.run_sync(_remove_placeholder, process.spec.cwd)

    async def close(self) -> None:
        """Stop refilling and stop every spare, waiting for one being booted."""
        self._stopped = True
        self._wake.set()
        await self._settled.wait()
        ready, self._ready = self._ready, []
        async with anyio.create_task_group() as tg:
            for process in ready:
                tg.start_soon(self._discard, process)
