"""Wiring: from a validated Config to a running SessionManager with durable state."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
import attrs

from evie.agent.launcher import PiLauncher
from evie.agent.reaper import lock_state_dir, reap
from evie.config import Config
from evie.durable.inbox import Inbox
from evie.durable.outbox import Outbox
from evie.metrics import Metrics
from evie.sessions.manager import SessionManager, SessionSettings
from evie.state import StateStore

log = logging.getLogger(__name__)
PLATFORMS = ("tg", "dc")  # chats whose messages pass through the inbox
RESTART_NOTICE = (
    "ℹ️ evie was restarted while it was answering your message “{text}”; that turn was "
    "interrupted. If no answer arrived, send it again."
)


def build_launcher(config: Config) -> PiLauncher:
    return PiLauncher(
        command=config.pi_command,
        state_dir=config.state.dir,
        agent_dir=config.agent_dir,
        provider=config.agent.provider,
        model=config.agent.model,
        system_prompt=config.agent.system_prompt,
        cwd=config.agent.cwd,
        extra_env=config.agent.env,
        startup_timeout=config.agent.startup_timeout,
    )


def session_settings(config: Config) -> SessionSettings:
    s = config.sessions
    return SessionSettings(
        idle_timeout=s.idle_timeout,
        max_processes=s.max_processes,
        mid_turn=s.mid_turn,
        shutdown_grace=s.shutdown_grace,
    )


@attrs.frozen
class Runtime:
    config: Config
    manager: SessionManager
    store: StateStore
    metrics: Metrics
    inbox: Inbox = attrs.Factory(Inbox)
    outbox: Outbox = attrs.Factory(Outbox)


@asynccontextmanager
async def open_runtime(config: Config) -> AsyncIterator[Runtime]:
    """Load state, start the manager and the state writer; on exit stop pi and flush."""
    metrics = Metrics()
    launcher = build_launcher(config)
    lock = await anyio.to_thread.run_sync(lock_state_dir, config.state.dir)
    try:
        await anyio.to_thread.run_sync(reap, launcher.owner)
        async with _serve(config, launcher, metrics) as runtime:
            yield runtime
    finally:
        # pi is stopped by now; anything still carrying our marker escaped its parent
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(reap, launcher.owner)
        lock.close()


@asynccontextmanager
async def _serve(config: Config, launcher: PiLauncher, metrics: Metrics) -> AsyncIterator[Runtime]:
    store = StateStore(config.state.dir / "state.json", metrics=metrics)
    records = await anyio.to_thread.run_sync(store.load)
    known = {key: record.session_id for key, record in records.items()}
    inbox = Inbox(config.state.dir / "inbox.json")
    outbox = Outbox(config.state.dir / "outbox", max_per_chat=config.delivery.max_per_chat)
    await anyio.to_thread.run_sync(inbox.load)
    await anyio.to_thread.run_sync(outbox.load)
    if outbox.uncertain:
        log.warning(
            "re-sending %d repl%s whose delivery was cut off when evie stopped "
            "(the platform may already have it: it can arrive twice)",
            outbox.uncertain,
            "y" if outbox.uncertain == 1 else "ies",
        )
    await _tell_interrupted(inbox, outbox, store)
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.run)
        try:
            async with SessionManager(
                launcher,
                session_settings(config),
                metrics=metrics,
                observer=store,
                known_sessions=known,
            ) as manager:
                yield Runtime(config, manager, store, metrics, inbox, outbox)
        finally:
            tg.cancel_scope.cancel()  # the writer flushes on its way out


async def _tell_interrupted(inbox: Inbox, outbox: Outbox, store: StateStore) -> None:
    """Messages whose turn had begun when evie died are not run again; their chats are told.

    A chat whose running turn the state file recorded already gets that notice.
    The notices are in the outbox on disk before the items leave the inbox.
    A chat's state notice with no started inbox item behind it is dropped: its turn
    did finish (the item leaves the inbox only after the turn's replies are in the
    outbox); only the state file's record of that came too late.
    """
    started = {item.chat for item in inbox.interrupted}
    for key in store.pending_notices():
        if inbox.existed and key.split(":", 1)[0] in PLATFORMS and key not in started:
            store.take_notice(key)
    if not inbox.interrupted:
        return
    told = set(store.pending_notices())
    for item in inbox.interrupted:
        if item.chat not in told:
            text = item.text if len(item.text) <= 60 else item.text[:59] + "…"
            outbox.put(item.chat, RESTART_NOTICE.format(text=text))
    await outbox.commit()
    inbox.forget_interrupted()
    await inbox.commit()
