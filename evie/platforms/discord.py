"""Discord front end on discord.py 2.

Like the Telegram adapter it only translates; the chat logic is the shared
:class:`ChatFrontend`. DMs and guild messages that mention the bot (or reply
to it) are handled; a thread is its own channel, so it is its own session.
Replies go over REST, independent of the gateway, so a gateway drop or RESUME
does not touch a turn in flight, and replayed MESSAGE_CREATEs are ignored by
message id. The last message id seen per channel is kept in the inbox; after
every (re)connect the channels' REST history since then is read, so what was
posted while the gateway was away (or evie was down) is handled in order, once
(adr/0012).

Supervision (adr/0011): each attempt logs in and connects a fresh client under
:func:`evie.platforms.supervisor.supervise`. Once connected, discord.py's own
reconnect loop keeps the session (RESUME replays what was missed); evie only
replaces its backoff, so gateway retries follow the shared capped policy and
log one line each. A first connection that fails (discord.py cannot resume a
session it never had) and a login that fails go back to the supervisor.
"""

from __future__ import annotations

import base64
import contextvars
import io
import logging
import math
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.to_thread
import discord
import yarl
from discord import app_commands

from evie.agent.events import Image
from evie.chat.backoff import Backoff
from evie.chat.commands import CHAT_COMMANDS, REFUSAL
from evie.chat.contract import ChatRef, Incoming, Permanent, RetryLater, Sent, Transient
from evie.chat.courier import CourierSettings
from evie.chat.frontend import Accepted, ChatFrontend
from evie.chat.render import Flavor
from evie.chat.render.discord import DiscordFlavor
from evie.chat.streaming import Delivery
from evie.config import DeliveryConfig, DiscordConfig
from evie.durable.inbox import Inbox
from evie.durable.outbox import Outbox
from evie.errors import ConfigError
from evie.platforms import deferred_tls
from evie.platforms.contract import PlatformHealth
from evie.platforms.supervisor import Liveness, one_line, supervise
from evie.sessions.manager import SessionManager

log = logging.getLogger(__name__)
_DELIVERY = DeliveryConfig()  # [delivery] defaults, declared once in evie.config
T = TypeVar("T")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
NO_MENTIONS = discord.AllowedMentions.none()
CATCH_UP = "catch-up"  # put in the intake stream at every (re)connect
HISTORY_LIMIT = 500  # most messages read back per channel after a reconnect
#: Discord drops a slash command not acknowledged within 3 s ("Unknown interaction");
#: an answer not ready by then is deferred ("evie is thinking…") and sent as a follow-up
ACKNOWLEDGE_WITHIN = 2.0


async def _mapped(op: Callable[[], Awaitable[T]]) -> T:
    """Run a REST call, translating discord.py's errors into delivery errors.

    discord.py already waits out ordinary 429s itself; what reaches us is a
    rate limit longer than it was willing to wait, or errors after its retries.
    """
    try:
        return await op()
    except discord.RateLimited as exc:
        raise RetryLater(exc.retry_after) from None
    except discord.DiscordServerError as exc:
        raise Transient(str(exc)) from None
    except discord.HTTPException as exc:
        if exc.status == 429:
            raise RetryLater(1.0) from None
        raise Permanent(str(exc)) from None
    except (OSError, TimeoutError, discord.GatewayNotFound) as exc:
        raise Transient(one_line(exc) or type(exc).__name__) from None


BAD_TOKEN = "Discord rejected the bot token: check [discord] token"
NO_INTENT = (
    "Discord refused the message-content intent: enable it for the bot in the developer "
    "portal (Bot → Privileged Gateway Intents)"
)
#: gateway close codes that retrying cannot fix
PERMANENT_CLOSES = {
    4004: BAD_TOKEN,
    4010: "Discord closed the gateway: invalid shard (4010)",
    4011: "Discord closed the gateway: the bot needs sharding (4011)",
    4012: "Discord closed the gateway: invalid API version (4012); update discord.py",
    4013: "Discord closed the gateway: invalid intents (4013)",
    4014: NO_INTENT,
}


class _NeverConnected(Exception):
    """A first gateway connection failed: start over with a fresh client."""


_owner: contextvars.ContextVar[DiscordInterface | None] = contextvars.ContextVar(
    "evie_discord_owner", default=None
)


class _GatewayBackoff:
    """Takes the place of discord.py's ExponentialBackoff inside ``Client.connect``.

    discord.py asks it for a delay right after a reconnect failed (inside its
    ``except``), then waits that long and RESUMEs. Its own backoff grows to
    17 minutes; this one follows evie's policy (capped at 60 s), logs the one
    line per attempt and counts the failure on the platform's liveness.
    """

    def __init__(self, base: int = 1, *, integral: bool = False) -> None:
        self._owner = _owner.get()
        self._attempt = 0

    def delay(self) -> float:
        owner = self._owner
        if owner is None:  # a client evie did not start: just the capped policy
            self._attempt += 1
            return Backoff().delay(self._attempt)
        return owner._reconnect_delay()


setattr(discord.client, "ExponentialBackoff", _GatewayBackoff)  # noqa: B010


class _QuietReconnect(logging.Filter):
    """discord.py logs each reconnect with a traceback; evie logs its own one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Attempting a reconnect")


logging.getLogger("discord.client").addFilter(_QuietReconnect())


class DiscordTransport:
    max_length = 2000  # characters of content, markup included
    #: room left under Discord's limit for the caption and the form's framing
    upload_margin = discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES - 10_000_000

    def __init__(self, client: Callable[[], discord.Client | None]) -> None:
        self._current = client  # the supervisor replaces the client between attempts
        self.flavor: Flavor = DiscordFlavor(self.max_length)

    @property
    def _client(self) -> discord.Client:
        client = self._current()
        if client is None or client.is_closed() or client.user is None:
            raise Transient("Discord is not connected yet")
        return client

    def upload_limit(self, chat: ChatRef) -> int:
        """10 MiB in a DM or an unboosted server (discord.py's DEFAULT_FILE_SIZE_LIMIT_BYTES);
        a boosted server's own (50 MiB at level 2, 100 at 3) for its channels and threads,
        from the guild the gateway sent (GUILD_CREATE, GUILD_UPDATE)."""
        client = self._current()
        channel = client.get_channel(chat.chat_id) if client is not None else None
        guild = getattr(channel, "guild", None)
        limit = discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES
        if isinstance(guild, discord.Guild):
            limit = max(limit, guild.filesize_limit)
        return limit - self.upload_margin

    async def send(self, chat: ChatRef, text: str, *, formatted: bool) -> Sent:
        channel = self._client.get_partial_messageable(chat.chat_id)
        message = await _mapped(lambda: channel.send(text, allowed_mentions=NO_MENTIONS))
        return Sent(message.id)

    async def edit(self, chat: ChatRef, message: Sent, text: str, *, formatted: bool) -> None:
        channel = self._client.get_partial_messageable(chat.chat_id)
        partial = channel.get_partial_message(message.message_id)
        await _mapped(lambda: partial.edit(content=text, allowed_mentions=NO_MENTIONS))

    async def typing(self, chat: ChatRef) -> None:
        http = self._client.http
        await _mapped(lambda: http.send_typing(chat.chat_id))

    async def send_document(self, chat: ChatRef, filename: str, data: bytes, caption: str) -> Sent:
        channel = self._client.get_partial_messageable(chat.chat_id)
        message = await _mapped(
            lambda: channel.send(
                caption[: self.max_length],
                file=discord.File(io.BytesIO(data), filename=filename),
                allowed_mentions=NO_MENTIONS,
            )
        )
        return Sent(message.id)


class _Client(discord.Client):
    def __init__(self, owner: DiscordInterface, **options: Any) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        intents.guild_messages = True
        intents.dm_messages = True
        intents.message_content = True
        # debug events: every gateway message (heartbeat acks too) is a sign of life for health()
        options.setdefault("enable_debug_events", True)
        super().__init__(intents=intents, **options)
        self._owner = owner

    async def setup_hook(self) -> None:
        self._owner._add_app_commands(self)

    async def on_ready(self) -> None:
        await self._owner._sync_app_commands()
        self._owner._connected("ready")
        self._owner._catch_up_later()

    async def on_resumed(self) -> None:
        self._owner._connected("resumed")
        self._owner._catch_up_later()

    async def on_disconnect(self) -> None:
        self._owner._disconnected()

    async def on_socket_raw_receive(self, _msg: object) -> None:
        self._owner.liveness.seen()

    async def on_message(self, message: discord.Message) -> None:
        self._owner._on_message(message)


class DiscordInterface:
    """The Discord platform (see :mod:`evie.platforms.contract` for the lifecycle)."""

    name = "discord"

    def __init__(
        self,
        manager: SessionManager,
        config: DiscordConfig,
        *,
        delivery: Delivery | None = None,
        client_options: dict[str, Any] | None = None,
        backoff: Backoff | None = None,
        liveness_interval: float = 10.0,
        max_chunks: int = _DELIVERY.max_chunks,
        inbox: Inbox | None = None,
        outbox: Outbox | None = None,
        courier: CourierSettings | None = None,
    ) -> None:
        self._max_chunks = max_chunks
        if not config.token:
            raise ConfigError("[discord] token is not set (or set EVIE_DISCORD_TOKEN)")
        self._inbox, self._outbox, self._courier = inbox, outbox, courier
        self._intake_send, self._intake_receive = anyio.create_memory_object_stream[
            discord.Message | str
        ](math.inf)
        self._manager = manager
        self._config = config
        self._delivery = delivery or Delivery()
        self._client_options = client_options or {}
        self._backoff = backoff or Backoff()
        self._liveness_interval = liveness_interval
        self.liveness = Liveness("discord", connected=False)  # up only on READY
        self._ever_connected = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._client: _Client | None = None
        self.frontend: ChatFrontend | None = None
        self._accepting = True
        self._intake_stopped = anyio.Event()
        self._tree: app_commands.CommandTree[_Client] | None = None
        self._synced = False

    def health(self) -> PlatformHealth:
        return self.liveness.snapshot()

    async def wait_connected(self) -> None:
        """Until the gateway first said READY (tests; the daemon never waits for it)."""
        await self._ever_connected.wait()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, serve until intake stops, then return once the handlers have finished.

        Reports started at once: an unreachable Discord is retried in the
        background (adr/0011), it never holds up the daemon's start. Replies go
        over REST, so the client stays open until the last handler is done. A
        refused token or intent stops only Discord (``gave_up``) and ``run`` returns.
        """
        if self._config.api_url:
            discord.http.Route.BASE = self._config.api_url
        if self._config.gateway_url:
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self._config.gateway_url)
        self.frontend = ChatFrontend(
            self._manager,
            DiscordTransport(lambda: self._client),
            allowed_user_ids=self._config.allowed_user_ids,
            delivery=self._delivery,
            edit_interval=self._config.edit_interval,
            platform="dc",
            max_chunks=self._max_chunks,
            inbox=self._inbox,
            outbox=self._outbox,
            courier=self._courier,
        )
        frontend = self.frontend
        try:
            async with anyio.create_task_group() as delivery:
                delivery.start_soon(frontend.courier.run)
                async with anyio.create_task_group() as connection:
                    connection.start_soon(self._watch_heartbeat)
                    connection.start_soon(self._supervised)
                    async with anyio.create_task_group() as handlers:
                        self._tg = handlers
                        frontend.resume(handlers)  # before any new message: order kept
                        handlers.start_soon(self._intake, handlers)  # ends when intake stops
                        self.liveness.begin()
                        task_status.started()
                        await self._intake_stopped.wait()
                    # every message handler has finished. Replies go over REST with the
                    # connected client: deliver the last lines (bounded; what is left stays
                    # on disk for the next start), then drop the gateway (adr/0009 step 6)
                    await frontend.courier.settle()
                    connection.cancel_scope.cancel()
                delivery.cancel_scope.cancel()
        finally:
            self.liveness.stopped("stopped")
            if self._client is not None:
                with anyio.CancelScope(shield=True):
                    await self._client.close()

    async def _supervised(self) -> None:
        """Hold a gateway session; returns only when Discord gave up (a permanent error)."""
        # aiohttp's default TLS contexts, if Telegram imported aiohttp with them deferred
        # (adr/0016 §7): read off the loop before discord.py's first handshake needs them
        await anyio.to_thread.run_sync(deferred_tls.load_all)
        await supervise(self.liveness, self._connect_once, self._backoff)
        self._accepting = False  # down for good: nothing more will arrive
        self._intake_send.close()  # _intake takes what was queued, then ends
        self._intake_stopped.set()

    async def _connect_once(self) -> None:
        """Log in and hold a gateway session with a fresh client (one supervised attempt)."""
        assert self._config.token is not None
        client = self._client = _Client(self, **self._client_options)
        token = _owner.set(self)
        try:
            await client.login(self._config.token)
            await client.connect(reconnect=True)
            raise Transient("the Discord gateway session ended")
        except discord.LoginFailure:
            raise Permanent(BAD_TOKEN) from None
        except discord.PrivilegedIntentsRequired:
            raise Permanent(NO_INTENT) from None
        except discord.ConnectionClosed as exc:
            if exc.code in PERMANENT_CLOSES:
                raise Permanent(PERMANENT_CLOSES[exc.code]) from None
            raise Transient(f"Discord closed the gateway ({exc.code})") from None
        except _NeverConnected as exc:
            raise Transient(_describe(exc.__context__)) from None
        except (OSError, TimeoutError, discord.GatewayNotFound, discord.HTTPException) as exc:
            raise Transient(_describe(exc)) from None
        finally:
            _owner.reset(token)
            with anyio.CancelScope(shield=True):
                await client.close()

    def _connected(self, how: str) -> None:
        self.liveness.ok(f"gateway {how}")
        if not self._ever_connected.is_set():
            log.info("discord: connected as %s", self._client.user if self._client else "?")
        self._ever_connected.set()

    def _reconnect_delay(self) -> float:
        """Called by discord.py's reconnect loop, inside its ``except``: count, log, wait."""
        client = self._client
        if client is None or client.ws is None:
            raise _NeverConnected  # nothing to RESUME: the supervisor starts a fresh client
        attempt = self.liveness.failed(_describe(sys.exc_info()[1]))
        delay = self._backoff.delay(attempt)
        log.warning(
            "discord: gateway lost (%s); reconnect %d in %.1fs",
            self.liveness.detail,
            attempt,
            delay,
        )
        return delay

    async def _watch_heartbeat(self) -> None:
        """Mark the platform alive while the gateway socket is open and the session ready.

        discord.py closes the socket itself when heartbeats go unanswered, so an
        open, ready socket is a recent heartbeat.
        """
        while True:
            await anyio.sleep(self._liveness_interval)
            client = self._client
            ws = client.ws if client is not None and client.is_ready() else None
            if ws is not None and ws.open:
                self.liveness.ok()

    async def stop_intake(self) -> None:
        """Ignore new messages from now on; running handlers carry on.

        :meth:`run` returns once they have finished (cancel it to cut them short).
        """
        self._accepting = False
        self._intake_send.close()  # _intake takes what was queued, then ends
        self._intake_stopped.set()
        self.liveness.stopped("intake stopped")

    async def announce(self, keys: Iterable[str], take: Callable[[str], str | None]) -> int:
        """Post pending notices to the Discord channels among ``keys``."""
        frontend = self.frontend
        return 0 if frontend is None else await frontend.announce(keys, take)

    def _disconnected(self) -> None:
        self.liveness.lost("gateway disconnected; discord.py reconnects")

    # -- application (slash) commands: /status /stop /new /help -----------------------

    def _add_app_commands(self, client: _Client) -> None:
        self._tree = tree = app_commands.CommandTree(client)
        for command in CHAT_COMMANDS:
            tree.add_command(
                app_commands.Command(
                    name=command.name,
                    description=command.summary,
                    callback=self._app_command(command.name),
                )
            )

    def _app_command(self, name: str) -> Callable[[discord.Interaction], Coroutine[Any, Any, None]]:
        async def callback(interaction: discord.Interaction) -> None:
            await self._on_app_command(interaction, name)

        return callback

    async def _sync_app_commands(self) -> None:
        if self._tree is None or self._synced:
            return
        try:
            await self._tree.sync()
            self._synced = True
        except discord.HTTPException as exc:  # the text commands still work
            log.warning("discord: could not register slash commands: %s", exc)

    async def _on_app_command(self, interaction: discord.Interaction, name: str) -> None:
        frontend = self.frontend
        if frontend is None or not frontend.allows(interaction.user.id):
            await interaction.response.send_message(REFUSAL, ephemeral=True)
            return
        chat = ChatRef("dc", interaction.channel_id or interaction.user.id)
        answer: list[str] = []
        done = anyio.Event()

        async def carry_out() -> None:
            answer.append(await frontend.command_reply(name, chat))
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(carry_out)  # runs to its end: /new or /last is never cut halfway
            with anyio.move_on_after(ACKNOWLEDGE_WITHIN):
                await done.wait()
            if not done.is_set():  # e.g. /last uploading a big file through an outage
                await self._answer(name, interaction.response.defer(thinking=True))
        text = answer[0][:2000]
        if interaction.response.is_done():
            await self._answer(name, interaction.followup.send(text, allowed_mentions=NO_MENTIONS))
        else:
            await self._answer(
                name, interaction.response.send_message(text, allowed_mentions=NO_MENTIONS)
            )

    @staticmethod
    async def _answer(name: str, call: Awaitable[object]) -> None:
        """One step of answering a slash command; a refusal (an expired interaction, an
        outage) is one log line: the command itself has run."""
        try:
            await call
        except (discord.DiscordException, OSError, TimeoutError) as exc:
            log.warning("discord: could not answer /%s: %s", name, one_line(exc) or exc)

    def _on_message(self, message: discord.Message) -> None:
        if self._accepting:
            self._intake_send.send_nowait(message)

    def _catch_up_later(self) -> None:
        if self._accepting:
            self._intake_send.send_nowait(CATCH_UP)

    async def _intake(self, tg: anyio.abc.TaskGroup) -> None:
        """One ordered intake: live messages and history catch-ups, each batch on disk first."""
        frontend = self.frontend
        assert frontend is not None
        async for first in self._intake_receive:
            items = [first]
            while True:
                try:
                    items.append(self._intake_receive.receive_nowait())
                except anyio.WouldBlock:
                    break
            batch: list[Accepted] = []
            for item in items:
                if not self._accepting:
                    break  # not taken in: the next start reads it from the history
                if isinstance(item, str):  # live messages after it wait for the history
                    await frontend.admit(batch, tg)
                    batch = []
                    await self._catch_up(tg)
                else:
                    self._accept(item, batch)
            if batch:
                await frontend.admit(batch, tg)

    def _accept(self, message: discord.Message, batch: list[Accepted]) -> None:
        assert self.frontend is not None
        incoming = self._translate(message)
        if incoming is None:
            return
        accepted = self.frontend.accept(incoming)
        if accepted is not None:
            batch.append(accepted)
        if accepted is None or accepted.seq is not None:  # an allowed user's channel
            name = f"dc:{message.channel.id}"
            if message.id > (self.frontend.inbox.cursor(name) or 0):
                self.frontend.inbox.set_cursor(name, message.id)

    async def _catch_up(self, tg: anyio.abc.TaskGroup) -> None:
        """Read what was posted since the last seen message in each known channel."""
        client, frontend = self._client, self.frontend
        assert client is not None
        assert frontend is not None
        for name, after in frontend.inbox.cursors("dc:").items():
            channel_id = int(name.removeprefix("dc:"))
            channel: Any = client.get_channel(channel_id) or client.get_partial_messageable(
                channel_id
            )
            batch: list[Accepted] = []
            try:
                async for message in channel.history(
                    limit=HISTORY_LIMIT, after=discord.Object(after), oldest_first=True
                ):
                    self._accept(message, batch)
                    if message.id > (frontend.inbox.cursor(name) or 0):
                        frontend.inbox.set_cursor(name, message.id)
            except (discord.HTTPException, OSError) as exc:
                log.warning("discord: could not read channel %s's history: %s", channel_id, exc)
            if batch:
                log.info("discord: %d message(s) posted in channel %s while away", len(batch),
                         channel_id)  # fmt: skip
            await frontend.admit(batch, tg)

    def _translate(self, message: discord.Message) -> Incoming | None:
        client = self._client
        if client is None or client.user is None or message.author.bot:
            return None
        text = message.content
        named = True  # the message names this bot (a bare /cmd in a guild does not)
        if message.guild is not None:
            me = client.user
            mentioned = any(user.id == me.id for user in message.mentions)
            ref = message.reference
            replied = (
                ref is not None
                and isinstance(ref.resolved, discord.Message)
                and ref.resolved.author.id == me.id
            )
            if not (mentioned or replied or text.startswith("/")):
                return None
            named = mentioned or replied
            for form in (f"<@{me.id}>", f"<@!{me.id}>"):
                text = text.replace(form, "")
            text = text.strip()
        images = [a for a in message.attachments if (a.content_type or "") in IMAGE_TYPES]
        return Incoming(
            chat=ChatRef("dc", message.channel.id),
            user_id=message.author.id,
            text=text,
            message_id=message.id,
            fetch_images=self._image_fetcher(images) if images else None,
            username=message.author.name,
            addressed=named,
        )

    def _image_fetcher(
        self, attachments: list[discord.Attachment]
    ) -> Callable[[], Awaitable[tuple[Image, ...]]]:
        async def read(attachment: discord.Attachment) -> bytes:
            return await self._delivery.run(lambda: _mapped(attachment.read))

        async def fetch() -> tuple[Image, ...]:
            out = []
            for attachment in attachments:
                data = await read(attachment)
                out.append(
                    Image(
                        data=base64.b64encode(data).decode("ascii"),
                        mime_type=attachment.content_type or "image/png",
                    )
                )
            return tuple(out)

        return fetch


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "connection failed"
    text = one_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
