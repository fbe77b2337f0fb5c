"""evie's lean sendMessage / editMessageText send exactly what aiogram's own methods send.

The request body is compared byte for byte with aiogram's ``build_form_data`` of its
``SendMessage`` / ``EditMessageText`` with the same arguments (adr/0016 §9), for random
texts, chats, threads and parse modes; the answer side (any shape) is covered end to end
in test_telegram.py and test_faults.py.
"""

from __future__ import annotations

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.methods import EditMessageText, SendMessage
from aiogram.types import LinkPreviewOptions
from hypothesis import given, settings
from hypothesis import strategies as st

from evie.platforms.telegram import LeanSession, _EditText, _RawGetUpdates, _SendText

chat_ids = st.one_of(st.integers(-(10**13), 10**13), st.just("@channel"))
threads = st.none() | st.integers(1, 10**9)
modes = st.sampled_from([None, "HTML"])
texts = st.text(max_size=300)
PLAIN, LEAN = AiohttpSession(), LeanSession()  # (each builds an SSL context: once)


def _body(session: AiohttpSession, bot: Bot, method: object) -> bytes:
    payload = session.build_form_data(bot, method)()  # type: ignore[arg-type]
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
