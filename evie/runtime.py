"""Wiring: from a validated Config to a running SessionManager with durable state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
import attrs

from evie.agent.launcher import PiLauncher, missing_cwd
from evie.agent.reaper import lock_state_dir, reap
from evie.config import Config
from evie.errors import ConfigError
from evie.metrics import Metrics
from evie.sessions.manager import SessionManager, SessionSettings
from evie.state import StateStore


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


@asynccontextmanager
async def open_runtime(config: Config) -> AsyncIterator[Runtime]:
    """Load state, start the manager and the state writer; on exit stop pi and flush."""
    metrics = Metrics()
    launcher = build_launcher(config)
    cwd = config.agent.cwd
    if cwd is not None and not await anyio.to_thread.run_sync(cwd.is_dir):
        raise ConfigError(missing_cwd(cwd))
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
                yield Runtime(config, manager, store, metrics)
        finally:
            tg.cancel_scope.cancel()  # the writer flushes on its way out
