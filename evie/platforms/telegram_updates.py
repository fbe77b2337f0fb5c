"""The common shape of a Telegram update, read with msgspec; any other goes to aiogram.

Most updates evie receives are one shape: a text message from a user in a private
chat or a group. Validating it through aiogram's ``Update`` (pydantic, a model per
object and aiogram's post-init hooks) was the largest single step of a small turn's
polling side (adr/0016 §11). :func:`read_plain` reads exactly that shape — strict
types, no key it does not know at any level — into small structs that carry the
attribute names of aiogram's ``Message`` which evie's translation reads. Anything
else (a photo, a caption, a reply, a forum topic's message that names its topic's
first message, a key added by a future Bot API, a value of another type) is not
read here: it returns None and the update goes through aiogram's full validation
as before, with its errors. A property test checks that whatever this accepts,
aiogram accepts as well and evie translates it to the same message.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec

#: ``date`` as aiogram reads it (pydantic's datetime from a Unix time): values far
#: outside this range are read differently (milliseconds) or refused there
_UnixTime = Annotated[int, msgspec.Meta(ge=0, lt=2**32)]


class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """No unknown keys: an update with more than evie's shape goes to aiogram."""


class PlainUser(_Strict, frozen=True):
    id: int
    is_bot: bool
    first_name: str
    last_name: str | None = None
    username: str | None = None
    language_code: str | None = None
    is_premium: bool | None = None


class PlainChat(_Strict, frozen=True):
    id: int
    type: str
    title: str | None = None
    username: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    is_forum: bool | None = None


class PlainEntity(_Strict, frozen=True):
    """A formatting entity without a user (a ``text_mention`` goes to aiogram)."""

    type: str
    offset: int
    length: int
    user: ClassVar[None] = None


class PlainMessage(_Strict, frozen=True):
    """A text message; what is not read here is None, as on aiogram's ``Message``."""

    message_id: int
    date: _UnixTime
    chat: PlainChat
    from_user: PlainUser | None = msgspec.field(default=None, name="from")
    text: str | None = None
    message_thread_id: int | None = None
    is_topic_message: bool | None = None
    entities: list[PlainEntity] | None = None
    caption: ClassVar[None] = None
    caption_entities: ClassVar[None] = None
    photo: ClassVar[None] = None
    reply_to_message: ClassVar[None] = None


class _PlainUpdate(_Strict, frozen=True):
    update_id: int
    message: PlainMessage


def read_plain(item: dict[str, Any]) -> PlainMessage | None:
    """The update's message if the update has exactly the common shape, else None."""
    try:
        return msgspec.convert(item, _PlainUpdate, strict=True).message
    except msgspec.ValidationError:
        return None
