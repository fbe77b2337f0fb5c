"""Telegram front end on aiogram 3 (long polling).

The adapter only translates: aiogram updates into :class:`Incoming`, and the
:class:`Transport` calls into Bot API methods with aiogram's exceptions mapped
to the shared delivery errors. evie runs its own ``getUpdates`` loop and feeds
the dispatcher (aiogram's ``start_polling`` leaves its polling task running
when cancelled, adr/0007); each message is then handled in a task of evie's
own task group, so every task has an owner and polling never waits for a turn.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import anyio
import anyio.abc

# isort: off
import evie.platforms.aiogram_lazy  # noqa: F401  (first: aiogram's types are built on first use)

# isort: on
import attrs
from aiogram import Bot, Dispatcher, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.methods import (
    DeleteWebhook,
    EditMessageText,
    GetFile,
    GetMe,
    GetUpdates,
    SendChatAction,
    SendMessage,
    SetMyCommands,
)
from aiogram.methods.base import Response
from aiogram.types import BotCommand, LinkPreviewOptions, Message

from evie.agent.events import Image
from evie.chat.commands import CHAT_COMMANDS
from evie.chat.contract import (
    ChatRef,
    FormattingRejected,
    Incoming,
    Permanent,
    RetryLater,
    Sent,
    Transient,
)
from evie.chat.courier import CourierSettings
from evie.chat.frontend import Accepted, ChatFrontend
from evie.chat.streaming import Delivery
from evie.chat.telegram_html import markdown_to_html
from evie.config import TelegramConfig
from evie.durable.inbox import Inbox
from evie.durable.outbox import Outbox
from evie.errors import ConfigError
from evie.platforms.contract import PlatformHealth
from evie.sessions.manager import SessionManager

log = logging.getLogger(__name__)
T = TypeVar("T")
NO_PREVIEW = LinkPreviewOptions(is_disabled=True)

#: aiogram parses every answer as ``Response[<method's result type>]``; pydantic keeps
#: those generic classes only in a weak cache, so each garbage collection dropped them
#: and the next call rebuilt one (20-35 ms of CPU each under load). Holding them here
#: builds each once (bench/results/aiogram_response.json).
RESPONSE_TYPES = tuple(
    Response[m.__returning__]  # type: ignore[name-defined]
    for m in (
        GetUpdates, SendMessage, EditMessageText, SendChatAction, GetMe, DeleteWebhook,
        SetMyCommands, GetFile,
    )
)  # fmt: skip


async def _mapped(op: Callable[[], Awaitable[T]]) -> T | None:
    """Run a Bot API call, translating aiogram's errors into delivery errors."""
    try:
        return await op()
    except TelegramRetryAfter as exc:
        raise RetryLater(float(exc.retry_after)) from None
    except (TelegramServerError, TelegramNetworkError) as exc:
        raise Transient(str(exc)) from None
    except TelegramBadRequest as exc:
        text = exc.message.lower()
        if "message is not modified" in text:
            return None  # what we wanted is already shown
        if "can't parse entities" in text or "can't find end tag" in text:
            raise FormattingRejected(exc.message) from None
        raise Permanent(exc.message) from None
    except TelegramAPIError as exc:
        raise Permanent(exc.message) from None


class TelegramTransport:
    max_length = 4096

    def __init__(self, bot: Bot) -> None:
        self._bot = bot

    def render(self, markdown: str) -> str:
        return markdown_to_html(markdown)

    async def send(self, chat: ChatRef, text: str, *, formatted: bool) -> Sent:
        message = await _mapped(
            lambda: self._bot.send_message(
                chat.chat_id,
                text,
                message_thread_id=chat.thread_id,
                parse_mode="HTML" if formatted else None,
                link_preview_options=NO_PREVIEW,
            )
        )
        if message is None:  # cannot happen for sendMessage; be explicit anyway
            raise Permanent("Telegram returned no message")
        return Sent(message.message_id)

    async def edit(self, chat: ChatRef, message: Sent, text: str, *, formatted: bool) -> None:
        await _mapped(
            lambda: self._bot.edit_message_text(
                text=text,
                chat_id=chat.chat_id,
                message_id=message.message_id,
                parse_mode="HTML" if formatted else None,
                link_preview_options=NO_PREVIEW,
            )
        )

    async def typing(self, chat: ChatRef) -> None:
        await _mapped(
            lambda: self._bot.send_chat_action(
                chat.chat_id, "typing", message_thread_id=chat.thread_id
            )
        )


class TelegramInterface:
    """The Telegram platform (see :mod:`evie.platforms.contract` for the lifecycle)."""

    name = "telegram"

    def __init__(
        self,
        manager: SessionManager,
        config: TelegramConfig,
        *,
        delivery: Delivery | None = None,
        inbox: Inbox | None = None,
        outbox: Outbox | None = None,
        courier: CourierSettings | None = None,
    ) -> None:
        if not config.token:
            raise ConfigError("[telegram] token is not set (or set EVIE_TELEGRAM_TOKEN)")
        self._inbox, self._outbox, self._courier = inbox, outbox, courier
        self._batch: list[Accepted] = []  # messages of the getUpdates answer being read
        self._manager = manager
        self._config = config
        self._delivery = delivery or Delivery()
        self.frontend: ChatFrontend | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._bot_id: int | None = None
        self._poll_scope = anyio.CancelScope()
        self._health = PlatformHealth("starting", detail="connecting")
        self._last_ok: float | None = None  # monotonic time of the last answered getUpdates

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Poll until intake stops, then return once the message handlers have finished."""
        assert self._config.token is not None
        session = AiohttpSession(api=TelegramAPIServer.from_base(self._config.api_url))
        bot = Bot(self._config.token, session=session)
        try:
            me = await self._delivery.run(lambda: _required(_mapped(bot.get_me)))
            self._bot_id = me.id
            self.frontend = ChatFrontend(
                self._manager,
                TelegramTransport(bot),
                allowed_user_ids=self._config.allowed_user_ids,
                delivery=self._delivery,
                edit_interval=self._config.edit_interval,
                bot_username=me.username,
                platform="tg",
                inbox=self._inbox,
                outbox=self._outbox,
                courier=self._courier,
            )
            await self._delivery.run(lambda: _mapped(lambda: bot.delete_webhook()))
            commands = [BotCommand(command=c.name, description=c.summary) for c in CHAT_COMMANDS]
            try:
                await self._delivery.run(lambda: _mapped(lambda: bot.set_my_commands(commands)))
            except Exception as exc:  # the menu is a nicety; never fatal
                log.warning("telegram: could not register commands: %s", exc)
            router = Router()
            router.message.register(self._on_message)
            dispatcher = Dispatcher()
            dispatcher.include_router(router)
            async with anyio.create_task_group() as delivery:
                delivery.start_soon(self.frontend.courier.run)
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    self.frontend.resume(tg)  # before any new message, so order is kept
                    task_status.started()
                    log.info("telegram: polling as @%s", me.username)
                    self._health = PlatformHealth("up", detail=f"polling as @{me.username}")
                    with self._poll_scope:
                        await self._poll(bot, dispatcher)
                    # intake stopped: the task group now waits for messages being handled
                    self._health = PlatformHealth("down", detail="intake stopped")
                # the last lines are in the outbox: deliver them (bounded; what is left
                # stays on disk for the next start), then return (adr/0009 step 6)
                await self.frontend.courier.settle()
                delivery.cancel_scope.cancel()
        finally:
            if self._health.state != "down":
                self._health = PlatformHealth("down", detail="stopped")
            with anyio.CancelScope(shield=True):
                await bot.session.close()

    async def _poll(self, bot: Bot, dispatcher: Dispatcher) -> None:
        """Long-poll getUpdates ourselves, so cancellation stops it (adr/0007).

        A batch's messages are in the inbox on disk, with the next offset, before that
        offset is sent to Telegram (which then forgets them) — adr/0012.
        """
        assert self.frontend is not None
        assert self._tg is not None
        offset = self.frontend.inbox.cursor("tg:offset")
        failures = 0
        while True:
            try:
                updates = await _mapped(
                    functools.partial(
                        bot.get_updates,
                        offset=offset,
                        timeout=self._config.polling_timeout,
                        allowed_updates=["message"],
                        request_timeout=self._config.polling_timeout + 15,
                    )
                )
                failures = 0
                self._last_ok = time.monotonic()
                self._health = PlatformHealth("up", detail="polling")
            except RetryLater as exc:
                self._health = PlatformHealth(
                    "degraded", consecutive_failures=failures, detail=f"getUpdates: {exc}"
                )
                await anyio.sleep(exc.seconds)
                continue
            except Transient as exc:
                failures += 1
                self._health = PlatformHealth(
                    "degraded", consecutive_failures=failures, detail=f"getUpdates failed: {exc}"
                )
                delay = min(30.0, 0.5 * 2 ** min(failures, 6))
                log.warning("telegram: getUpdates failed (%s); retrying in %gs", exc, delay)
                await anyio.sleep(delay)
                continue
            except Permanent as exc:
                raise ConfigError(
                    f"Telegram refused polling: {exc} (check [telegram] token)"
                ) from None
            for update in updates or []:
                offset = update.update_id + 1
                await dispatcher.feed_update(bot, update)
            if updates:
                assert offset is not None
                batch, self._batch = self._batch, []
                self.frontend.inbox.set_cursor("tg:offset", offset)
                await self.frontend.admit(batch, self._tg)

    async def stop_intake(self) -> None:
        """Stop polling for new updates; handlers already running carry on.

        :meth:`run` returns once they have finished (cancel it to cut them short).
        """
        self._poll_scope.cancel()

    async def announce(self, keys: Iterable[str], take: Callable[[str], str | None]) -> int:
        """Post pending notices to the Telegram chats among ``keys``."""
        frontend = self.frontend
        return 0 if frontend is None else await frontend.announce(keys, take)

    def health(self) -> PlatformHealth:
        since = None if self._last_ok is None else time.monotonic() - self._last_ok
        return attrs.evolve(self._health, seconds_since_ok=since)

    async def _on_message(self, message: Message) -> None:
        incoming = self._translate(message)
        if incoming is not None and self.frontend is not None:
            accepted = self.frontend.accept(incoming)
            if accepted is not None:
                self._batch.append(accepted)  # handled once the batch is on disk (_poll)

    def _translate(self, message: Message) -> Incoming | None:
        user = message.from_user
        if user is None or user.is_bot:
            return None
        text = message.text or message.caption or ""
        chat = message.chat
        named = True  # the message names this bot (a bare /cmd in a group does not)
        if chat.type != "private":
            addressed = self._addressed_text(message, text)
            if addressed is None:
                return None  # group chatter not meant for the bot
            named = not text.startswith("/") or "@" in text.split(maxsplit=1)[0]
            text = addressed
        thread = message.message_thread_id if message.is_topic_message else None
        fetch = self._photo_fetcher(message) if message.photo else None
        return Incoming(
            chat=ChatRef("tg", chat.id, thread),
            user_id=user.id,
            text=text,
            message_id=message.message_id,
            fetch_images=fetch,
            addressed=named,
        )

    def _addressed_text(self, message: Message, text: str) -> str | None:
        """In groups: commands, @mentions of the bot and replies to it; mention removed."""
        bot_username = self.frontend.bot_username if self.frontend else None
        if text.startswith("/"):
            return text
        reply = message.reply_to_message
        if reply is not None and reply.from_user is not None and reply.from_user.id == self._bot_id:
            return text
        mention = f"@{bot_username}" if bot_username else None
        entities = message.entities or message.caption_entities or []
        for entity in entities:
            if entity.type == "mention" and mention:
                found = entity.extract_from(text)
                if found.lower() == mention.lower():
                    return (text[: entity.offset] + text[entity.offset + entity.length :]).strip()
        if mention and mention.lower() in text.lower():
            return re.sub(re.escape(mention), "", text, flags=re.IGNORECASE).strip()
        return None

    def _photo_fetcher(self, message: Message) -> Callable[[], Awaitable[tuple[Image, ...]]]:
        photo = max(message.photo or [], key=lambda p: p.width * p.height)
        bot = message.bot

        async def fetch() -> tuple[Image, ...]:
            if bot is None:
                return ()
            buffer = io.BytesIO()
            await self._delivery.run(lambda: _mapped(lambda: bot.download(photo.file_id, buffer)))
            data = base64.b64encode(buffer.getvalue()).decode("ascii")
            return (Image(data=data, mime_type="image/jpeg"),)

        return fetch


async def _required(result: Awaitable[Any]) -> Any:
    value = await result
    if value is None:
        raise Transient("empty answer from Telegram")
    return value
