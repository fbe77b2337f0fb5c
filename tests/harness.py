"""Each chat platform wired to its loopback fake and serving: one place for the wiring.

The tests of Telegram, Discord, the watchdog, the durable inbox/outbox and the
fault suite all need the same thing: a fake, a config pointing the real library
at it, a SessionManager and the interface running in a task group. They differ
only in the settings passed here.
"""

from __future__ import annotations

import io
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import attrs
import discord

from evie.chat.courier import CourierSettings
from evie.chat.streaming import Delivery
from evie.config import DeliveryConfig, DiscordConfig, TelegramConfig
from evie.durable.inbox import Inbox
from evie.durable.outbox import Outbox
from evie.platforms.discord import DiscordInterface
from evie.platforms.telegram import TelegramInterface
from evie.sessions.manager import Launcher, SessionManager, SessionSettings
from tests.fake_discord import TOKEN as DISCORD_TOKEN
from tests.fake_discord import FakeDiscord
from tests.fake_telegram import TOKEN as TELEGRAM_TOKEN
from tests.fake_telegram import FakeTelegram, running_fake_telegram

OWNER = 42  # the one allowed user of every harness
MAX_CHUNKS = DeliveryConfig().max_chunks  # the [delivery] default


def fast_delivery() -> Delivery:
    """Retries a hundred times faster than in production, so faults do not slow tests."""
    return Delivery(base_backoff=0.01)


def telegram_config(
    fake: FakeTelegram, *, edit_interval: float = 0.05, max_upload_mb: int = 50
) -> TelegramConfig:
    return TelegramConfig(
        token=TELEGRAM_TOKEN,
        api_url=fake.base_url,
        allowed_user_ids=frozenset({OWNER}),
        edit_interval=edit_interval,
        polling_timeout=1,
        max_upload_mb=max_upload_mb,
    )


def discord_config(fake: FakeDiscord, *, edit_interval: float = 0.05) -> DiscordConfig:
    return DiscordConfig(
        token=DISCORD_TOKEN,
        api_url=fake.api_url,
        gateway_url=fake.gateway_url,
        allowed_user_ids=frozenset({OWNER}),
        edit_interval=edit_interval,
    )


@contextmanager
def kept_discord_endpoints() -> Iterator[None]:
    """Undo, on the way out, evie pointing discord.py at a fake (it does so process-wide)."""
    base, gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    try:
        yield
    finally:
        discord.http.Route.BASE = base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = gateway


@attrs.define
class TelegramHarness:
    fake: FakeTelegram
    manager: SessionManager
    interface: TelegramInterface

    async def shows(self, chat_id: int, needle: str, thread_id: int | None = None) -> None:
        """Wait until a message in the chat (or forum topic) contains ``needle``."""
        await self.fake.wait_for(
            lambda: any(needle in t for t in self.fake.chat_view(chat_id, thread_id))
        )


@asynccontextmanager
async def serving_telegram(
    launcher: Launcher,
    *,
    settings: SessionSettings | None = None,
    edit_interval: float = 0.05,
    delivery: Delivery | None = None,
    max_chunks: int = MAX_CHUNKS,
    inbox: Inbox | None = None,
    outbox: Outbox | None = None,
    courier: CourierSettings | None = None,
    max_upload_mb: int = 50,
) -> AsyncIterator[TelegramHarness]:
    """A fake Bot API and the real aiogram polling it for evie, until the block ends."""
    async with running_fake_telegram() as fake:
        config = telegram_config(fake, edit_interval=edit_interval, max_upload_mb=max_upload_mb)
        async with SessionManager(launcher, settings or SessionSettings()) as manager:
            interface = TelegramInterface(
                manager,
                config,
                delivery=delivery or fast_delivery(),
                max_chunks=max_chunks,
                inbox=inbox,
                outbox=outbox,
                courier=courier,
            )
            async with anyio.create_task_group() as group:
                await group.start(interface.run)
                yield TelegramHarness(fake, manager, interface)
                group.cancel_scope.cancel()


def discord_interface(
    manager: SessionManager,
    config: DiscordConfig,
    *,
    inbox: Inbox | None = None,
    outbox: Outbox | None = None,
    **options: Any,
) -> DiscordInterface:
    """evie's Discord interface with fast retries and no wait for guilds that never come.

    ``options`` are any other :class:`DiscordInterface` keywords (backoff, liveness_interval).
    """
    return DiscordInterface(
        manager,
        config,
        delivery=fast_delivery(),
        client_options={"guild_ready_timeout": 0.05},
        inbox=inbox,
        outbox=outbox,
        **options,
    )


@attrs.define
class DiscordHarness:
    fake: FakeDiscord
    manager: SessionManager
    interface: DiscordInterface

    async def shows(self, channel: int, needle: str) -> None:
        """Wait until a message in the channel contains ``needle``."""
        await self.fake.wait_for(lambda: any(needle in t for t in self.fake.channel_view(channel)))


@asynccontextmanager
async def serving_discord(
    launcher: Launcher,
    fake: FakeDiscord,
    *,
    edit_interval: float = 0.05,
    inbox: Inbox | None = None,
    outbox: Outbox | None = None,
    connect_within: float = 10,
) -> AsyncIterator[DiscordHarness]:
    """The real discord.py connected to ``fake`` for evie, until the block ends."""
    with kept_discord_endpoints():
        config = discord_config(fake, edit_interval=edit_interval)
        async with SessionManager(launcher) as manager:
            interface = discord_interface(manager, config, inbox=inbox, outbox=outbox)
            async with anyio.create_task_group() as group:
                with anyio.fail_after(connect_within):
                    await group.start(interface.run)  # reports started at once
                    await interface.wait_connected()
                yield DiscordHarness(fake, manager, interface)
                group.cancel_scope.cancel()


class Screen(io.StringIO):
    """A terminal's stdout stand-in (a TextIO, as TerminalChat takes), safe to write from a
    thread, that a test can wait on."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            return super().write(text)

    @property
    def text(self) -> str:
        with self._lock:
            return self.getvalue()

    async def wait_for(self, needle: str, seconds: float = 30) -> None:
        with anyio.fail_after(seconds):
            while needle not in self.text:
                await anyio.sleep(0.01)


async def kill_and_close(proc: anyio.abc.Process) -> None:
    """SIGKILL ``proc`` if it still runs, reap it and close its pipes now, while the loop
    lives: a pipe transport left to the garbage collector closes itself on a dead loop."""
    if proc.returncode is None:
        proc.kill()
    with anyio.CancelScope(shield=True):
        await proc.aclose()
