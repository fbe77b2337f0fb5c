"""The plain update reader accepts only what aiogram reads the same way (adr/0016 §11).

``read_plain`` reads the common update shape with msgspec; every other update goes
through aiogram's ``Update``. The property: whatever ``read_plain`` accepts, aiogram
validates too, with equal values in every field evie reads, and evie translates both
to the same ``Incoming``. Updates are drawn near that shape: each value usually of its
type, sometimes of another; keys dropped; keys added (the Bot API's and unknown ones);
integers past 64 bits, dates past any calendar. End to end, test_telegram.py and
test_faults.py drive both paths (text messages here, photos, replies, poison updates
through aiogram) over the fake Bot API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from aiogram.types import Update
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from evie.config import TelegramConfig
from evie.platforms.telegram import TelegramInterface
from evie.platforms.telegram_updates import read_plain
from evie.sessions.manager import SessionManager
from tests.conftest import fake_launcher
from tests.fake_telegram import BOT

_anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=4),
    st.sampled_from(["1", "true", "private", "@evie_test_bot", ""]),
    st.just([]),
    st.just({}),
)
_ints = st.one_of(st.integers(-(2**40), 2**40), st.integers(-(2**70), 2**70))
_bools = st.booleans()
_names = st.one_of(st.text(max_size=6), st.sampled_from(["A", "evie_test_bot", "Ünï"]))
_dates = st.one_of(st.integers(0, 2**32 + 5), st.integers(-(2**40), 2**70), st.just(2**32 - 1))
_EXTRA = ["photo", "caption", "reply_to_message", "from_user", "edit_date", "sticker", "x", "url",
          "user", "forward_origin", "has_protected_content", "is_direct_messages"]  # fmt: skip


def _shape(
    required: dict[str, st.SearchStrategy[Any]],
    optional: dict[str, st.SearchStrategy[Any]],
    mutated: bool,
) -> st.SearchStrategy[dict[str, Any]]:
    """An object with these keys and values of their types; ``mutated``: some values of
    any type, sometimes one key dropped, sometimes one key added."""
    if not mutated:
        return st.fixed_dictionaries(required, optional=optional)

    def usually(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(good, good, good, _anything)

    def mutate(obj: dict[str, Any], drop: list[str], extra: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if k not in drop} | extra

    return st.builds(
        mutate,
        st.fixed_dictionaries(
            {k: usually(v) for k, v in required.items()},
            optional={k: usually(v) for k, v in optional.items()},
        ),
        st.one_of(st.just([]), st.just([]), st.lists(st.sampled_from(list(required)), max_size=1)),
        st.one_of(
            st.just({}),
            st.just({}),
            st.dictionaries(st.sampled_from(_EXTRA), _anything, max_size=1),
        ),
    )


def _updates_near_the_common_shape(mutated: bool) -> st.SearchStrategy[dict[str, Any]]:
    users = _shape(
        {"id": _ints, "is_bot": _bools, "first_name": _names},
        {"last_name": _names, "username": _names, "language_code": _names, "is_premium": _bools},
        mutated,
    )
    chats = _shape(
        {"id": _ints, "type": st.sampled_from(["private", "group", "supergroup", "channel"])},
        {"title": _names, "username": _names, "first_name": _names, "last_name": _names,
         "is_forum": _bools},
        mutated,
    )  # fmt: skip
    entities = _shape(
        {"type": st.sampled_from(["mention", "bot_command", "bold", "text_mention"]),
         "offset": st.integers(-1, 20), "length": st.integers(-1, 20)},
        {},
        mutated,
    )  # fmt: skip
    texts = st.one_of(st.text(max_size=20), st.sampled_from(["/new", "@evie_test_bot hi", "hi"]))
    messages = _shape(
        {"message_id": _ints, "date": _dates, "chat": chats},
        {"from": users, "text": texts, "message_thread_id": _ints, "is_topic_message": _bools,
         "entities": st.lists(entities, max_size=3)},
        mutated,
    )  # fmt: skip
    return _shape({"update_id": _ints, "message": messages}, {}, mutated)


_updates = st.one_of(
    _updates_near_the_common_shape(mutated=False), _updates_near_the_common_shape(mutated=True)
)


def _read_by_evie(message: Any) -> str:
    """Every field of a message evie reads, with its type (``repr``: ``1`` is not ``True``)."""
    user = message.from_user
    entities = message.entities
    return repr((
        message.message_id, message.text, message.caption, message.chat.id, message.chat.type,
        message.message_thread_id, message.is_topic_message, message.photo,
        message.reply_to_message, message.caption_entities,
        None if user is None else (user.id, user.is_bot, user.username),
        None if entities is None
        else [(e.type, e.offset, e.length, e.user) for e in entities],
    ))  # fmt: skip


@pytest.fixture(scope="module")
def interface(tmp_path_factory: pytest.TempPathFactory) -> TelegramInterface:
    tmp: Path = tmp_path_factory.mktemp("plain")
    config = TelegramConfig(token="1:x", allowed_user_ids=frozenset({1}))

    async def make() -> TelegramInterface:  # (its cancel scopes want a loop; never entered)
        return TelegramInterface(SessionManager(fake_launcher(tmp)), config)

    interface = anyio.run(make)
    bot_id = BOT["id"]
    assert isinstance(bot_id, int)
    interface._bot_id = bot_id  # as getMe sets it: replies and text mentions of the bot
    return interface


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(item=_updates)
def test_what_the_plain_reader_accepts_aiogram_reads_alike(
    item: dict[str, Any], interface: TelegramInterface
) -> None:
    plain = read_plain(item)
    if plain is None:
        return  # aiogram's validation decides, as before
    try:
        message = Update.model_validate(item).message
    except ValidationError as exc:  # pragma: no cover - the property failing
        pytest.fail(f"read_plain accepted what aiogram refuses: {exc}")
    assert message is not None
    assert _read_by_evie(plain) == _read_by_evie(message)
    assert interface._translate(plain) == interface._translate(message)


def test_the_common_shapes_are_read_plain_and_the_others_left_to_aiogram() -> None:
    """The fast path is taken for the messages a small turn brings (else it saves nothing)."""
    private: dict[str, Any] = {
        "update_id": 7,
        "message": {
            "message_id": 5001, "date": 1_764_000_000, "text": "hello",
            "chat": {"id": 42, "type": "private", "first_name": "A", "username": "a"},
            "from": {"id": 42, "is_bot": False, "first_name": "A", "username": "a",
                     "language_code": "en", "is_premium": True},
            "entities": [{"type": "bot_command", "offset": 0, "length": 4}],
        },
    }  # fmt: skip
    group = {
        "update_id": 8,
        "message": {
            "message_id": 5002, "date": 1_764_000_000, "text": "@evie_test_bot hi",
            "chat": {"id": -100, "type": "supergroup", "title": "G", "is_forum": True},
            "from": {"id": 42, "is_bot": False, "first_name": "A"},
            "message_thread_id": 3, "is_topic_message": True,
            "entities": [{"type": "mention", "offset": 0, "length": 14}],
        },
    }  # fmt: skip
    for item in (private, group):
        assert read_plain(item) is not None
    photo = {**private, "message": {**private["message"], "photo": []}}
    reply = {**private, "message": {**private["message"], "reply_to_message": {}}}
    caption = {**private, "message": {**private["message"], "caption": "c"}}
    as_string = {**private, "message": {**private["message"], "message_id": "5001"}}
    edited = {"update_id": 9, "edited_message": private["message"]}
    for item in (photo, reply, caption, as_string, edited):
        assert read_plain(item) is None
