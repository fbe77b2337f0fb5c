"""The contract between chat platforms and the shared chat logic.

A platform adapter (Telegram, Discord) turns its updates into
:class:`Incoming` and implements :class:`Transport` — send, edit, typing,
send a file, and its Markdown flavour and limits. Everything else
(commands, access control, streaming edits, chunking, retries, follow-up
acknowledgements) lives once in
:mod:`evie.chat.frontend` and :mod:`evie.chat.streaming`.

Transports report failures as the small hierarchy below, so the retry policy
is written once: :class:`RetryLater` (rate limited: wait exactly this long),
:class:`Transient` (5xx, network: back off and retry), :class:`FormattingRejected`
(re-send as plain text), :class:`Permanent` (give up on this operation).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import attrs

from evie.agent.events import Image
from evie.chat.render import Flavor


class DeliveryError(Exception):
    """A chat platform refused or failed an operation."""


class RetryLater(DeliveryError):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"rate limited for {seconds:g}s")
        self.seconds = seconds


class Transient(DeliveryError):
    """Server error or network trouble: retry with backoff."""


class FormattingRejected(DeliveryError):
    """The platform could not parse the formatted text."""


class Permanent(DeliveryError):
    """Retrying will not help (bad request, forbidden, message gone)."""


@attrs.frozen
class ChatRef:
    """Where to answer: a chat, and a thread/topic inside it when there is one."""

    platform: str
    chat_id: int
    thread_id: int | None = None

    @property
    def key(self) -> str:
        """The SessionManager key: each chat and each thread is its own session."""
        base = f"{self.platform}:{self.chat_id}"
        return base if self.thread_id is None else f"{base}:{self.thread_id}"

    @classmethod
    def from_key(cls, key: str) -> ChatRef | None:
        """The inverse of :attr:`key`; None for keys that are not chat keys (``terminal``)."""
        parts = key.split(":")
        try:
            if len(parts) == 2:
                return cls(parts[0], int(parts[1]))
            if len(parts) == 3:
                return cls(parts[0], int(parts[1]), int(parts[2]))
        except ValueError:
            pass
        return None


@attrs.frozen
class Incoming:
    """A message from a user, already stripped of the bot mention."""

    chat: ChatRef
    user_id: int
    text: str
    message_id: int | None = None
    images: tuple[Image, ...] = ()
    #: the sender's @username, when the platform has one (for the refusal log line)
    username: str | None = None
    # images are fetched only for allowed users, and only when the message is handled
    fetch_images: Callable[[], Awaitable[tuple[Image, ...]]] | None = None
    #: meant for this bot (a DM, a mention, a reply, ``/cmd@ThisBot``), not a bare ``/cmd``
    #: in a group: only addressed messages from strangers are answered with a refusal
    addressed: bool = True


@attrs.frozen
class Sent:
    """A message the bot posted, to edit later."""

    message_id: int


class Transport(Protocol):
    """What a chat platform must provide. Raise the DeliveryError subclasses above."""

    #: longest message text the platform accepts, in its own units (flavor.units)
    max_length: int

    #: how Markdown is written and measured on this platform (evie.chat.render)
    flavor: Flavor

    def upload_limit(self, chat: ChatRef) -> int:
        """The biggest file a bot may upload in ``chat``, in bytes; a longer reply goes
        as several files. Answered from what the platform already told (no request)."""
        ...

    async def send(self, chat: ChatRef, text: str, *, formatted: bool) -> Sent: ...

    async def edit(self, chat: ChatRef, message: Sent, text: str, *, formatted: bool) -> None: ...

    async def typing(self, chat: ChatRef) -> None: ...

    async def send_document(self, chat: ChatRef, filename: str, data: bytes, caption: str) -> Sent:
        """Post a file (a long reply as Markdown) with a one-line caption."""
        ...
