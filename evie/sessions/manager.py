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
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

import anyio
import anyio.abc
import anyio.to_thread
import attrs

from evie.agent.events import Notice, Outcome, Prompt, TurnEvent, TurnFinished
from evie.agent.process import LaunchSpec, PiProcess
from evie.errors import AgentCrashed, AgentError, AgentStartError, SessionReplaced
from evie.logs import chat_var, session_var
from evie.metrics import Metrics
from evie.sessions.guard import BriefGuard
from evie.sessions.slot import Slot, SlotState, SlotStatus, mint_session_id

log = logging.getLogger(__name__)

EventSink = Callable[[TurnEvent], Awaitable[None]]
StartHook = Callable[[], Awaitable[None]]


class Launcher(Protocol):
    """Knows how to start pi for a given session id."""

    def spec_for(self, session_id: str) -> LaunchSpec: ...


class SessionObserver(Protocol):
    """Told about changes worth persisting (adr/0006); called synchronously."""

    def session_changed(self, slot: Slot, *, terminal: bool) -> None: ...

    def take_notice(self, key: str) -> str | None:
        """A message to show once before this chat's next turn, if any."""
        ...


@attrs.frozen
class SessionSettings:
    idle_timeout: float = 1800.0
    max_processes: int = 8
    mid_turn: Literal["follow_up", "steer"] = "follow_up"
    abort_grace: float = 10.0  # how long an aborted turn may take to wind down
    shutdown_grace: float = 30.0  # how long running turns may finish at shutdown


@attrs.frozen
class Queued:
    """The message was queued into the running turn; its answer arrives there."""

    position: int
    steer: bool


SendResult = Queued | TurnFinished


class SessionManager:
    def __init__(
        self,
        launcher: Launcher,
        settings: SessionSettings | None = None,
        *,
        metrics: Metrics | None = None,
        observer: SessionObserver | None = None,
        known_sessions: dict[str, str] | None = None,
    ) -> None:
        self._launcher = launcher
        self.settings = settings or SessionSettings()
        self.metrics = metrics or Metrics()
        self._observer = observer
        self._known = dict(known_sessions or {})  # key -> session id, from persisted state
        self._slots: dict[str, Slot] = {}
        self._guard = BriefGuard(self.metrics)
        self._tg: anyio.abc.TaskGroup | None = None
        self._accepting = True

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> SessionManager:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._idle_loop)
        return self

    async def __aexit__(self, *exc_info: object) -> bool | None:
        assert self._tg is not None
        try:
            await self.shutdown()
        finally:
            self._tg.cancel_scope.cancel()
            result = await self._tg.__aexit__(*exc_info)  # type: ignore[arg-type]
        return result

    @property
    def _tasks(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise RuntimeError("use the SessionManager as `async with SessionManager(...)`")
        return self._tg

    async def shutdown(self) -> None:
        """Stop intake, let running turns finish (up to the grace), then stop pi."""
        self._accepting = False
        slots = self.slots()
        if not await self._wait_for_turns(slots, self.settings.shutdown_grace):
            self.abort_all()
            await self._wait_for_turns(slots, self.settings.abort_grace)
        async with anyio.create_task_group() as tg:
            for slot in slots:
                tg.start_soon(self._stop_slot, slot)

    @staticmethod
    async def _wait_for_turns(slots: list[Slot], seconds: float) -> bool:
        with anyio.move_on_after(seconds):
            for slot in slots:
                async with slot.lock:
                    pass
            return True
        return False

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
                session_id = self._known.pop(key, None) or mint_session_id()
                slot = self._slots[key] = Slot(key, session_id)
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

    def all_status(self) -> list[SlotStatus]:
        return [slot.snapshot() for slot in self.slots()]

    async def session_stats(self, key: str, seconds: float = 2.0) -> dict[str, object] | None:
        """Token and cost figures from pi, if a process is alive; bounded in time."""
        slot = self._lookup(key)
        process = slot.process if slot is not None else None
        if process is None or not process.alive:
            return None
        with anyio.move_on_after(seconds):
            try:
                data = await process.call({"type": "get_session_stats"})
            except AgentError:
                return None
            return data if isinstance(data, dict) else None
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
            raise SessionReplaced("evie is shutting down; send your message again in a moment")
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
        self._notify(slot, terminal=True)  # "running" must reach disk before a crash can
        try:
            async for event in turn:
                slot.last_activity = time.monotonic()
                await on_event(event)
        finally:
            with anyio.CancelScope(shield=True):
                await self._wind_down(slot, process)
        assert turn.finished is not None
        return turn.finished

    async def _start_process(self, slot: Slot) -> PiProcess | None:
        """Spawn under the slot's lock (the guard is not held)."""
        slot.state = SlotState.STARTING
        started = time.perf_counter()
        try:
            try:
                spec = await anyio.to_thread.run_sync(self._launcher.spec_for, slot.session_id)
            except OSError as exc:
                raise AgentStartError(
                    f"could not prepare the session's files: {exc}. Check [state] dir."
                ) from exc
            process = await PiProcess.spawn(spec, self._tasks)
        except AgentStartError as exc:
            log.error("pi failed to start: %s", exc)
            self.metrics.spawn_failures += 1
            slot.state = SlotState.CRASHED
            slot.last_outcome = Outcome.FAILED
            slot.last_error = str(exc)
            self._notify(slot, terminal=True)
            return None
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
        self._notify(slot, terminal=True)

    # -- commands ----------------------------------------------------------------------

    async def abort(self, key: str) -> bool:
        """Stop the running turn in this chat; False when nothing was running."""
        slot = self._lookup(key)
        if slot is None or slot.turn is None or slot.process is None:
            return False
        slot.process.abort()
        return True

    def abort_all(self) -> int:
        """Ask every running turn to stop (shutdown); returns how many were running."""
        running = [s for s in self.slots() if s.turn is not None and s.process is not None]
        for slot in running:
            assert slot.process is not None
            slot.process.abort()
        return len(running)

    async def new_session(self, key: str) -> Slot:
        """Start over with a fresh session; a running turn in the old one is aborted."""

        def replace() -> tuple[Slot | None, Slot]:
            old = self._slots.get(key)
            new = self._slots[key] = Slot(key, mint_session_id())
            if old is not None:
                old.retired = True
            return old, new

        old, new = self._guard.run(replace)
        self._notify(new, terminal=True)
        if old is not None:
            self._tasks.start_soon(self._retire, old)
        return new

    async def _retire(self, slot: Slot) -> None:
        if slot.process is not None and slot.turn is not None:
            slot.process.abort()
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
            slot.process = None
            await process.close()
            if slot.state is SlotState.CRASHED:
                slot.state = SlotState.IDLE
            return True
        finally:
            slot.lock.release()

    def _enforce_max_processes(self, keep: Slot) -> None:
        live = [s for s in self.slots() if s.process is not None and s is not keep]
        excess = len(live) + 1 - self.settings.max_processes
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

    def _notify(self, slot: Slot, *, terminal: bool) -> None:
        if self._observer is None or not self._is_current(slot):
            return
        self._observer.session_changed(slot, terminal=terminal)
