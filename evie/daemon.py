"""``evie run``: every configured interface over one runtime, with graceful shutdown.

SIGTERM or SIGINT stops intake (no new updates are fetched), lets running turns
finish for ``[sessions] shutdown_grace`` seconds, then aborts what is left;
the runtime then stops every pi process and flushes state. A second signal
exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.abc

from evie.chat.frontend import ChatFrontend
from evie.config import Config
from evie.errors import ConfigError
from evie.http import serve_http
from evie.runtime import Runtime, build_launcher, open_runtime

if TYPE_CHECKING:
    from evie.platforms.terminal import TerminalChat

log = logging.getLogger(__name__)


class Interface(Protocol):
    frontend: ChatFrontend | None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = ...) -> None: ...

    async def stop_intake(self) -> None: ...


def build_interfaces(runtime: Runtime) -> list[Interface]:
    config = runtime.config
    interfaces: list[Interface] = []
    for name, section in (("telegram", config.telegram), ("discord", config.discord)):
        if section.token and not section.allowed_user_ids:
            log.warning(
                "[%s] allowed_user_ids is empty: everyone is refused; run `evie setup` "
                "or add your user id (the refusal log line shows it)",
                name,
            )
    if config.telegram.token:
        from evie.platforms.telegram import TelegramInterface

        interfaces.append(TelegramInterface(runtime.manager, config.telegram))
    if config.discord.token:
        from evie.platforms.discord import DiscordInterface

        interfaces.append(DiscordInterface(runtime.manager, config.discord))
    return interfaces


async def run_daemon(
    config: Config,
    *,
    terminal: bool = False,
    on_ready: Callable[[Runtime], Awaitable[None]] | None = None,
) -> None:
    async with open_runtime(config) as runtime, AsyncExitStack() as stack:
        interfaces = build_interfaces(runtime)
        if not interfaces and not terminal:
            raise ConfigError(
                "nothing to run: set [telegram] or [discord] token (or EVIE_TELEGRAM_TOKEN / "
                "EVIE_DISCORD_TOKEN), or use `evie chat` for the terminal"
            )
        if config.http.listen:
            port = await stack.enter_async_context(
                serve_http(config.http.listen, runtime.manager, runtime.metrics)
            )
            log.info("http: /healthz and /metrics on port %d", port)
        async with anyio.create_task_group() as tg:
            serving = anyio.create_task_group()
            async with serving:
                for interface in interfaces:
                    await serving.start(interface.run)
                serving.start_soon(_announce_notices, runtime, interfaces)
                if terminal:
                    serving.start_soon(_terminal, runtime, serving)
                tg.start_soon(_on_signals, runtime, interfaces, serving)
                log.info("evie is running (%d interface(s))", len(interfaces))
                if on_ready is not None:
                    await on_ready(runtime)
            tg.cancel_scope.cancel()
    log.info("evie stopped")


async def _announce_notices(runtime: Runtime, interfaces: list[Interface]) -> None:
    """Tell each chat whose turn a restart interrupted, without waiting for it to write."""
    keys = list(runtime.store.pending_notices())
    for interface in interfaces:
        if interface.frontend is not None:
            await interface.frontend.announce(keys, runtime.store.take_notice)


async def _terminal(runtime: Runtime, serving: anyio.abc.TaskGroup) -> None:
    await (await terminal_chat(runtime)).run()
    serving.cancel_scope.cancel()


async def terminal_chat(runtime: Runtime) -> TerminalChat:
    """The terminal chat with its banner: model, working dir, and whether it resumes."""
    from evie.agent.session_file import read_summary
    from evie.platforms.terminal import TerminalChat
    from evie.platforms.terminal_render import banner, describe_session

    config = runtime.config
    key = "terminal"
    session_id = runtime.manager.known_session(key)
    summary = None
    if session_id is not None:
        path = build_launcher(config).session_file(session_id)
        summary = await anyio.to_thread.run_sync(read_summary, path)
    workdir = config.agent.cwd
    if workdir is None:
        workdir = config.state.dir / "work" / (session_id or "<new session>")
    agent = config.agent
    model = f"{agent.provider or 'default'}/{agent.model or 'default'}"
    if not agent.provider and not agent.model:
        model = "pi's default (`evie doctor` shows it)"
    notices = [runtime.store.take_notice(key)]
    if summary is not None and summary.cwd is not None and summary.cwd != workdir.resolve():
        notices.append(
            f"this conversation was started in {summary.cwd} and pi resumes it there; "
            f"/new starts one in {workdir}"
        )
    return TerminalChat(
        runtime.manager,
        key=key,
        notice="\n".join(n for n in notices if n) or None,
        banner=banner(
            model=model,
            workdir=str(workdir),
            session=describe_session(session_id, summary.turns if summary else None),
        ),
        workdir=workdir,
        history_path=config.state.dir / "terminal_history",
    )


async def _on_signals(
    runtime: Runtime, interfaces: list[Interface], serving: anyio.abc.TaskGroup
) -> None:
    settings = runtime.manager.settings
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info(
                "received %s: finishing running turns (up to %gs)",
                signum.name,
                settings.shutdown_grace,
            )
            break
        else:
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(_force_on_second_signal, signals)
            for interface in interfaces:
                await interface.stop_intake()
            await anyio.sleep(settings.shutdown_grace)
            # still running: abort, so each chat is told its turn was stopped
            log.warning(
                "grace period over: aborting %d running turn(s)", runtime.manager.abort_all()
            )
            await anyio.sleep(settings.abort_grace)
            serving.cancel_scope.cancel()


async def _force_on_second_signal(signals: AsyncIterator[signal.Signals]) -> None:
    async for signum in signals:
        log.error("received %s again: exiting now", signum.name)
        os._exit(130)
