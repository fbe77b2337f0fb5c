"""Chat logic shared by every platform: access control, commands, turns, acknowledgements."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

import anyio

from evie.agent.events import Prompt
from evie.chat.commands import (
    IMAGE_FAILED,
    LAST_REPLY_CAPTION,
    LAST_REPLY_SENT,
    NO_LAST_REPLY,
    REFUSAL,
    for_another_bot,
    parse_command,
    run_command,
)
from evie.chat.contract import ChatRef, DeliveryError, Incoming, Transport
from evie.chat.streaming import Delivery, ReplyStreamer, one_line
from evie.errors import EvieError
from evie.logs import chat_var
from evie.sessions.manager import Queued, SessionManager

log = logging.getLogger(__name__)


_SECTION = {"tg": "telegram", "dc": "discord"}


def refusal_log_line(platform: str, user_id: int, username: str | None) -> str:
    """What the owner reads in the log when evie turns someone away: who, and the fix."""
    who = f"{user_id} (@{username})" if username else str(user_id)
    section = _SECTION.get(platform, platform)
    return f"refused user {who}: add {user_id} to [{section}] allowed_user_ids to allow"


class ChatFrontend:
    def __init__(
        self,
        manager: SessionManager,
        transport: Transport,
        *,
        allowed_user_ids: Iterable[int],
        edit_interval: float,  # from the platform's config section
        delivery: Delivery | None = None,
        typing_interval: float = 4.5,
        refusal_interval: float = 3600.0,
        bot_username: str | None = None,
        platform: str = "",
        max_chunks: int = 8,
    ) -> None:
        self.platform = platform
        self.manager = manager
        self.transport = transport
        self.allowed = frozenset(allowed_user_ids)
        self.delivery = delivery or Delivery()
        self.edit_interval = edit_interval
        self.typing_interval = typing_interval
        self.refusal_interval = refusal_interval
        self.bot_username = bot_username
        self._refused: OrderedDict[int, float] = OrderedDict()
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()  # replayed updates
        self.max_chunks = max_chunks
        self._streamers: dict[str, set[ReplyStreamer]] = {}  # replies in flight, per chat
        self._last: OrderedDict[str, str] = OrderedDict()  # the last reply per chat, for /last
        #: extra lines for /status (how each platform is doing), set by whoever knows them
        self.status_footer: Callable[[], str] | None = None

    async def handle(self, msg: Incoming) -> None:
        """Handle one incoming message to completion (run it in its own task)."""
        chat_var.set(msg.chat.key)
        if msg.message_id is not None:
            seen = (msg.chat.key, msg.message_id)
            if seen in self._seen:
                log.info("chat %s: ignoring replayed message %s", msg.chat.key, msg.message_id)
                return
            self._seen[seen] = None
            if len(self._seen) > 10_000:
                self._seen.popitem(last=False)
        try:
            if for_another_bot(msg.text.strip(), self.bot_username):
                return  # /cmd@OtherBot: not ours, and never a prompt for pi
            if not self.allows(msg.user_id):
                if msg.addressed:  # a bare /cmd in a group draws no public reply
                    await self._refuse(msg)
                return
            command = parse_command(msg.text.strip(), self.bot_username)
            if command is not None:
                await self._command(command, msg.chat)
                return
            await self._converse(msg)
        except Exception as exc:  # one chat's bug must not take the interface (and every chat) down
            error = sole_error(exc)  # a task group wraps what its body raised
            if isinstance(error, DeliveryError):
                log.error("chat %s: could not deliver to the platform: %s", msg.chat.key, error)
                return
            log.error(
                "chat %s: unexpected error handling a message: %s: %s",
                msg.chat.key,
                type(error).__name__,
                " ".join(str(error).split())[:300],
            )
            log.debug("chat %s: traceback", msg.chat.key, exc_info=True)
            with anyio.move_on_after(10):
                try:
                    await self.say(msg.chat, "⚠️ Something went wrong inside evie; see its log.")
                except DeliveryError:
                    pass

    async def _refuse(self, msg: Incoming) -> None:
        """One short refusal per stranger per interval; never touches the manager."""
        now = time.monotonic()
        last = self._refused.get(msg.user_id)
        if last is not None and now - last < self.refusal_interval:
            return
        self._refused[msg.user_id] = now
        self._refused.move_to_end(msg.user_id)
        while len(self._refused) > 10_000:
            self._refused.popitem(last=False)
        log.info(refusal_log_line(self.platform, msg.user_id, msg.username))
        await self.say(msg.chat, REFUSAL)

    async def say(self, chat: ChatRef, text: str) -> None:
        await self.delivery.run(lambda: self.transport.send(chat, text, formatted=False))

    async def _command(self, command: str, chat: ChatRef) -> None:
        if command == "last":
            await self.send_last(chat)
            return
        await self.say(chat, await self.command_reply(command, chat))

    async def command_reply(self, command: str, chat: ChatRef) -> str:
        """Carry out a command and return the answer (platforms decide how to post it)."""
        if command == "last":
            return LAST_REPLY_SENT if await self.send_last(chat) else NO_LAST_REPLY
        stopped = False
        if command == "stop":
            streamers = self._streamers.get(chat.key, set())
            stopped = any([s.stop_delivery() for s in streamers])
        text = await run_command(self.manager, chat.key, command, delivery_stopped=stopped)
        if command == "status" and self.status_footer is not None:
            footer = self.status_footer()
            if footer:
                text = f"{text}\n{footer}"
        return text

    async def send_last(self, chat: ChatRef) -> bool:
        """``/last``: the last reply in this chat as a Markdown file; False if there is none."""
        text = self._last.get(chat.key)
        if text is None:
            await self.say(chat, NO_LAST_REPLY)
            return False
        streamer = ReplyStreamer(self.transport, chat, self.delivery)
        await streamer.send_file(text, LAST_REPLY_CAPTION)
        return True

    def _remember(self, key: str, text: str) -> None:
        self._last[key] = text
        self._last.move_to_end(key)
        while len(self._last) > 64:  # bounded: a handful of recent chats
            self._last.popitem(last=False)

    async def announce(self, keys: Iterable[str], take: Callable[[str], str | None]) -> int:
        """Post pending notices (e.g. turns cut short by a restart) to this platform's chats.

        ``take`` hands out each notice once, so a chat never hears it twice even when
        its next message races this announcement. Returns how many were posted.
        """
        posted = 0
        for key in keys:
            chat = ChatRef.from_key(key)
            if chat is None or chat.platform != self.platform:
                continue
            text = take(key)
            if text is None:
                continue
            try:
                await self.say(chat, f"ℹ️ {text}")
                posted += 1
            except DeliveryError as exc:
                log.warning("chat %s: could not deliver a notice: %s", key, exc)
        return posted

    def allows(self, user_id: int) -> bool:
        return user_id in self.allowed

    async def _converse(self, msg: Incoming) -> None:
        images = msg.images
        if msg.fetch_images is not None:
            try:
                images = images + await msg.fetch_images()
            except DeliveryError as exc:  # say so; a prompt without its image would mislead pi
                log.warning("chat %s: image download failed: %s", msg.chat.key, exc)
                await self.say(msg.chat, IMAGE_FAILED.format(error=one_line(exc, 120)))
                return
        if not msg.text.strip() and not images:
            return
        prompt = Prompt(msg.text, images)
        key = msg.chat.key
        streamer = ReplyStreamer(
            self.transport,
            msg.chat,
            self.delivery,
            edit_interval=self.edit_interval,
            max_chunks=self.max_chunks,
            on_reply=lambda text: self._remember(key, text),
        )
        self._streamers.setdefault(key, set()).add(streamer)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._keep_typing, msg.chat)
            tg.start_soon(streamer.live_updates)
            try:
                result = await self.manager.send(key, prompt, streamer)
            except EvieError as exc:
                result = None
                await self.say(msg.chat, f"⚠️ {exc}")
            finally:
                tg.cancel_scope.cancel()
                streamers = self._streamers.get(key, set())
                streamers.discard(streamer)
                if not streamers:
                    self._streamers.pop(key, None)
        if isinstance(result, Queued):
            how = "I'll steer the current work with it" if result.steer else "I'll answer it next"
            await self.say(msg.chat, f"📥 Got it — {how} (queued #{result.position}).")

    async def _keep_typing(self, chat: ChatRef) -> None:
        while True:
            try:
                await self.transport.typing(chat)
            except Exception as exc:  # a nicety: whatever the answer, the turn goes on
                log.debug("chat %s: typing indicator failed: %s", chat.key, exc)
            await anyio.sleep(self.typing_interval)


def sole_error(exc: BaseException) -> BaseException:
    """The one error inside (nested) single-member exception groups, else ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
