"""``evie run``: every configured platform over one runtime, with graceful shutdown.

Signal handling is installed before anything else starts, so a SIGTERM or
SIGINT at any moment (even while a platform is still connecting) starts the
shutdown timeline of :mod:`evie.shutdown`; a second signal exits at once. A
platform that ends by itself (the terminal at end of input) stops evie the same
way. Platforms still connecting when the stop comes are abandoned: they have
taken nothing in.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack

import anyio
import anyio.abc
import attrs

from evie.chat.render import SWITCH_INTERVAL, render_process
from evie.config import Config
from evie.errors import ConfigError
from evie.http import serve_http
from evie.platforms.contract import Platform
from evie.runtime import Runtime, open_runtime
from evie.shutdown import Grace, shut_down

log = logging.getLogger(__name__)

#: seconds the platforms get, after pi is stopped, to post the last lines and return
DELIVERY_GRACE = 10.0


def build_platforms(runtime: Runtime, *, terminal: bool = False) -> list[Platform]:
    config = runtime.config
    platforms: list[Platform] = []
    if config.telegram.token:
        from evie.platforms.telegram import TelegramInterface

        platforms.append(
            TelegramInterface(
                runtime.manager, config.telegram, max_chunks=config.delivery.max_chunks
            )
        )
    if config.discord.token:
        from evie.platforms.discord import DiscordInterface

        platforms.append(
            DiscordInterface(runtime.manager, config.discord, max_chunks=config.delivery.max_chunks)
        )
    if terminal:
        from evie.platforms.terminal import TerminalChat

        platforms.append(TerminalChat(runtime.manager))
    return platforms


@attrs.define
class StopRequest:
    """Set once, by the first signal or by a platform that ended; says why."""

    event: anyio.Event = attrs.Factory(anyio.Event)
    reason: str = ""

    def request(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
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
    stop = StopRequest()
    # first, so that a signal during start-up is already a graceful stop
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as watcher:
            watcher.start_soon(_watch_signals, signals, stop)
            try:
                await _serve(config, stop, terminal=terminal, on_ready=on_ready)
            finally:
                watcher.cancel_scope.cancel()
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
    async with open_runtime(config) as runtime, AsyncExitStack() as stack:
        await stack.enter_async_context(render_process())  # very big replies render there
        platforms = build_platforms(runtime, terminal=terminal)
        if config.http.listen:
            port = await stack.enter_async_context(
                serve_http(
                    config.http.listen, runtime.manager, runtime.metrics, token=config.http.token
                )
            )
            log.info("http: /healthz and /metrics on port %d", port)
        grace = Grace(
            shutdown=config.sessions.shutdown_grace,
            abort=config.sessions.abort_grace,
            delivery=DELIVERY_GRACE,
        )
        await _serve_platforms(runtime, platforms, stop, grace, on_ready)


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
                await serving.start(_run_platform, platform, stop, returned)
        if starting.cancel_called:
            return
        log.info("evie is running (%s)", ", ".join(p.name for p in platforms))
        serving.start_soon(_announce_notices, runtime, platforms)
        if on_ready is not None:
            await on_ready(runtime)


async def _run_platform(
    platform: Platform,
    stop: StopRequest,
    returned: _Countdown,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    try:
        await platform.run(task_status=task_status)
        stop.request(f"{platform.name} ended")  # no-op when it ended because of the stop
    finally:
        returned.one_done()


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
