"""Wiring: from a validated Config to a running SessionManager with durable state."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
import attrs

from evie.agent.launcher import PiLauncher
from evie.agent.reaper import lock_state_dir, reap
from evie.agent.sandbox import Bubblewrap, SandboxChoice, choose
from evie.config import Config
from evie.errors import ConfigError
from evie.metrics import Metrics
from evie.sessions.manager import SessionManager, SessionSettings
from evie.state import StateStore

log = logging.getLogger(__name__)

#: gen0 threshold once start-up is over (CPython's default is 700); bench/results/gc_policy.json
GEN0_THRESHOLD = 10_000


def settle_gc() -> None:
    """Call once start-up is done: freeze what start-up built, collect young objects less often.

    With aiogram imported the process tracks ~190,000 objects, and a full collection
    walks them all (150-600 ms on a busy 2-core machine): a pause in whatever reply is
    in flight. Everything alive after start-up (modules, pydantic models, aiogram's
    types) lives until exit anyway, so ``gc.freeze()`` moves it out of the collector's
    sight; later collections only walk what turns allocate. ``EVIE_GC=default`` keeps
    CPython's policy, ``EVIE_GC=freeze`` only freezes (the benchmarks compare all three).
    """
    policy = os.environ.get("EVIE_GC", "tuned")
    if policy == "default":
        return
    gc.collect()
    gc.freeze()
    if policy != "freeze":  # "freeze": gc.freeze() alone, for the comparison
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)


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


@asynccontextmanager
async def open_runtime(config: Config) -> AsyncIterator[Runtime]:
    """Load state, start the manager and the state writer; on exit stop pi and flush."""
    metrics = Metrics()
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
