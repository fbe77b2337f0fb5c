"""Telegram front end on aiogram 3 (long polling).

The adapter only translates: aiogram updates into :class:`Incoming`, and the
:class:`Transport` calls into Bot API methods with aiogram's exceptions mapped
to the shared delivery errors. evie runs its own ``getUpdates`` loop
(aiogram's ``start_polling`` leaves its polling task running when cancelled,
adr/0007) and hands each validated message to its handler itself: aiogram's
dispatcher (middlewares for FSM and context, router propagation) did nothing
evie uses and cost a tenth of a small turn's CPU (adr/0016). Each message is
then handled in a task of evie's own task group, so every task has an owner
and polling never waits for a turn.

The loop runs under :func:`evie.platforms.supervisor.supervise` (adr/0011):
``getUpdates`` is fetched as raw JSON and each update is validated on its own,
so one update aiogram cannot read is logged, counted and skipped (the offset
moves past it) instead of failing the batch, before access control ever runs.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import logging
import re
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread

# isort: off
from evie.platforms import aiogram_lazy  # first: aiogram's types are loaded on first use

# isort: on
import msgspec
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramEntityTooLarge,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.methods import TelegramMethod
from aiogram.methods.base import Response
from aiogram.types import BotCommand, BufferedInputFile  # (loaded with aiogram's Bot)
from aiohttp import ClientError, ClientTimeout, FormData
from aiohttp.payload import BytesPayload, Payload
from pydantic import BaseModel, ValidationError

from evie.agent.events import Image
from evie.chat.backoff import Backoff
from evie.chat.commands import CHAT_COMMANDS
from evie.chat.contract import (
    ChatRef,
    DeliveryError,
    FormattingRejected,
    Incoming,
    Permanent,
    RetryLater,
    Sent,
    Transient,
)
from evie.chat.courier import CourierSettings
from evie.chat.frontend import Accepted, ChatFrontend
from evie.chat.render import Flavor
from evie.chat.render.telegram import TelegramFlavor, utf16_units
from evie.chat.streaming import Delivery
from evie.config import DeliveryConfig, TelegramConfig
from evie.durable.inbox import Inbox
from evie.durable.outbox import Outbox
from evie.errors import ConfigError
from evie.platforms import deferred_tls
from evie.platforms.contract import PlatformHealth
from evie.platforms.supervisor import Liveness, one_line, supervise
from evie.platforms.telegram_updates import PlainEntity, PlainMessage, read_plain
from evie.sessions.manager import SessionManager

if TYPE_CHECKING:  # imported beside the first poll (adr/0016 §7): see message_models
    from aiogram.types import Message, MessageEntity, Update

log = logging.getLogger(__name__)
_DELIVERY = DeliveryConfig()  # [delivery] defaults, declared once in evie.config
T = TypeVar("T")


@functools.cache
def response_types() -> tuple[type[BaseModel], ...]:
    """The answer classes of aiogram's methods evie calls, held for good.

    aiogram parses every answer as ``Response[<method's result type>]``; pydantic
    keeps those generic classes only in a weak cache, so each garbage collection
    dropped them and the next call rebuilt one (20-35 ms of CPU each under load).
    Holding them builds each once (bench/results/aiogram_response.json). Made
    beside the first poll: importing these methods and the types they name is
    ~50 ms of CPU that the first poll does not need (adr/0016 §7).
    """
    from aiogram.methods import (
        DeleteWebhook,
        EditMessageText,
        GetFile,
        GetMe,
        GetUpdates,
        SendChatAction,
        SendDocument,
        SendMessage,
        SetMyCommands,
    )  # fmt: skip

    return tuple(
        Response[m.__returning__]  # type: ignore[name-defined]
        for m in (
            GetUpdates, SendMessage, EditMessageText, SendChatAction, GetMe, DeleteWebhook,
            SetMyCommands, GetFile, SendDocument,
        )
    )  # fmt: skip


@functools.cache
def _update_model() -> type[Update]:
    """aiogram's ``Update``, imported on first use (beside the first poll, or a message)."""
    from aiogram.types import Update

    return Update


BAD_TOKEN = "Telegram rejected the bot token (401 Unauthorized): check [telegram] token"
NOT_JSON = "Telegram answered with something that is not its JSON (an outage or proxy page?)"
NOT_FOUND = "Telegram answered 404 Not Found: check [telegram] token and api_url"
TOO_LARGE = (
    "Telegram refused the file as too large (413): lower [telegram] max_upload_mb "
    "(api.telegram.org takes 50)"
)
CONFLICT = (
    "Telegram reports another getUpdates or a webhook for this bot (409 Conflict): "
    "is a second evie running with this token?"
)


async def _mapped(op: Callable[[], Awaitable[T]]) -> T | None:
    """Run a Bot API call, translating every failure into a delivery error.

    Whatever the answer's shape (an HTML error page, JSON aiogram cannot
    validate, a reset connection), the caller sees one of the contract's
    errors with a one-line message, never a library exception.
    """
    try:
        return await op()
    except TelegramRetryAfter as exc:
        raise RetryLater(float(exc.retry_after)) from None
    except TelegramEntityTooLarge:  # a network error to aiogram; no retry makes it fit
        raise Permanent(TOO_LARGE) from None
    except (TelegramServerError, TelegramNetworkError) as exc:
        raise Transient(one_line(exc)) from None
    except ClientDecodeError:
        raise Transient(NOT_JSON) from None
    except TelegramConflictError:
        raise Transient(CONFLICT) from None
    except TelegramUnauthorizedError:
        raise Permanent(BAD_TOKEN) from None
    except TelegramNotFound:
        raise Permanent(NOT_FOUND) from None
    except TelegramBadRequest as exc:
        text = exc.message.lower()
        if "message is not modified" in text:
            return None  # what we wanted is already shown
        if "can't parse entities" in text or "can't find end tag" in text:
            raise FormattingRejected(exc.message) from None
        raise Permanent(one_line(exc.message)) from None
    except TelegramAPIError as exc:
        raise Permanent(one_line(exc.message)) from None
    except (TimeoutError, OSError) as exc:  # aiogram wraps these; be safe if it does not
        raise Transient(one_line(f"{type(exc).__name__}: {exc}")) from None


async def _intake(op: Callable[[], Awaitable[T]]) -> T:
    """A call of the polling loop: like :func:`_mapped`, but only a bad token is permanent.

    A 400 on ``getUpdates`` or ``getMe`` is no reason to stop listening for
    months; 404 means the token or ``api_url`` is wrong.
    """
    try:
        result = await _mapped(op)
    except FormattingRejected as exc:
        raise Transient(str(exc)) from None
    except Permanent as exc:
        if str(exc) in (BAD_TOKEN, NOT_FOUND):
            raise
        raise Transient(str(exc)) from None
    if result is None:
        raise Transient("empty answer from Telegram")
    return result


#: ``urllib.parse.quote_plus`` as a table of the 256 bytes: its per-byte Python loop was
#: most of a reply's body encoding (a property test compares the bodies with aiogram's)
_UNQUOTED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_QUOTED = [chr(b) if b in _UNQUOTED else "+" if b == 0x20 else f"%{b:02X}" for b in range(256)]


def _quote_plus(value: str) -> str:
    return "".join(map(_QUOTED.__getitem__, value.encode("utf-8")))


def _urlencoded(fields: Iterable[tuple[str, str | None]]) -> bytes:
    """A form body as aiogram's session builds it: fields in order, empty ones left out,
    urlencoded as aiohttp does (``urlencode``; the names are plain words, never quoted)."""
    return "&".join([f"{k}={_quote_plus(v)}" for k, v in fields if v]).encode()


_FORM = "application/x-www-form-urlencoded"


class _Encoded(FormData):
    """A form body encoded already (aiohttp calls a ``FormData`` for its payload)."""

    def __init__(self, body: bytes) -> None:
        # FormData's own fields are not set up: aiohttp only calls it (its __init__ was
        # half of the body's cost); every Telegram test sends these through aiohttp
        self._body = body

    def __call__(self) -> Payload:
        return BytesPayload(self._body, content_type=_FORM)


class _LeanMethod(TelegramMethod[Any]):
    """A Bot API method of evie's own that encodes its body itself (see :class:`LeanSession`).

    The calls of every small turn (``getUpdates``, ``sendMessage``, ``editMessageText``)
    are made with ``model_construct`` from values evie controls and send exactly the
    body aiogram's session would (fields in its order, the same urlencoding; a
    property test compares them), without aiogram's general path: a method model of
    some twenty fields, dumped and prepared field by field, then a ``FormData``.
    Their answers still go through aiogram's ``check_response`` (errors, answers of
    any shape), validated only as far as evie uses them (adr/0016 §9).
    """

    def body(self) -> FormData:
        return _Encoded(self.encode(self.__dict__))

    @classmethod
    def encode(cls, values: dict[str, Any]) -> bytes:
        """The form body for these field values (every field given, as ``model_construct``
        would fill them in)."""
        raise NotImplementedError

    @classmethod
    def read(cls, answer: Any) -> Any:
        """The result of a decoded answer in the one shape aiogram reads it the same way,
        else None: :meth:`LeanSession.lean_call` then leaves the answer to aiogram's
        ``check_response`` (its errors, its validation). A property test checks that
        whatever this accepts, aiogram returns equal."""
        raise NotImplementedError


def _ok_result(answer: Any) -> Any:
    """An answer's ``result`` when it says ``"ok": true`` plainly, else None."""
    if type(answer) is dict and answer.get("ok") is True:
        return answer.get("result")
    return None


def _is_int(value: Any) -> bool:
    return type(value) is int


class _RawGetUpdates(_LeanMethod):
    """``getUpdates`` answered as plain JSON objects, each validated on its own."""

    __returning__ = list[dict[str, Any]]
    __api_method__ = "getUpdates"

    offset: int | None = None
    timeout: int | None = None
    allowed_updates: list[str] | None = None

    @classmethod
    def encode(cls, values: dict[str, Any]) -> bytes:
        offset, timeout, allowed = values["offset"], values["timeout"], values["allowed_updates"]
        return _urlencoded((
            ("offset", None if offset is None else str(offset)),
            ("timeout", None if timeout is None else str(timeout)),
            ("allowed_updates", None if allowed is None else json.dumps(allowed)),
        ))  # fmt: skip

    @classmethod
    def read(cls, answer: Any) -> Any:
        result = _ok_result(answer)
        if type(result) is list and all(type(update) is dict for update in result):
            return result
        return None


#: the answer class of the one call made for every message: without this, each garbage
#: collection dropped it and the next poll rebuilt it (a sixth of a turn's CPU, adr/0016)
RAW_UPDATES_RESPONSE = Response[_RawGetUpdates.__returning__]
#: aiogram types imported per loop step beside the first poll (~25 ms of CPU)
TYPES_PER_STEP = 20


def message_models() -> tuple[type[BaseModel], ...]:
    """What reading messages and answering them builds on first use, built beside the
    first poll instead; ``Message`` first, so that the others reuse its schema (0.22 s of
    CPU for all of them, against 0.44 s for ``Update`` and the answers' types built one
    by one)."""
    from aiogram.methods import EditMessageText, GetFile, SendChatAction, SendDocument, SendMessage
    from aiogram.types import Message

    return (
        Message, _update_model(), SendMessage, EditMessageText, SendChatAction, SendDocument,
        GetFile, RAW_UPDATES_RESPONSE, *response_types(),
    )  # fmt: skip


class _SentId(BaseModel):
    """The part of a sent ``Message`` evie uses: its id (the rest is not validated)."""

    message_id: int


#: ``link_preview_options`` as aiogram serialises ``LinkPreviewOptions(is_disabled=True)``
_NO_PREVIEW_JSON = '{"is_disabled": true}'


class _TextMethod(_LeanMethod):
    """``sendMessage`` / ``editMessageText`` with only the fields evie sets."""

    chat_id: int | str
    text: str
    message_id: int | None = None
    message_thread_id: int | None = None
    parse_mode: str | None = None
    #: the fields in the order of aiogram's method model (its body lists them so)
    _order: ClassVar[tuple[str, ...]]

    @classmethod
    def encode(cls, values: dict[str, Any]) -> bytes:
        message_id, thread = values.get("message_id"), values.get("message_thread_id")
        fields = {
            "chat_id": str(values["chat_id"]),
            "text": values["text"],
            "message_id": None if message_id is None else str(message_id),
            "message_thread_id": None if thread is None else str(thread),
            "parse_mode": values.get("parse_mode"),
            "link_preview_options": _NO_PREVIEW_JSON,
        }
        return _urlencoded((name, fields[name]) for name in cls._order)


class _SendText(_TextMethod):
    __returning__ = _SentId
    __api_method__ = "sendMessage"
    _order = ("chat_id", "text", "message_thread_id", "parse_mode", "link_preview_options")

    @classmethod
    def read(cls, answer: Any) -> Any:
        result = _ok_result(answer)
        if type(result) is dict and _is_int(result.get("message_id")):
            return _SentId.model_construct(message_id=result["message_id"])
        return None


class _EditText(_TextMethod):
    __returning__ = _SentId | bool  # Telegram answers True for inline messages
    __api_method__ = "editMessageText"
    _order = ("text", "chat_id", "message_id", "parse_mode", "link_preview_options")

    @classmethod
    def read(cls, answer: Any) -> Any:
        result = _ok_result(answer)
        if result is True:
            return True
        if type(result) is dict and _is_int(result.get("message_id")):
            return _SentId.model_construct(message_id=result["message_id"])
        return None


class LeanSession(AiohttpSession):
    """aiogram's aiohttp session; evie's own text methods bring their body (above).

    Its TLS context reads ``certifi``'s certificates on first use, not when the
    session is made (adr/0016 §7): :meth:`load_tls` reads them off the loop when
    the Bot API is reached over https; over http they are never needed.
    """

    def __init__(self, **kwargs: Any) -> None:
        with deferred_tls.deferred_tls():
            super().__init__(**kwargs)

    def load_tls(self) -> None:
        """Read the TLS context's certificates now (blocking: from a worker thread)."""
        context = self._connector_init.get("ssl")
        if isinstance(context, ssl.SSLContext):
            deferred_tls.load(context)

    def build_form_data(self, bot: Bot, method: TelegramMethod[T]) -> FormData:
        if isinstance(method, _LeanMethod):
            return method.body()
        return super().build_form_data(bot, method)

    async def lean_call(
        self,
        bot: Bot,
        kind: type[_LeanMethod],
        values: dict[str, Any],
        request_timeout: float | None = None,
    ) -> Any:
        """``bot(kind.model_construct(**values))`` without what a small turn does not need
        (adr/0016 §10): aiogram's ``make_request`` line by line, but the method model is
        made only when an answer needs aiogram (an error, an unexpected shape), and an
        answer of the expected shape is read without building ``Response[...]``. Every
        other answer goes through aiogram's own ``check_response``, so errors map as
        before. (aiogram's request middlewares are not run: evie registers none.)
        """
        session = await self.create_session()
        url = self.api.api_url(token=bot.token, method=kind.__api_method__)
        body = BytesPayload(kind.encode(values), content_type=_FORM)
        try:
            async with session.post(
                url,
                data=body,
                timeout=ClientTimeout(
                    total=self.timeout if request_timeout is None else request_timeout
                ),
            ) as resp:
                raw = await resp.read()
                status = resp.status
                result = None
                if status == 200 and resp.charset in (None, "utf-8"):  # else as aiogram reads it
                    try:
                        result = kind.read(msgspec.json.decode(raw))
                    except msgspec.DecodeError:
                        result = None
                content = await resp.text() if result is None else ""
        except TimeoutError as e:
            raise TelegramNetworkError(
                method=kind.model_construct(**values), message="Request timeout error"
            ) from e
        except ClientError as e:
            raise TelegramNetworkError(
                method=kind.model_construct(**values), message=f"{type(e).__name__}: {e}"
            ) from e
        if result is not None:
            return result
        method = kind.model_construct(**values)
        return self.check_response(
            bot=bot, method=method, status_code=status, content=content
        ).result


#: held like response_types() (rebuilt after every collection otherwise)
TEXT_RESPONSES = (Response[_SentId], Response[_SentId | bool])


def _validation_summary(exc: ValidationError) -> str:
    """Where and what failed, without the values (they carry the user's text)."""
    errors = exc.errors()
    shown = "; ".join(
        f"{'.'.join(str(part) for part in e['loc'])}: {e['type']}" for e in errors[:3]
    )
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return shown + more


#: a megabyte as Telegram's limits count it (10^6 bytes: if they meant 2^20, this errs small)
MB = 1_000_000


class TelegramTransport:
    max_length = 4096  # UTF-16 code units after entity parsing (sendMessage "text")
    caption_length = 1024  # the same, for a document's caption

    def __init__(self, bot: Bot, *, max_file_bytes: int = 50 * MB) -> None:
        #: ``[telegram] max_upload_mb``. sendDocument on api.telegram.org: "Bots can
        #: currently send files of any type of up to 50 MB in size"; a local Bot API
        #: server: "Upload files up to 2000 MB" (MB taken as 10^6 bytes, the smaller)
        self.max_file_bytes = max_file_bytes
        self._bot = bot
        session = bot.session
        assert isinstance(session, LeanSession)  # the session evie's Bot is made with
        self._lean = session
        self.flavor: Flavor = TelegramFlavor(self.max_length)

    def upload_limit(self, chat: ChatRef) -> int:
        return self.max_file_bytes  # the server's, the same in every chat

    async def _text_call(self, kind: type[_TextMethod], values: dict[str, Any]) -> Any:
        lean, bot = self._lean, self._bot
        return await _mapped(lambda: lean.lean_call(bot, kind, values))

    async def send(self, chat: ChatRef, text: str, *, formatted: bool) -> Sent:
        values = {
            "chat_id": chat.chat_id,
            "text": text,
            "message_id": None,
            "message_thread_id": chat.thread_id,
            "parse_mode": "HTML" if formatted else None,
        }
        message = await self._text_call(_SendText, values)
        if message is None:  # cannot happen for sendMessage; be explicit anyway
            raise Permanent("Telegram returned no message")
        return Sent(message.message_id)

    async def edit(self, chat: ChatRef, message: Sent, text: str, *, formatted: bool) -> None:
        values = {
            "chat_id": chat.chat_id,
            "text": text,
            "message_id": message.message_id,
            "message_thread_id": None,
            "parse_mode": "HTML" if formatted else None,
        }
        await self._text_call(_EditText, values)

    async def typing(self, chat: ChatRef) -> None:
        await _mapped(
            lambda: self._bot.send_chat_action(
                chat.chat_id, "typing", message_thread_id=chat.thread_id
            )
        )

    async def send_document(self, chat: ChatRef, filename: str, data: bytes, caption: str) -> Sent:
        if utf16_units(caption) > self.caption_length:
            caption = caption[: self.caption_length // 2]
        message = await _mapped(
            lambda: self._bot.send_document(
                chat.chat_id,
                BufferedInputFile(data, filename),
                caption=caption,
                message_thread_id=chat.thread_id,
            )
        )
        if message is None:
            raise Permanent("Telegram returned no message")
        return Sent(message.message_id)


class TelegramInterface:
    """The Telegram platform (see :mod:`evie.platforms.contract` for the lifecycle)."""

    name = "telegram"

    def __init__(
        self,
        manager: SessionManager,
        config: TelegramConfig,
        *,
        delivery: Delivery | None = None,
        max_chunks: int = _DELIVERY.max_chunks,
        backoff: Backoff | None = None,
        inbox: Inbox | None = None,
        outbox: Outbox | None = None,
        courier: CourierSettings | None = None,
    ) -> None:
        if not config.token:
            raise ConfigError("[telegram] token is not set (or set EVIE_TELEGRAM_TOKEN)")
        self._max_chunks = max_chunks
        self._inbox, self._outbox, self._courier = inbox, outbox, courier
        self._batch: list[Accepted] = []  # messages of the getUpdates answer being read
        self._manager = manager
        self._config = config
        self._delivery = delivery or Delivery()
        self._backoff = backoff or Backoff()
        self.liveness = Liveness("telegram")
        self.frontend: ChatFrontend | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._bot_id: int | None = None
        self._ready = False  # getMe and deleteWebhook done
        self._offset: int | None = None
        self._poll_scope = anyio.CancelScope()
        self._beside_scope = anyio.CancelScope()

    def health(self) -> PlatformHealth:
        return self.liveness.snapshot()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Poll until intake stops, then return once the message handlers have finished.

        Reports started at once: an unreachable Telegram is retried in the
        background (adr/0011), it never holds up the daemon's start. A rejected
        token stops only Telegram (health ``down``, ``gave_up``) and ``run`` returns.
        """
        assert self._config.token is not None
        session = LeanSession(api=TelegramAPIServer.from_base(self._config.api_url))
        bot = Bot(self._config.token, session=session)
        self.frontend = ChatFrontend(
            self._manager,
            TelegramTransport(bot, max_file_bytes=self._config.max_upload_mb * MB),
            allowed_user_ids=self._config.allowed_user_ids,
            delivery=self._delivery,
            edit_interval=self._config.edit_interval,
            platform="tg",
            max_chunks=self._max_chunks,
            inbox=self._inbox,
            outbox=self._outbox,
            courier=self._courier,
        )
        try:
            frontend = self.frontend
            async with anyio.create_task_group() as delivery:
                if urllib.parse.urlsplit(self._config.api_url).scheme == "https":  # for getMe
                    delivery.start_soon(anyio.to_thread.run_sync, session.load_tls)
                delivery.start_soon(frontend.courier.run)
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    frontend.resume(tg)  # before any new message, so order is kept
                    self.liveness.begin()
                    task_status.started()
                    with self._poll_scope:
                        await supervise(
                            self.liveness,
                            lambda: self._connect_and_poll(bot),
                            self._backoff,
                        )
                    # intake stopped (or Telegram gave up): the task group now waits for
                    # messages being handled
                    self._beside_scope.cancel()
                    self.liveness.stopped("intake stopped")
                # the last lines are in the outbox: deliver them (bounded; what is left
                # stays on disk for the next start), then return (adr/0009 step 6)
                await frontend.courier.settle()
                delivery.cancel_scope.cancel()
        finally:
            self.liveness.stopped("stopped")
            with anyio.CancelScope(shield=True):
                await bot.session.close()

    async def _connect_and_poll(self, bot: Bot) -> None:
        if not self._ready:
            me = await _intake(bot.get_me)
            self._bot_id = me.id
            if self.frontend is not None:
                self.frontend.bot_username = me.username
            await _intake(lambda: bot.delete_webhook())
            self._ready = True
            log.info("telegram: polling as @%s", me.username)
            # the menu and the message types go beside the first getUpdates, not before
            # it (adr/0016 part 7)
            assert self._tg is not None
            self._tg.start_soon(self._beside_first_poll, bot)
            self.liveness.ok(f"polling as @{me.username}")
        await self._poll(bot)

    async def _beside_first_poll(self, bot: Bot) -> None:
        with self._beside_scope:  # stopped with intake, like the poll it runs beside
            await self._build_models()  # in steps; setMyCommands would load it all at once
            await self._register_commands(bot)

    async def _build_models(self) -> None:
        """Build what reading a message takes while the first getUpdates waits.

        aiogram's types are built on first use (adr/0016 part 2); ``Update``'s schema
        takes in most of them (~0.25 s of CPU), which the first message used to pay.
        One model per step, after the first getUpdates has gone out.
        """
        await anyio.lowlevel.checkpoint()  # the first getUpdates goes out first
        while not aiogram_lazy.load_types(TYPES_PER_STEP):  # the rest of aiogram's types
            await anyio.lowlevel.checkpoint()
        await anyio.lowlevel.checkpoint()
        for model in message_models():  # (imports its methods and types: ~50 ms)
            await anyio.lowlevel.checkpoint()
            if model.__pydantic_complete__:
                continue
            try:
                model.model_rebuild()
            except Exception:  # built (or reported) on first use, as without this
                log.debug("telegram: building %s failed", model.__name__, exc_info=True)

    async def _register_commands(self, bot: Bot) -> None:
        commands = [BotCommand(command=c.name, description=c.summary) for c in CHAT_COMMANDS]
        try:
            await _mapped(lambda: bot.set_my_commands(commands))
        except DeliveryError as exc:  # the menu is a nicety; never fatal
            log.warning("telegram: could not register commands: %s", exc)
        except Exception as exc:  # whatever else: still no reason to stop listening
            log.warning("telegram: could not register commands (%s)", one_line(exc))
            log.debug("telegram: setMyCommands failed", exc_info=True)

    async def _poll(self, bot: Bot) -> None:
        """Long-poll getUpdates ourselves, so cancellation stops it (adr/0007).

        Returns never; failures propagate to the supervisor, which retries. A batch's
        messages are in the inbox on disk, with the next offset, before that offset is
        sent to Telegram (which then forgets them) — adr/0012.
        """
        frontend, tg = self.frontend, self._tg
        assert frontend is not None
        assert tg is not None
        if self._offset is None:
            self._offset = frontend.inbox.cursor("tg:offset")
        session = bot.session
        assert isinstance(session, LeanSession)
        timeout = self._config.polling_timeout + self._config.request_grace
        while True:
            values = {
                "offset": self._offset,
                "timeout": self._config.polling_timeout,
                "allowed_updates": ["message"],
            }
            call = functools.partial(session.lean_call, bot, _RawGetUpdates, values, timeout)
            raw = await _intake(call)
            self.liveness.ok("polling")
            for item in raw:
                update_id = item.get("update_id")
                if isinstance(update_id, int) and not isinstance(update_id, bool):
                    self._offset = max(self._offset or 0, update_id + 1)
                await self._feed(bot, item, update_id)
            if raw and self._offset is not None:
                batch, self._batch = self._batch, []
                frontend.inbox.set_cursor("tg:offset", self._offset)
                await frontend.admit(batch, tg)

    async def _feed(self, bot: Bot, item: dict[str, Any], update_id: object) -> None:
        """Validate and dispatch one update; one that cannot be read is logged and skipped.

        The common shape (a text message) is read with msgspec; any other shape is
        validated by aiogram, as before (:mod:`evie.platforms.telegram_updates`).
        """
        message: Message | PlainMessage | None = read_plain(item)
        if message is None:
            try:
                message = _update_model().model_validate(item, context={"bot": bot}).message
            except ValidationError as exc:
                self.liveness.skipped_updates += 1
                log.warning(
                    "telegram: skipped update %s that aiogram cannot read (%s)",
                    update_id,
                    _validation_summary(exc),
                )
                return
        try:
            if message is not None:  # (allowed_updates asks for messages only)
                await self._on_message(message)
        except Exception as exc:  # a shape our translation did not foresee: skip, keep polling
            self.liveness.skipped_updates += 1
            log.warning("telegram: skipped update %s (%s)", update_id, one_line(type(exc).__name__))
            log.debug("telegram: update %s failed", update_id, exc_info=True)

    async def stop_intake(self) -> None:
        """Stop polling for new updates; handlers already running carry on.

        :meth:`run` returns once they have finished (cancel it to cut them short).
        """
        self.liveness.stopped("intake stopped")
        self._poll_scope.cancel()
        self._beside_scope.cancel()

    async def announce(self, keys: Iterable[str], take: Callable[[str], str | None]) -> int:
        """Post pending notices to the Telegram chats among ``keys``."""
        frontend = self.frontend
        return 0 if frontend is None else await frontend.announce(keys, take)

    async def _on_message(self, message: Message | PlainMessage) -> None:
        incoming = self._translate(message)
        if incoming is not None and self.frontend is not None:
            accepted = self.frontend.accept(incoming)
            if accepted is not None:
                self._batch.append(accepted)  # handled once the batch is on disk (_poll)

    def _translate(self, message: Message | PlainMessage) -> Incoming | None:
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
        fetch = (
            None
            if isinstance(message, PlainMessage) or not message.photo  # (plain: never a photo)
            else self._photo_fetcher(message)
        )
        return Incoming(
            chat=ChatRef("tg", chat.id, thread),
            user_id=user.id,
            text=text,
            message_id=message.message_id,
            fetch_images=fetch,
            username=user.username,
            addressed=named,
        )

    def _addressed_text(self, message: Message | PlainMessage, text: str) -> str | None:
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
            found = utf16_slice(text, entity.offset, entity.length)
            to_bot = (
                entity.type == "mention" and mention and found.lower() == mention.lower()
            ) or (entity.type == "text_mention" and entity.user and entity.user.id == self._bot_id)
            if to_bot:
                return without_entity(text, entity)
        if mention and mention.lower() in text.lower():
            return re.sub(r"\s*" + re.escape(mention), " ", text, flags=re.IGNORECASE).strip()
        return None

    def _photo_fetcher(self, message: Message) -> Callable[[], Awaitable[tuple[Image, ...]]]:
        photo = max(message.photo or [], key=lambda p: p.width * p.height)
        bot = message.bot

        async def download(buffer: io.BytesIO) -> None:
            assert bot is not None
            try:
                await _mapped(lambda: bot.download(photo.file_id, buffer))
            except DeliveryError:
                raise
            except Exception as exc:  # aiohttp and file errors: retried, then reported
                raise Transient(f"download failed: {exc}") from None

        async def fetch() -> tuple[Image, ...]:
            if bot is None:
                return ()
            buffer = io.BytesIO()
            await self._delivery.run(lambda: download(buffer))
            data = base64.b64encode(buffer.getvalue()).decode("ascii")
            return (Image(data=data, mime_type="image/jpeg"),)

        return fetch


def utf16_slice(text: str, offset: int, length: int) -> str:
    """The part of ``text`` an entity covers: Telegram counts offsets in UTF-16 code units."""
    units = text.encode("utf-16-le")
    return units[2 * offset : 2 * (offset + length)].decode("utf-16-le", "replace")


def without_entity(text: str, entity: MessageEntity | PlainEntity) -> str:
    """``text`` with the entity cut out (by UTF-16 offsets) and the gap closed."""
    units = text.encode("utf-16-le")
    before = units[: 2 * entity.offset].decode("utf-16-le", "replace").rstrip()
    after = units[2 * (entity.offset + entity.length) :].decode("utf-16-le", "replace").lstrip()
    return f"{before} {after}".strip()
