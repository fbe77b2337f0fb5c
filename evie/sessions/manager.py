"""The SessionManager: one slot per chat key, one pi process per slot.

Locking rules (adr/0002):

* ``_guard`` protects only the ``_slots`` map, and only for a lookup, insert,
  replace or copy — synchronous callables, so it can never be held across
  a spawn, I/O or a turn;
* each turn, and each spawn, holds only its own slot's lock, so a 1 s pi start
  or a ten-minute turn in one chat never delays another chat or ``/status``;
* ``last_activity`` and the rest of a slot's status are plain attributes read
  without any lock;
* a background task only mutates the map after checking that the slot it holds
  is still the one in the map (``self._slots.get(key) is slot``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Literal, Protocol

import anyio
import anyio.abc
import anyio.to_thread
import attrs
from anyio import AsyncContextManagerMixin

from evie.agent.answers import SessionStats
from evie.agent.events import Notice, Outcome, Prompt, TurnEvent, TurnFinished
from evie.agent.launcher import is_valid_session_id
from evie.agent.process import LaunchSpec, PiProcess
from evie.config import SessionsConfig
from evie.errors import AgentCrashed, AgentError, AgentStartError, SessionReplaced, ShuttingDown
from evie.logs import chat_var, session_var
from evie.metrics import Metrics
from evie.sessions.facts import Change, SessionFacts
from evie.sessions.guard import BriefGuard
from evie.sessions.slot import Slot, SlotState, SlotStatus, mint_session_id
from evie.sessions.spares import SparePool
from evie.sessions.watchdog import TurnWatchdog

log = logging.getLogger(__name__)

EventSink = Callable[[TurnEvent], Awaitable[None]]
StartHook = Callable[[], Awaitable[None]]


class Launcher(Protocol):
    """Knows how to start pi for a given session id."""

    def spec_for(self, session_id: str) -> LaunchSpec: ...


class SessionObserver(Protocol):
    """Told about changes worth persisting (adr/0006); called synchronously."""

    def session_changed(self, facts: SessionFacts, change: Change) -> None: ...

    def take_notice(self, key: str) -> str | None:
        """A message to show once before this chat's next turn, if any."""
        ...


_SESSIONS = SessionsConfig()  # the defaults of [sessions], declared once in evie.config


@attrs.frozen
class SessionSettings:
    """What the manager needs; a field named like a [sessions] key takes its value from there."""

    idle_timeout: float = _SESSIONS.idle_timeout
    max_processes: int = _SESSIONS.max_processes
    mid_turn: Literal["follow_up", "steer"] = _SESSIONS.mid_turn
    abort_grace: float = _SESSIONS.abort_grace  # how long an aborted turn may take to wind down
    max_turn_seconds: float | None = None  # a longer turn is stopped ([agent]; None: no limit)
    stall_timeout: float | None = None  # a turn in which pi is silent this long is stopped
    # pre-started pi processes for new sessions (adr/0016); off unless [sessions] says so
    warm_spares: int = 0

    @classmethod
    def from_config(cls, sessions: SessionsConfig) -> SessionSettings:
        names = {f.name for f in attrs.fields(SessionsConfig)}
        return cls(
            **{f.name: getattr(sessions, f.name) for f in attrs.fields(cls) if f.name in names}
        )


@attrs.frozen
class Queued:
    """The message was queued into the running turn; its answer arrives there."""

    position: int
    steer: bool


SendResult = Queued | TurnFinished
SHUTTING_DOWN = "evie is shutting down; send your message again in a minute"


def _valid_sessions(known: dict[str, str]) -> dict[str, str]:
    """Drop stored session ids that are not plain ids: a tampered state file must not
    point pi at a session file or work dir outside evie's directories."""
    valid = {}
    for key, session_id in known.items():
        if is_valid_session_id(session_id):
            valid[key] = session_id
        else:
            log.warning("chat %s: ignoring invalid stored session id %r", key, session_id)
    return valid


class SessionManager(AsyncContextManagerMixin):
    def __init__(
        self,
        launcher: Launcher,
        settings: SessionSettings | None = None,
        *,
        metrics: Metrics | None = None,
        observer: SessionObserver | None = None,
        known_sessions: dict[str, str] | None = None,
        hold_spares: bool = False,
    ) -> None:
        """``hold_spares``: boot no warm spare until :meth:`release_spares`."""
        self._launcher = launcher
        self._hold_spares = hold_spares
        self.settings = settings or SessionSettings()
        self.metrics = metrics or Metrics()
        self._observer = observer
        self._known = _valid_sessions(known_sessions or {})  # key -> id, from persisted state
        self._slots: dict[str, Slot] = {}
        self._guard = BriefGuard(self.metrics)
        self._tg: anyio.abc.TaskGroup | None = None
        self._accepting = True
        # every live pi process, attached to a slot or retiring: what max_processes counts
        self._processes: set[PiProcess] = set()
        self._spawning = 0
        self._spares: SparePool | None = None

    # -- lifecycle ---------------------------------------------------------------

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[SessionManager]:
        """Own the background tasks (pi's pumps, retirements, idle cleanup); on exit stop pi.

        Exiting does not wait for running turns: the shutdown timeline (``evie.shutdown``)
        decides how long they get, using the primitives below.
        """
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._idle_loop)
            if self.settings.warm_spares:
                self._spares = SparePool(
                    self._launcher,
                    self.settings.warm_spares,
                    tg,
                    room=self._room_for_spares,
                    metrics=self.metrics,
                    mint=mint_session_id,
                    held=self._hold_spares,
                )
                tg.start_soon(self._spares.run)
            try:
                yield self
            finally:
                await self.close_all()
                tg.cancel_scope.cancel()
                self._tg = None

    @property
    def spares(self) -> SparePool | None:
        return self._spares

    def release_spares(self) -> None:
        """Let a manager created with ``hold_spares`` boot its warm spares."""
        self._hold_spares = False
        if self._spares is not None:
            self._spares.release()

    def _new_session_id(self) -> str:
        """A warm spare's id when one is ready (it is booted as that session), else a new one."""
        claimed = self._spares.claim_id() if self._spares is not None else None
        return claimed or mint_session_id()

    def _room_for_spares(self) -> int:
        """How many spares may be booted: live and starting pi processes count first."""
        assert self._spares is not None
        return self.settings.max_processes - len(self._live()) - self._spawning - self._spares.size

    @property
    def _tasks(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise RuntimeError("use the SessionManager as `async with SessionManager(...)`")
        return self._tg

    # -- shutdown primitives (the timeline that uses them is evie.shutdown) ----------

    def stop_accepting(self) -> None:
        """From now on no turn starts: new messages, and those waiting for one, get an error."""
        self._accepting = False

    def running(self) -> list[str]:
        """Keys of the chats whose turn is running now."""
        return [s.key for s in self.slots() if s.turn is not None]

    async def wait_for_turns(self, seconds: float) -> bool:
        """Wait at most ``seconds`` for running turns to end; True when none runs.

        Returns as soon as the last one has ended. Call :meth:`stop_accepting` first,
        or a waiting message may start the next turn.
        """
        with anyio.move_on_after(seconds):
            for slot in self.slots():
                async with slot.lock:
                    pass
            return True
        return False

    async def close_all(self) -> None:
        """Stop every pi process (in parallel); a turn still running ends as interrupted."""
        with anyio.CancelScope(shield=True):
            if self._spares is not None:
                await self._spares.close()
            slots = self.slots()
            attached = {slot.process for slot in slots}
            async with anyio.create_task_group() as tg:
                for slot in slots:
                    tg.start_soon(self._stop_slot, slot)
                for process in self._live():  # retiring ones (after /new, idle or LRU)
                    if process not in attached:
                        tg.start_soon(process.close)

    async def _stop_slot(self, slot: Slot) -> None:
        process, slot.process = slot.process, None
        if process is not None:
            await process.close()
        if slot.state is not SlotState.RUNNING:
            slot.state = SlotState.CLOSED

    # -- the map (every access goes through the guard) -------------------------------

    def _get_or_create(self, key: str) -> Slot:
        def lookup() -> Slot:
            slot = self._slots.get(key)
            if slot is None:
                session_id = self._known.pop(key, None) or self._new_session_id()
                slot = self._slots[key] = Slot(key, session_id, tally=self.metrics.sessions)
            return slot

        return self._guard.run(lookup)

    def _lookup(self, key: str) -> Slot | None:
        return self._guard.run(lambda: self._slots.get(key))

    def _is_current(self, slot: Slot) -> bool:
        return self._guard.run(lambda: self._slots.get(slot.key) is slot)

    def slots(self) -> list[Slot]:
        return self._guard.run(lambda: list(self._slots.values()))

    # -- status (never waits for a turn) ---------------------------------------------

    def get_status(self, key: str) -> SlotStatus | None:
        slot = self._lookup(key)
        return slot.snapshot() if slot is not None else None

    def known_session(self, key: str) -> str | None:
        """The session this chat is on, or will resume on its next message (persisted state)."""
        slot = self._lookup(key)
        if slot is not None:
            return slot.session_id
        return self._guard.run(lambda: self._known.get(key))

    def all_status(self) -> list[SlotStatus]:
        return [slot.snapshot() for slot in self.slots()]

    def queue_depth(self) -> int:
        """Messages queued into running turns; walks only the running slots (the tally)."""
        depth = 0
        for slot in list(self.metrics.sessions.running):
            turn = getattr(slot, "turn", None)
            depth += len(turn.queued_texts) if turn is not None else 0
        return depth

    def live_processes(self) -> int:
        """pi processes alive now, including retiring ones (what max_processes counts)."""
        return len(self._live())

    def retiring_processes(self) -> int:
        """Live pi processes no chat uses any more (after /new, idle or LRU), being stopped."""
        attached = {s.process for s in self.slots() if s.process is not None}
        return sum(1 for p in self._live() if p not in attached)

    async def session_stats(self, key: str, seconds: float = 2.0) -> SessionStats | None:
        """Token and cost figures from pi, if a process is alive; bounded in time."""
        slot = self._lookup(key)
        process = slot.process if slot is not None else None
        if process is None or not process.alive:
            return None
        with anyio.move_on_after(seconds):
            try:
                return await process.query("get_session_stats", SessionStats)
            except AgentError as exc:
                log.warning("no usage figures for /status: %s", exc)
                return None
        return None

    # -- turns ------------------------------------------------------------------------

    async def send(
        self, key: str, prompt: Prompt, on_event: EventSink, *, on_start: StartHook | None = None
    ) -> SendResult:
        """Deliver a user message: queue it into a running turn, or run a turn.

        ``on_event`` receives the turn's events in order, ending with
        :class:`TurnFinished`. It may be slow: pi's output is drained regardless.
        ``on_start`` is awaited just before the prompt goes to pi (under the slot's
        lock), so a caller can record durably that this message's turn began (adr/0012).
        """
        if not self._accepting:
            raise ShuttingDown(SHUTTING_DOWN)
        for _attempt in range(3):
            slot = self._get_or_create(key)
            slot.last_activity = time.monotonic()
            queued = await self._try_queue(slot, prompt)
            if queued is not None:
                return queued
            slot.waiters += 1
            try:
                await slot.lock.acquire()
            finally:
                slot.waiters -= 1
            try:
                if slot.retired or not self._is_current(slot):
                    continue  # replaced while we waited: use the new slot
                if not self._accepting:
                    raise ShuttingDown(SHUTTING_DOWN)  # never start a turn at shutdown
                result = await self._run_turn(slot, prompt, on_event, on_start)
            finally:
                slot.lock.release()
            if result is not None:
                return result
        raise SessionReplaced("this chat's session was replaced several times; send it again")

    async def _try_queue(self, slot: Slot, prompt: Prompt) -> Queued | None:
        process, turn = slot.process, slot.turn
        if process is None or turn is None or not turn.accepts_followups or slot.waiters:
            return None  # (a message already waiting for the next turn keeps its place)
        steer = self.settings.mid_turn == "steer"
        try:
            await process.queue_message(
                prompt.text, [i.to_pi() for i in prompt.images], steer=steer
            )
        except AgentCrashed:
            return None  # the turn is ending with a crash; run this as the next turn
        except AgentError as exc:
            log.info("could not queue into the running turn (%s); waiting for it", exc)
            return None
        self.metrics.queued_messages += 1
        return Queued(position=turn.followups_sent - turn.followups_started, steer=steer)

    async def _run_turn(
        self, slot: Slot, prompt: Prompt, on_event: EventSink, on_start: StartHook | None = None
    ) -> SendResult | None:
        chat_var.set(slot.key)
        session_var.set(slot.session_id)
        process = slot.process
        if process is None or not process.alive:
            process = await self._start_process(slot)
            if process is None:
                if slot.retired:
                    return None
                assert slot.last_error is not None
                finished = TurnFinished(Outcome.FAILED, slot.last_error)
                await on_event(finished)
                return finished
        notice = self._observer.take_notice(slot.key) if self._observer is not None else None
        if notice:
            await on_event(Notice(notice))
        if on_start is not None:
            await on_start()
        turn = process.start_turn(prompt.text, [i.to_pi() for i in prompt.images])
        log.info("turn started (%d chars, %d images)", len(prompt.text), len(prompt.images))
        slot.turn = turn
        slot.state = SlotState.RUNNING
        self._notify(slot, Change.TURN_STARTED)
        stop_watching = self._watch(slot, process)
        try:
            # the turn's queue read directly: as ``async for event in turn``, without an
            # async generator (and its loop hooks) per turn (adr/0016 §10)
            events = turn.events
            while True:
                event = await events.get()
                slot.last_activity = time.monotonic()
                await on_event(event)
                if isinstance(event, TurnFinished):
                    break
        finally:
            stop_watching()
            slot.watchdog = None
            ended = turn.finished
            if ended is None or ended.outcome is Outcome.CRASHED or not process.alive:
                with anyio.CancelScope(shield=True):  # it waits for pi: nothing may cut it
                    await self._wind_down(slot, process)
            else:  # a turn that ended normally: the wind-down never waits (adr/0016 §10)
                await self._wind_down(slot, process)
        assert turn.finished is not None
        return turn.finished

    def _watch(self, slot: Slot, process: PiProcess) -> Callable[[], None]:
        """Set up the turn's watchdog; returns what stops it (the caller owns its task).

        Its task and cancel scope are made only when it is armed (adr/0016 §10).
        """
        assert process.turn is not None
        settings = self.settings
        scopes: list[anyio.CancelScope] = []

        async def watch(scope: anyio.CancelScope) -> None:
            with scope:
                await watchdog.run()

        def start() -> None:
            scopes.append(anyio.CancelScope())
            self._tasks.start_soon(watch, scopes[-1])

        def stop() -> None:
            for scope in scopes:
                scope.cancel()

        watchdog = slot.watchdog = TurnWatchdog(
            process,
            process.turn,
            abort_grace=settings.abort_grace,
            max_turn_seconds=settings.max_turn_seconds,
            stall_timeout=settings.stall_timeout,
            start=start,
        )
        if watchdog.has_deadline:
            watchdog.arm()  # else its task starts with the first abort request (adr/0016 §10)
        return stop

    async def _start_process(self, slot: Slot) -> PiProcess | None:
        """Spawn under the slot's lock (the guard is not held)."""
        slot.state = SlotState.STARTING
        await self._make_room()
        started = time.perf_counter()
        self._spawning += 1
        try:
            spares = self._spares
            # a new session's claimed spare: no launch spec to prepare (adr/0016 part 8)
            process = spares.take_claimed(slot.session_id) if spares is not None else None
            if process is None:
                try:
                    spec = await anyio.to_thread.run_sync(self._launcher.spec_for, slot.session_id)
                except OSError as exc:
                    raise AgentStartError(
                        f"could not prepare the session's files: {exc}. Check [state] dir."
                    ) from exc
                process = await spares.take(slot.session_id, spec) if spares is not None else None
                if process is None:
                    process = await PiProcess.spawn(spec, self._tasks, metrics=self.metrics)
            self._processes.add(process)
            self._tasks.start_soon(self._forget_when_gone, process)
        except AgentStartError as exc:
            log.error("pi failed to start: %s", exc)
            self.metrics.spawn_failures += 1
            slot.state = SlotState.CRASHED
            slot.last_outcome = Outcome.FAILED
            slot.last_error = str(exc)
            self._notify(slot, Change.TURN_ENDED)
            return None
        finally:
            self._spawning -= 1
        self.metrics.spawn_seconds.observe(time.perf_counter() - started)
        log.info("pi started (pid %d) in %.2fs", process.pid, time.perf_counter() - started)
        if slot.retired or not self._is_current(slot):
            await process.close()
            return None
        slot.process = process
        slot.state = SlotState.IDLE
        self._enforce_max_processes(keep=slot)
        return process

    async def _wind_down(self, slot: Slot, process: PiProcess) -> None:
        """Make sure the turn reached a terminal state, then record it."""
        turn = slot.turn
        assert turn is not None
        if turn.finished is None:  # the consumer left early (cancelled or failed)
            process.abort()
            with anyio.move_on_after(self.settings.abort_grace):
                async for _event in turn:
                    pass
            if turn.finished is None:
                await process.close()
        finished = turn.finished
        assert finished is not None
        slot.turn = None
        slot.turns += 1
        slot.last_outcome = finished.outcome
        slot.last_error = finished.error
        slot.last_activity = time.monotonic()
        self.metrics.turns[finished.outcome.value] += 1
        log.info(
            "turn %s after %.2fs%s",
            finished.outcome.value,
            turn.elapsed,
            f": {finished.error}" if finished.error else "",
        )
        self.metrics.turn_seconds.observe(turn.elapsed)
        if finished.outcome is Outcome.CRASHED or not process.alive:
            slot.process = None
            await process.close()  # reaps, and kills tool children left behind
            if finished.outcome is Outcome.CRASHED:
                slot.state = SlotState.CRASHED
        if slot.state is SlotState.RUNNING:
            slot.state = SlotState.IDLE  # a retired slot becomes CLOSED once its pi is stopped
        self._notify(slot, Change.TURN_ENDED)

    # -- commands ----------------------------------------------------------------------

    async def abort(self, key: str) -> bool:
        """Stop the running turn in this chat; False when nothing was running.

        The turn ends within ``abort_grace``: if pi ignores the abort, the
        watchdog kills it and tells the chat (see evie.sessions.watchdog).
        """
        slot = self._lookup(key)
        if slot is None:
            return False
        return self._abort_slot(slot)

    @staticmethod
    def _abort_slot(slot: Slot, *, final: bool = False) -> bool:
        if slot.turn is None or slot.process is None:
            return False
        if slot.watchdog is not None:
            slot.watchdog.request_abort(final=final)
        else:  # the turn is winding down already
            slot.process.abort()
        return True

    def abort_all(self) -> int:
        """Ask every running turn to stop (shutdown); returns how many were running."""
        return sum(1 for slot in self.slots() if self._abort_slot(slot, final=True))

    async def new_session(self, key: str) -> Slot:
        """Start over with a fresh session; a running turn in the old one is aborted."""

        def replace() -> tuple[Slot | None, Slot]:
            old = self._slots.get(key)
            new = self._slots[key] = Slot(key, self._new_session_id(), tally=self.metrics.sessions)
            if old is not None:
                old.retired = True
            return old, new

        old, new = self._guard.run(replace)
        self._notify(new, Change.SESSION_REPLACED)
        if old is not None:
            self._tasks.start_soon(self._retire, old)
        return new

    async def _retire(self, slot: Slot) -> None:
        self._abort_slot(slot)  # a hung turn is killed after abort_grace by its watchdog
        async with slot.lock:
            await self._stop_slot(slot)
            slot.state = SlotState.CLOSED

    # -- reclaiming processes --------------------------------------------------------------

    async def cleanup_idle(self, now: float | None = None) -> int:
        """Stop pi processes idle for longer than ``idle_timeout``; never a busy one.

        The session stays in the map; its next message resumes the same session
        file. Returns how many processes were stopped.
        """
        now = time.monotonic() if now is None else now
        stopped = 0
        for slot in self.slots():
            if now - slot.last_activity >= self.settings.idle_timeout and await self._stop_if_idle(
                slot
            ):
                stopped += 1
        return stopped

    async def _stop_if_idle(self, slot: Slot) -> bool:
        if slot.process is None or slot.turn is not None:
            return False
        try:
            slot.lock.acquire_nowait()  # never wait for a busy slot
        except anyio.WouldBlock:
            return False
        try:
            process = slot.process
            if process is None or slot.turn is not None:
                return False
            slot.process = None  # retiring from here on: still counted until it is gone
            await process.close()
            if slot.state is SlotState.CRASHED:
                slot.state = SlotState.IDLE
            return True
        finally:
            slot.lock.release()

    async def _forget_when_gone(self, process: PiProcess) -> None:
        await process.exited.wait()
        self._processes.discard(process)

    async def _make_room(self) -> None:
        """Before a spawn: stop idle processes (LRU) and wait for retiring ones to be gone.

        Retiring processes count toward ``max_processes`` until they have exited;
        each is gone within ``abort_grace`` plus pi's stop timeout. Busy processes
        are never stopped: when every process runs a turn, the spawn goes ahead.
        """
        while len(self._live()) + self._spawning >= self.settings.max_processes:
            current = [s for s in self.slots() if s.process is not None]
            idle = sorted((s for s in current if s.turn is None), key=lambda s: s.last_activity)
            for slot in idle:
                if await self._stop_if_idle(slot):
                    break
            else:
                attached = {s.process for s in current}
                retiring = [p for p in self._live() if p not in attached]
                if not retiring:
                    return
                await retiring[0].exited.wait()

    def _live(self) -> list[PiProcess]:
        return [p for p in self._processes if not p.exited.is_set()]

    def _enforce_max_processes(self, keep: Slot) -> None:
        live = [s for s in self.slots() if s.process is not None and s is not keep]
        excess = len(live) + 1 - self.settings.max_processes
        if self._spares is not None:  # spares make room first; they never push a session out
            self._spares.give_up(excess + self._spares.size)
        if excess <= 0:
            return
        idle = sorted((s for s in live if s.turn is None), key=lambda s: s.last_activity)
        for slot in idle[:excess]:
            self._tasks.start_soon(self._stop_if_idle, slot)

    async def _idle_loop(self) -> None:
        period = max(1.0, min(60.0, self.settings.idle_timeout / 4))
        while True:
            await anyio.sleep(period)
            try:
                await self.cleanup_idle()
            except Exception:
                log.exception("idle cleanup failed")

    def _notify(self, slot: Slot, change: Change) -> None:
        """Tell the observer, with a frozen copy of the slot's facts (never the slot)."""
        if self._observer is None or not self._is_current(slot):
            return
        facts = SessionFacts(
            key=slot.key,
            session_id=slot.session_id,
            running=slot.turn is not None and slot.state in (SlotState.STARTING, SlotState.RUNNING),
            last_outcome=slot.last_outcome,
            last_error=slot.last_error,
            turns=slot.turns,
        )
        self._observer.session_changed(facts, change)
