"""``evie run``: every configured platform over one runtime, with graceful shutdown.

Signal handling is installed before anything else starts, so a SIGTERM or
SIGINT at any moment (even while a platform is still connecting) starts the
shutdown timeline of :mod:`evie.shutdown`; a second signal exits at once. A
platform that ends by itself (the terminal at end of input) stops evie the same
way.

Each platform supervises its own intake (adr/0011): ``run`` reports started at
once, so start-up never waits for a network, and a platform that fails for good
(a refused token) stops alone. When every platform has given up (and there is
no terminal), evie stops through the same timeline and exits with that one line.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import TypedDict

import anyio
import anyio.abc
import attrs

from evie.chat.backoff import Backoff
from evie.chat.courier import CourierSettings
from evie.chat.frontend import ChatFrontend
from evie.chat.render import SWITCH_INTERVAL, render_process
from evie.config import Config
from evie.durable.inbox import Inbox
from evie.durable.outbox import Outbox
from evie.errors import ConfigError
from evie.gc_policy import pause_gc, settle_gc
from evie.platforms.contract import Platform, PlatformHealth
from evie.runtime import Runtime, open_runtime
from evie.shutdown import Grace, shut_down

log = logging.getLogger(__name__)

#: seconds the platforms get, after pi is stopped, to post the last lines and return
DELIVERY_GRACE = 10.0
#: the longest start-up waits for the platforms' first poll before warming up anyway
WARM_UP_WAIT = 10.0


class _PlatformWiring(TypedDict):
    """What every chat platform is built with, whichever it is."""

    backoff: Backoff
    max_chunks: int
    inbox: Inbox
    outbox: Outbox
    courier: CourierSettings


async def build_platforms(runtime: Runtime, *, terminal: bool = False) -> list[Platform]:
    config = runtime.config
    platforms: list[Platform] = []
    for name, section in (("telegram", config.telegram), ("discord", config.discord)):
        if section.token and not section.allowed_user_ids:
            log.warning(
                "[%s] allowed_user_ids is empty: everyone is refused; run `evie setup` "
                "or add your user id (the refusal log line shows it)",
                name,
            )
    d = config.delivery
    shared = _PlatformWiring(
        backoff=Backoff(base=config.platforms.retry_base, cap=config.platforms.retry_cap),
        max_chunks=d.max_chunks,
        inbox=runtime.inbox,
        outbox=runtime.outbox,
        courier=CourierSettings(d.max_age, d.late_after, d.retry_base, d.retry_max),
    )
    if config.telegram.token:
        from evie.platforms.telegram import TelegramInterface

        platforms.append(TelegramInterface(runtime.manager, config.telegram, **shared))
    if config.discord.token:
        from evie.platforms.discord import DiscordInterface

        platforms.append(
            DiscordInterface(
                runtime.manager,
                config.discord,
                liveness_interval=config.platforms.heartbeat_check,
                **shared,
            )
        )
    if terminal:
        from evie.repl import terminal_chat

        platforms.append(await terminal_chat(runtime))
    return platforms


@attrs.define
class StopRequest:
    """Set once, by the first signal or by a platform that ended; says why.

    ``failure`` is set when the stop is evie giving up (every platform refused
    for good): ``run_daemon`` raises it once the timeline has run.
    """

    event: anyio.Event = attrs.Factory(anyio.Event)
    reason: str = ""
    failure: str | None = None

    def request(self, reason: str, *, failure: str | None = None) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.failure = failure
            self.event.set()


async def run_daemon(
    config: Config,
    *,
    terminal: bool = False,
    on_ready: Callable[[Runtime], Awaitable[None]] | None = None,
) -> None:
    if not config.telegram.token and not config.discord.token and not terminal:
        raise ConfigError(
            "nothing to run: set [telegram] or [discord] token (or EVIE_TELEGRAM_TOKEN / "
            "EVIE_DISCORD_TOKEN), or use `evie chat` for the terminal"
        )
    sys.setswitchinterval(SWITCH_INTERVAL)  # worker threads yield to the loop quickly
    paused = pause_gc()  # until the platforms poll (_warm_up_later settles it)
    stop = StopRequest()
    try:
        # first, so that a signal during start-up is already a graceful stop
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as watcher:
                watcher.start_soon(_watch_signals, signals, stop)
                try:
                    await _serve(config, stop, terminal=terminal, on_ready=on_ready)
                finally:
                    watcher.cancel_scope.cancel()
    finally:
        if paused:
            gc.enable()  # stopped before the warm-up: never leave the collector off
    if stop.failure is not None:
        raise ConfigError(stop.failure)
    log.info("evie stopped")


async def _watch_signals(signals: AsyncIterator[signal.Signals], stop: StopRequest) -> None:
    first = True
    async for signum in signals:
        if first:
            first = False
            stop.request(f"received {signum.name}")
        else:
            log.error("received %s again: exiting now", signum.name)
            os._exit(130)


async def _serve(
    config: Config,
    stop: StopRequest,
    *,
    terminal: bool,
    on_ready: Callable[[Runtime], Awaitable[None]] | None,
) -> None:
    # pi's spare and the render worker boot only once the platforms poll (_warm_up_later)
    async with open_runtime(config, hold_spares=True) as runtime, AsyncExitStack() as stack:
        platforms = await build_platforms(runtime, terminal=terminal)

        def health() -> list[PlatformHealth]:
            return [platform.health() for platform in platforms]

        if config.http.listen:
            from evie.http import serve_http  # aiohttp's server: only when configured

            port = await stack.enter_async_context(
                serve_http(
                    config.http.listen,
                    runtime.manager,
                    runtime.metrics,
                    token=config.http.token,
                    platforms=health,
                    stall_after=config.http.stall_after,
                    max_loop_lag=config.http.max_loop_lag,
                )
            )
            log.info("http: /healthz and /metrics on port %d", port)
        grace = Grace(
            shutdown=config.sessions.shutdown_grace,
            abort=config.sessions.abort_grace,
            delivery=DELIVERY_GRACE,
        )
        async with anyio.create_task_group() as ticker:
            ticker.start_soon(runtime.metrics.loop_lag.watch)
            ticker.start_soon(_warm_up_later, runtime, platforms)
            await _serve_platforms(runtime, platforms, stop, grace, on_ready)
            ticker.cancel_scope.cancel()


async def _warm_up_later(runtime: Runtime, platforms: Sequence[Platform]) -> None:
    """Once every platform polls: settle the gc, boot the spare pi and the render worker.

    Both are processes that boot for about a second of CPU each; started before the
    first poll they compete with evie's own start-up for a small machine's cores
    (adr/0016). Until then very big replies render in a thread, as without a worker,
    and a new session starts pi cold. A platform that cannot connect delays this at
    most ``WARM_UP_WAIT`` seconds.
    """
    with anyio.move_on_after(WARM_UP_WAIT):
        while not all(_polling(platform.health()) for platform in platforms):  # noqa: ASYNC110
            await anyio.sleep(0.02)
    settle_gc()
    runtime.manager.release_spares()
    async with render_process():  # very big replies render there
        await anyio.sleep_forever()


def _polling(health: PlatformHealth) -> bool:
    """Has this platform heard from its service once (or has it nothing to hear from)?"""
    return health.state in ("up", "down") or health.seconds_since_ok is not None


async def _serve_platforms(
    runtime: Runtime,
    platforms: Sequence[Platform],
    stop: StopRequest,
    grace: Grace,
    on_ready: Callable[[Runtime], Awaitable[None]] | None,
) -> None:
    """Start every platform, serve until a stop is requested, then run the timeline."""
    returned = _Countdown(len(platforms))
    starting = anyio.CancelScope()
    async with anyio.create_task_group() as serving:

        async def stop_when_asked() -> None:
            await stop.event.wait()
            log.info("%s: stopping", stop.reason)
            starting.cancel()  # a platform still connecting has taken nothing in
            await shut_down(runtime.manager, platforms, grace, returned.event)
            serving.cancel_scope.cancel()  # only what overran the timeline is left

        serving.start_soon(stop_when_asked)
        with starting:
            for platform in platforms:
                # returns at once: a platform connects under its supervisor (adr/0011)
                await serving.start(_run_platform, platform, platforms, stop, returned)
                frontend = getattr(platform, "frontend", None)
                if isinstance(frontend, ChatFrontend):
                    frontend.status_footer = lambda: _platform_lines(platforms)
        if starting.cancel_called:
            return
        log.info("evie is running (%s)", ", ".join(p.name for p in platforms))
        serving.start_soon(_announce_notices, runtime, platforms)
        if on_ready is not None:
            await on_ready(runtime)


async def _run_platform(
    platform: Platform,
    platforms: Sequence[Platform],
    stop: StopRequest,
    returned: _Countdown,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    try:
        await platform.run(task_status=task_status)
        if not platform.health().gave_up:
            stop.request(f"{platform.name} ended")  # no-op when it ended because of the stop
            return
        # refused for good (logged by its supervisor): the others carry on, if any is left
        gave_up = [p.health() for p in platforms]
        if all(h.gave_up for h in gave_up):
            failure = "no platform is left running: " + "; ".join(
                f"{h.name}: {h.detail}" for h in gave_up
            )
            stop.request("every platform gave up", failure=failure)
    finally:
        returned.one_done()


def _platform_lines(platforms: Sequence[Platform]) -> str:
    """The platforms' state under ``/status`` in chats."""
    return "Platforms: " + "; ".join(p.health().summary() for p in platforms)


@attrs.define
class _Countdown:
    left: int
    event: anyio.Event = attrs.Factory(anyio.Event)

    def __attrs_post_init__(self) -> None:
        if self.left <= 0:
            self.event.set()

    def one_done(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.event.set()


async def _announce_notices(runtime: Runtime, platforms: Sequence[Platform]) -> None:
    """Tell each chat whose turn a restart interrupted, without waiting for it to write."""
    keys = list(runtime.store.pending_notices())
    for platform in platforms:
        await platform.announce(keys, runtime.store.take_notice)
