"""evie's lean sendMessage / editMessageText send exactly what aiogram's own methods send.

The request body is compared byte for byte with aiogram's ``build_form_data`` of its
``SendMessage`` / ``EditMessageText`` with the same arguments (adr/0016 §9), for random
texts, chats, threads and parse modes; the answer side (any shape) is covered end to end
in test_telegram.py and test_faults.py.
"""

from __future__ import annotations

from typing import Any

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.methods import EditMessageText, SendMessage, TelegramMethod
from aiogram.types import LinkPreviewOptions
from hypothesis import given, settings
from hypothesis import strategies as st

from evie.platforms.telegram import (
    LeanSession,
    _EditText,
    _LeanMethod,
    _RawGetUpdates,
    _SendText,
)

chat_ids = st.one_of(st.integers(-(10**13), 10**13), st.just("@channel"))
threads = st.none() | st.integers(1, 10**9)
modes = st.sampled_from([None, "HTML"])
texts = st.text(max_size=300)
PLAIN, LEAN = AiohttpSession(), LeanSession()  # (each builds an SSL context: once)


def _body(session: AiohttpSession, bot: Bot, method: TelegramMethod[Any]) -> bytes:
    payload = session.build_form_data(bot, method)()
    return bytes(payload._value)


@settings(max_examples=300, deadline=None)
@given(chat=chat_ids, text=texts, thread=threads, mode=modes, message_id=st.integers(1, 10**9))
def test_lean_bodies_equal_aiograms(
    chat: int | str, text: str, thread: int | None, mode: str | None, message_id: int
) -> None:
    plain, lean = PLAIN, LEAN
    bot = Bot("1:x", session=plain)
    no_preview = LinkPreviewOptions(is_disabled=True)
    sent = SendMessage(chat_id=chat, text=text, message_thread_id=thread, parse_mode=mode,
                       link_preview_options=no_preview)  # fmt: skip
    ours = _SendText.model_construct(chat_id=chat, text=text, message_thread_id=thread,
                                     parse_mode=mode)  # fmt: skip
    assert _body(lean, bot, ours) == _body(plain, bot, sent)
    edit = EditMessageText(chat_id=chat, message_id=message_id, text=text, parse_mode=mode,
                           link_preview_options=no_preview)  # fmt: skip
    ours_edit = _EditText.model_construct(chat_id=chat, message_id=message_id, text=text,
                                          parse_mode=mode)  # fmt: skip
    assert _body(lean, bot, ours_edit) == _body(plain, bot, edit)
    assert _SendText.__api_method__ == SendMessage.__api_method__
    assert _EditText.__api_method__ == EditMessageText.__api_method__


@settings(max_examples=200, deadline=None)
@given(
    offset=st.none() | st.integers(0, 10**12),
    timeout=st.none() | st.integers(0, 50),
    allowed=st.none() | st.lists(st.sampled_from(["message", "edited_message"]), max_size=2),
)
def test_lean_get_updates_body_equals_aiograms(
    offset: int | None, timeout: int | None, allowed: list[str] | None
) -> None:
    bot = Bot("1:x", session=PLAIN)
    ours = _RawGetUpdates.model_construct(offset=offset, timeout=timeout, allowed_updates=allowed)
    validated = _RawGetUpdates(offset=offset, timeout=timeout, allowed_updates=allowed)
    aiograms = AiohttpSession.build_form_data(PLAIN, bot, validated)()
    assert _body(LEAN, bot, ours) == bytes(aiograms._value)


_message_ids = st.one_of(
    st.integers(-(2**63), 2**63), st.booleans(), st.text(max_size=3), st.floats(), st.none()
)
_results = st.one_of(
    st.fixed_dictionaries({"message_id": _message_ids}, optional={"text": st.text(max_size=5)}),
    st.booleans(),
    st.none(),
    st.integers(),
    st.text(max_size=5),
    st.lists(
        st.one_of(
            st.fixed_dictionaries({"update_id": st.integers(0, 10**9)}),
            st.integers(),
            st.text(max_size=3),
        ),
        max_size=3,
    ),
)
_answers = st.one_of(
    st.fixed_dictionaries(
        {"ok": st.sampled_from([True, False, 1, "true", None])},
        optional={"result": _results, "description": st.text(max_size=5)},
    ),
    st.lists(st.integers(), max_size=2),
    st.text(max_size=5),
)


@settings(max_examples=500, deadline=None)
@given(answer=_answers)
def test_lean_answers_read_as_aiogram_reads_them(answer: object) -> None:
    """What the lean call reads itself (a 200 answer of the expected shape), aiogram's
    ``check_response`` reads to the same result; everything else is left to aiogram."""
    import json

    bot = Bot("1:x", session=LEAN)
    made: dict[type[_LeanMethod], dict[str, Any]] = {
        _SendText: {"chat_id": 1, "text": "x"},
        _EditText: {"chat_id": 1, "text": "x", "message_id": 2},
        _RawGetUpdates: {"offset": 1},
    }
    for kind, values in made.items():
        ours = kind.read(answer)
        if ours is None:
            continue  # aiogram's check_response decides (errors, validation)
        method = kind.model_construct(**values)
        theirs = LEAN.check_response(bot, method, 200, json.dumps(answer)).result
        if isinstance(theirs, (bool, list)):
            assert ours == theirs
            assert type(ours) is type(theirs)
        else:
            assert theirs is not None
            assert ours.message_id == theirs.message_id
            assert type(ours.message_id) is int
