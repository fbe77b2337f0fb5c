"""Chat logic shared by every platform: access control, commands, turns, acknowledgements.

Messages from allowed users pass through the durable inbox (:meth:`ChatFrontend.accept`,
then :meth:`ChatFrontend.admit` once the batch is on disk); replies and notices leave
through the durable outbox, delivered by the :class:`Courier` (adr/0012).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

import anyio
import anyio.abc
import attrs

from evie.agent.events import AssistantMessage, FollowUpStarted, Prompt, TurnEvent, TurnFinished
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
from evie.chat.courier import Courier, CourierSettings
from evie.chat.streaming import Delivery, ReplyStreamer, one_line
from evie.durable.inbox import QUEUED, STARTED, Inbox, InboxItem
from evie.durable.outbox import Outbox
from evie.errors import EvieError, ShuttingDown
from evie.logs import chat_var
from evie.sessions.manager import EventSink, Queued, SessionManager

log = logging.getLogger(__name__)
STOPPING_NOTICE = "⏸ evie is stopping; this message is kept and answered when evie is back."
#: how long a batch's intake write waits for its messages' turns to record that they start,
#: so that one write carries both (adr/0016); it only delays the platform's next offset
ADMIT_LINGER = 0.005


@attrs.frozen
class Accepted:
    """A message past de-duplication; ``seq`` is its inbox item (None: a stranger's)."""

    msg: Incoming
    seq: int | None


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
        typing_delay: float = 0.5,
        refusal_interval: float = 3600.0,
        bot_username: str | None = None,
        platform: str = "",
        max_chunks: int = 8,
        inbox: Inbox | None = None,
        outbox: Outbox | None = None,
        courier: CourierSettings | None = None,
    ) -> None:
        self.platform = platform
        self.inbox = inbox if inbox is not None else Inbox()  # no path: in memory only
        self.outbox = outbox if outbox is not None else Outbox()
        self.courier = Courier(self.outbox, transport, platform, courier)
        self._inflight: dict[str, list[int]] = {}  # chat -> items handed to pi, not finished
        self.manager = manager
        self.transport = transport
        self.allowed = frozenset(allowed_user_ids)
        self.delivery = delivery or Delivery()
        self.edit_interval = edit_interval
        self.typing_interval = typing_interval
        self.typing_delay = typing_delay
        self.refusal_interval = refusal_interval
        self.bot_username = bot_username
        self._refused: OrderedDict[int, float] = OrderedDict()
        self.max_chunks = max_chunks
        self._streamers: dict[str, set[ReplyStreamer]] = {}  # replies in flight, per chat
        self._last: OrderedDict[str, str] = OrderedDict()  # the last reply per chat, for /last
        #: the last finished turn's streamer per chat: /stop drops its reply's unsent entries
        self._delivering: OrderedDict[str, ReplyStreamer] = OrderedDict()
        #: extra lines for /status (how each platform is doing), set by whoever knows them
        self.status_footer: Callable[[], str] | None = None

    # -- intake: the inbox ------------------------------------------------------------

    def accept(self, msg: Incoming) -> Accepted | None:
        """Put an allowed user's message in the inbox (in memory); None for a replay
        or for ``/cmd@OtherBot`` (not ours, and never a prompt for pi).

        Call :meth:`admit` with the batch afterwards: it makes the batch durable
        before anything runs, and only then may the platform's offset move on.
        """
        if for_another_bot(msg.text.strip(), self.bot_username):
            return None
        if not self.allows(msg.user_id):
            return Accepted(msg, None)  # strangers get a refusal; nothing to keep
        item = self.inbox.add(msg.chat.key, msg.user_id, msg.message_id, msg.text)
        if item is None:
            log.info("chat %s: ignoring replayed message %s", msg.chat.key, msg.message_id)
            return None
        return Accepted(msg, item.seq)

    async def admit(self, batch: list[Accepted], tg: anyio.abc.TaskGroup) -> None:
        """Handle the batch in order; return once it (and any cursor set with it) is on disk.

        Handling starts at once, because nothing it does is irrevocable before the item
        is durable: a turn or a command first writes its item ``started`` (with a group
        commit that carries everything changed before, the item itself included), and a
        follow-up handed to a running turn that is lost with the process is delivered
        again by the platform, whose offset has not moved (as a ``queued`` item would
        run again). So the batch's write waits (at most :data:`ADMIT_LINGER`) until each
        message has begun its turn (its start written) or found it must wait, and one
        fsync'd write records the messages, the offset and the turns' start (adr/0016).
        """
        placed = []
        for accepted in batch:
            event = anyio.Event()
            placed.append(event)
            tg.start_soon(self.process, accepted, event, tg)
        with anyio.move_on_after(ADMIT_LINGER):
            for event in placed:
                await event.wait()
        await self.inbox.commit()

    def resume(self, tg: anyio.abc.TaskGroup) -> int:
        """Handle, in order, this platform's inbox items left from before a restart."""
        items = self.inbox.pending(self.platform)
        for item in items:
            tg.start_soon(self.process, Accepted(self._incoming(item), item.seq), None, tg)
        if items:
            log.info("%s: resuming %d message(s) received before the restart", self.platform,
                     len(items))  # fmt: skip
        return len(items)

    @staticmethod
    def _incoming(item: InboxItem) -> Incoming:
        chat = ChatRef.from_key(item.chat)
        assert chat is not None
        return Incoming(chat, item.user_id, item.text, message_id=item.message_id)

    async def handle(self, msg: Incoming) -> None:
        """Accept one message and handle it to completion (run it in its own task)."""
        accepted = self.accept(msg)
        if accepted is None:
            return
        await self.inbox.commit()
        async with anyio.create_task_group() as tg:
            await self.process(accepted, tg=tg)

    async def process(
        self,
        accepted: Accepted,
        placed: anyio.Event | None = None,
        tg: anyio.abc.TaskGroup | None = None,
    ) -> None:
        """Handle one message; ``placed`` is set once its turn records its start or
        it is clear that no turn starts now (see :meth:`admit`). ``tg`` (the task group
        this runs in) owns the turn's "typing…" and live edits, should they start."""
        msg, seq = accepted.msg, accepted.seq
        chat_var.set(msg.chat.key)
        finished = False
        try:
            if seq is None:  # a stranger's
                if msg.addressed:  # a bare /cmd in a group draws no public reply
                    await self._refuse(msg)
                return
            command = parse_command(msg.text.strip(), self.bot_username)
            if command is not None:
                await self._started(seq, placed)
                await self._command(command, msg.chat)
                finished = True
            else:
                finished = await self._converse(msg, seq, placed, tg)
        except Exception as exc:  # one chat's bug must not take the interface (and every chat) down
            finished = True
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
                await self.say(msg.chat, "⚠️ Something went wrong inside evie; see its log.")
        finally:
            if placed is not None:
                placed.set()
            if seq is not None:
                self._settle(msg.chat.key, seq, finished)

    async def _started(self, seq: int, placed: anyio.Event | None = None) -> None:
        """Record that this item's turn begins (before it does): it will never run twice.

        The write carries the batch's intake too (made before the turn began); ``placed``
        is set once it is on disk, so that the intake waits once, for that very write,
        instead of waking to queue for it (adr/0016 §10).
        """
        self.inbox.mark(seq, STARTED)
        try:
            await self.inbox.commit()
        finally:
            if placed is not None:
                placed.set()

    def _settle(self, key: str, seq: int, finished: bool) -> None:
        """Remove a handled item. One cut short before it started stays, to run again.

        A removal is durable against ``kill -9`` at once (the inbox's done log); the
        document itself is rewritten with the next intake, not once more per turn.
        """
        item = self.inbox.get(seq)
        if item is None or seq in self._inflight.get(key, ()):
            return  # queued into a running turn: that turn's end settles it
        if finished or item.state == STARTED:
            self.inbox.remove(seq)

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
        try:  # best effort, and never queued for a stranger
            await self.delivery.run(lambda: self.transport.send(msg.chat, REFUSAL, formatted=False))
        except DeliveryError as exc:
            log.info("chat %s: could not deliver a refusal: %s", msg.chat.key, exc)

    async def say(self, chat: ChatRef, text: str) -> None:
        """Queue a notice for this chat in the outbox; the courier delivers it in order."""
        self.outbox.put(chat.key, text)
        await self.outbox.commit()

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
            streamers = set(self._streamers.get(chat.key, set()))
            finished = self._delivering.get(chat.key)
            if finished is not None:
                streamers.add(finished)
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
            await self.say(chat, f"ℹ️ {text}")
            posted += 1
        return posted

    def allows(self, user_id: int) -> bool:
        return user_id in self.allowed

    async def _converse(
        self,
        msg: Incoming,
        seq: int,
        placed: anyio.Event | None = None,
        tg: anyio.abc.TaskGroup | None = None,
    ) -> bool:
        """Run or queue the message; False when evie is stopping and it never reached pi
        (it stays in the inbox and runs after the restart)."""
        images = msg.images
        if msg.fetch_images is not None:
            try:
                images = images + await msg.fetch_images()
            except DeliveryError as exc:  # say so; a prompt without its image would mislead pi
                log.warning("chat %s: image download failed: %s", msg.chat.key, exc)
                await self.say(msg.chat, IMAGE_FAILED.format(error=one_line(exc, 120)))
                return True
        if not msg.text.strip() and not images:
            return True
        prompt = Prompt(msg.text, images)
        key = msg.chat.key
        streamer = ReplyStreamer(
            self.transport,
            msg.chat,
            self.delivery,
            edit_interval=self.edit_interval,
            max_chunks=self.max_chunks,
            on_reply=lambda text: self._remember(key, text),
            outbox=self.outbox,
        )
        self._streamers.setdefault(key, set()).add(streamer)
        inflight = self._inflight.setdefault(key, [])
        inflight.append(seq)  # from here pi may take it as a follow-up of a running turn
        result = None
        taken = True
        beside = self._beside_later(tg, msg.chat, streamer)
        try:
            result = await self.manager.send(
                key,
                prompt,
                self._tracking(key, seq, streamer),
                on_start=lambda: self._started(seq, placed),
            )
        except ShuttingDown:
            taken = False
            await self.say(msg.chat, STOPPING_NOTICE)
        except EvieError as exc:
            await self.say(msg.chat, f"⚠️ {exc}")
        finally:
            await beside.stop()  # "typing…" and live edits end with the turn, before its reply
            streamers = self._streamers.get(key, set())
            streamers.discard(streamer)
            if not streamers:
                self._streamers.pop(key, None)
            self._delivering[key] = streamer  # its reply may still be in the outbox: /stop
            self._delivering.move_to_end(key)
            while len(self._delivering) > 64:
                self._delivering.popitem(last=False)
            if not isinstance(result, Queued) and seq in inflight:
                inflight.remove(seq)
        if isinstance(result, Queued):
            item = self.inbox.get(seq)
            if item is not None and item.state != STARTED:
                self.inbox.mark(seq, QUEUED)  # durable with the next commit; reruns if lost
            how = "I'll steer the current work with it" if result.steer else "I'll answer it next"
            await self.say(msg.chat, f"📥 Got it — {how} (queued #{result.position}).")
        return taken

    def _tracking(self, key: str, seq: int, sink: EventSink) -> EventSink:
        """The turn's sink, recording follow-ups as pi starts them (before their answers)."""

        answering: list[int | None] = [seq]  # the item whose answer pi is writing now

        async def on_event(event: TurnEvent) -> None:
            inflight = self._inflight.get(key, [])
            if isinstance(event, FollowUpStarted):
                started = self._followup(inflight, seq, event.text)
                if started is not None:
                    await self._started(started)
                answering[0] = started
            await sink(event)
            done = answering[0]
            if isinstance(event, AssistantMessage) and event.stop_reason != "toolUse" and done:
                # its answer is in the outbox now: a restart must not call it interrupted
                answering[0] = None
                if done != seq and done in inflight:
                    inflight.remove(done)
                self.inbox.remove(done)  # (durable at once: the done log, see _settle)
            if isinstance(event, TurnFinished):
                for other in list(inflight):
                    item = self.inbox.get(other)
                    if other != seq and item is not None and item.state in (STARTED, QUEUED):
                        inflight.remove(other)  # answered in this turn, or told unanswered
                        self.inbox.remove(other)

        return on_event

    def _followup(self, inflight: list[int], running: int, text: str) -> int | None:
        """Which queued item pi just started: the oldest with this text, else the oldest."""
        candidates = []
        for seq in inflight:
            item = self.inbox.get(seq)
            if seq != running and item is not None and item.state != STARTED:
                candidates.append(item)
        for item in candidates:
            if item.text == text:
                return item.seq
        return candidates[0].seq if candidates else None

    def _beside_later(
        self, tg: anyio.abc.TaskGroup | None, chat: ChatRef, streamer: ReplyStreamer
    ) -> _BesideTimer:
        """ "typing…" and the live edits, started in ``tg`` only once the first of them is
        due: a turn answered sooner (most) starts no task at all, only a timer of the event
        loop (adr/0016 §9, §10) — and makes no task group of its own (§12): the task is
        ``tg``'s, under a cancel scope the turn cancels, and the turn waits for its end
        (:meth:`_BesideTimer.stop`). Without ``tg`` nothing starts."""
        waited = min(self.typing_delay, streamer.edit_interval)
        timer = _BesideTimer()
        if tg is None:
            return timer

        async def beside(scope: anyio.CancelScope, ended: anyio.Event) -> None:
            try:
                with scope:
                    async with anyio.create_task_group() as inner:
                        inner.start_soon(self._keep_typing, chat, self.typing_delay - waited)
                        inner.start_soon(streamer.live_updates, waited)
            except Exception as exc:  # a nicety: whatever went wrong, the turn goes on
                log.warning("chat %s: typing or live updates failed: %s", chat.key,
                            one_line(sole_error(exc), 200))  # fmt: skip
                log.debug("chat %s: beside the turn", chat.key, exc_info=True)
            finally:
                ended.set()

        def begin() -> None:
            timer.scope, timer.ended = anyio.CancelScope(), anyio.Event()
            tg.start_soon(beside, timer.scope, timer.ended)

        timer.handle = asyncio.get_running_loop().call_later(waited, begin)
        return timer

    async def _keep_typing(self, chat: ChatRef, delay: float) -> None:
        """ "typing…" while a turn runs; not for one answered within ``typing_delay``
        (a request to the platform per message that nobody would see, adr/0016)."""
        await anyio.sleep(delay)
        while True:
            try:
                await self.transport.typing(chat)
            except Exception as exc:  # a nicety: whatever the answer, the turn goes on
                log.debug("chat %s: typing indicator failed: %s", chat.key, exc)
            await anyio.sleep(self.typing_interval)


@attrs.define
class _BesideTimer:
    """The loop timer that starts a turn's "typing…" and live edits (evie runs on asyncio:
    aiogram and discord.py need it); once it has fired, ``scope`` is the started task's
    and ``ended`` is set when that task is over."""

    handle: asyncio.TimerHandle | None = None
    scope: anyio.CancelScope | None = None
    ended: anyio.Event | None = None

    async def stop(self) -> None:
        """Cancel the timer, or the started task, and wait until that task is over (as a
        task group of the turn's own would at its end). ``ended`` is always set: anyio
        delivers a cancellation to a task only once it has started, i.e. inside the
        ``try`` whose ``finally`` sets it."""
        if self.handle is not None:
            self.handle.cancel()
        if self.scope is not None and self.ended is not None:
            self.scope.cancel()
            with anyio.CancelScope(shield=True):
                await self.ended.wait()


def sole_error(exc: BaseException) -> BaseException:
    """The one error inside (nested) single-member exception groups, else ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
