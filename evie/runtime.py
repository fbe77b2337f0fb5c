"""Wiring: from a validated Config to a running SessionManager with durable state."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
import attrs

from evie.agent.launcher import PiLauncher, missing_cwd
from evie.agent.reaper import lock_state_dir, reap
from evie.agent.sandbox import Bubblewrap, SandboxChoice, choose
from evie.config import Config
from evie.durable.inbox import Inbox
from evie.durable.outbox import Outbox
from evie.errors import ConfigError
from evie.metrics import Metrics
from evie.sessions.manager import SessionManager, SessionSettings
from evie.state import StateStore

log = logging.getLogger(__name__)
PLATFORMS = ("tg", "dc")  # chats whose messages pass through the inbox
RESTART_NOTICE = (
    "ℹ️ evie was stopped while it was answering your message “{text}”; that turn was "
    "interrupted and is not run again. The conversation so far is kept — send it again "
    "if needed."
)


def build_launcher(config: Config, sandbox: Bubblewrap | None = None) -> PiLauncher:
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
        sandbox=sandbox,
        secret_files=(config.source,) if config.source is not None else (),
        max_line_bytes=config.agent.max_line_bytes,
        warm_up=config.agent.warm_up,
    )


def choose_sandbox(config: Config) -> SandboxChoice:
    """``[agent] sandbox`` resolved by probing bubblewrap; ``bwrap`` that fails is an error."""
    choice = choose(config.agent.sandbox)
    if config.agent.sandbox == "bwrap" and choice.bwrap is None:
        raise ConfigError(
            f'[agent] sandbox = "bwrap" but the sandbox is {choice.note}; '
            'install bubblewrap or set sandbox = "auto"'
        )
    return choice


def session_settings(config: Config) -> SessionSettings:
    return attrs.evolve(
        SessionSettings.from_config(config.sessions),
        max_turn_seconds=config.agent.max_turn_seconds,
        stall_timeout=config.agent.stall_timeout,
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
async def open_runtime(config: Config, *, hold_spares: bool = False) -> AsyncIterator[Runtime]:
    """Load state, start the manager and the state writer; on exit stop pi and flush.

    ``hold_spares``: boot no warm spare until ``runtime.manager.release_spares()``.
    """
    metrics = Metrics()
    cwd = config.agent.cwd
    if cwd is not None and not await anyio.to_thread.run_sync(cwd.is_dir):
        raise ConfigError(missing_cwd(cwd))
    choice = await anyio.to_thread.run_sync(choose_sandbox, config)
    if choice.bwrap is None:
        log.warning(
            "sandbox %s: pi's tools can read what your user can, evie's config included "
            "(see README, Security)",
            choice.note,
        )
    else:
        log.info("sandbox: %s", choice.note)
    launcher = build_launcher(config, choice.bwrap)
    lock = await anyio.to_thread.run_sync(lock_state_dir, config.state.dir)
    try:
        await anyio.to_thread.run_sync(reap, launcher.owner)
        async with _serve(config, launcher, metrics, hold_spares) as runtime:
            yield runtime
    finally:
        # pi is stopped by now; anything still carrying our marker escaped its parent
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(reap, launcher.owner)
        lock.close()


@asynccontextmanager
async def _serve(
    config: Config, launcher: PiLauncher, metrics: Metrics, hold_spares: bool
) -> AsyncIterator[Runtime]:
    starts = tuple(f"{platform}:" for platform in PLATFORMS)  # the inbox records them
    store = StateStore(config.state.dir / "state.json", metrics=metrics, starts_recorded_by=starts)
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
                hold_spares=hold_spares,
            ) as manager:
                yield Runtime(config, manager, store, metrics, inbox, outbox)
        finally:
            tg.cancel_scope.cancel()  # the writer flushes on its way out
            inbox.close()


async def _tell_interrupted(inbox: Inbox, outbox: Outbox, store: StateStore) -> None:
    """Messages whose turn had begun when evie died are not run again; their chats are told.

    One notice per such message, quoting it (a running turn and a follow-up pi had
    started are two lost answers). For chats that pass through the inbox these replace
    the state file's generic notice, which is dropped — also when no started item is
    behind it: that turn did finish (its item leaves the inbox only once its replies are
    in the outbox); only the state file's record of that came too late. The notices
    are in the outbox on disk before the items leave the inbox.
    """
    if inbox.existed:
        for key in store.pending_notices():
            if key.split(":", 1)[0] in PLATFORMS:
                store.take_notice(key)
    if not inbox.interrupted:
        return
    for item in inbox.interrupted:
        text = item.text if len(item.text) <= 60 else item.text[:59] + "…"
        outbox.put(item.chat, RESTART_NOTICE.format(text=text))
    await outbox.commit()
    inbox.forget_interrupted()
    await inbox.commit()
