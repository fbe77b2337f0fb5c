"""A fake Telegram Bot API on 127.0.0.1 for driving the real aiogram.

It speaks the HTTP API aiogram uses (form-encoded POSTs, ``{"ok": ...}``
envelopes), long-polls ``getUpdates``, keeps every chat's messages (with
edits) so tests can read what a user would see, and injects faults per
method: 429 with ``retry_after``, 400 ``can't parse entities``, 400
``message is not modified`` (also produced naturally), 5xx.
"""

from __future__ import annotations

import html.parser
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
from aiohttp import web

from tests.loopback import serve_on_loopback

BOT = {"id": 999, "is_bot": True, "first_name": "evie", "username": "evie_test_bot"}
TOKEN = "123456:TEST-token-for-the-fake-bot-api_xyz"
ALLOWED_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "code", "pre", "a",
                "blockquote", "tg-spoiler", "span"}  # fmt: skip


class _HtmlCheck(html.parser.HTMLParser):
    """Telegram's HTML rules, roughly: known tags only, properly nested."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.error: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ALLOWED_TAGS:
            self.error = f'Unsupported start tag "{tag}"'
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.error = f'Unexpected end tag "{tag}"'
        else:
            self.stack.pop()


def html_error(text: str) -> str | None:
    parser = _HtmlCheck()
    parser.feed(text)
    parser.close()
    if parser.error is None and parser.stack:
        parser.error = f'Can\'t find end tag corresponding to start tag "{parser.stack[-1]}"'
    return parser.error


@attrs.define
class Fault:
    status: int
    description: str
    retry_after: int | None = None


@attrs.define
class ChatMessage:
    message_id: int
    chat_id: int
    thread_id: int | None
    text: str
    parse_mode: str | None
    edits: int = 0


@attrs.define
class FakeTelegram:
    port: int = 0
    calls: list[tuple[str, dict[str, str]]] = attrs.Factory(list)
    messages: dict[int, ChatMessage] = attrs.Factory(dict)  # by message_id
    faults: dict[str, deque[Fault]] = attrs.Factory(lambda: defaultdict(deque))
    files: dict[str, bytes] = attrs.Factory(dict)
    _updates: list[dict[str, Any]] = attrs.Factory(list)
    _next_update: int = 1
    _next_message: int = 5000
    _changed: anyio.Event = attrs.Factory(anyio.Event)
    _closing: bool = False
    max_poll: float = 1.0
    delay: float = 0.0  # seconds each send/edit takes: a slow Telegram
    down: bool = False  # an outage: every method answers 503 while set
    holds: dict[str, anyio.Event] = attrs.Factory(dict)  # method -> gate: answers wait for it

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- test controls ---------------------------------------------------------

    def hold(self, method: str) -> anyio.Event:
        """Calls to ``method`` wait (a hung Telegram) until the returned event is set."""
        gate = self.holds[method] = anyio.Event()
        return gate

    def inject(self, method: str, fault: Fault, times: int = 1) -> None:
        for _ in range(times):
            self.faults[method].append(fault)

    def push_message(
        self,
        text: str | None,
        *,
        user_id: int = 42,
        chat_id: int | None = None,
        chat_type: str = "private",
        thread_id: int | None = None,
        photo_bytes: bytes | None = None,
        entities: list[dict[str, Any]] | None = None,
        reply_to_bot: bool = False,
    ) -> int:
        chat_id = user_id if chat_id is None else chat_id
        self._next_message += 1
        message: dict[str, Any] = {
            "message_id": self._next_message,
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": chat_type, "first_name": "A"}
            if chat_type == "private"
            else {
                "id": chat_id,
                "type": chat_type,
                "title": "G",
                "is_forum": thread_id is not None,
            },
            "from": {"id": user_id, "is_bot": False, "first_name": "A"},
        }
        if text is not None:
            message["caption" if photo_bytes else "text"] = text
        if entities:
            message["caption_entities" if photo_bytes else "entities"] = entities
        if thread_id is not None:
            message["message_thread_id"] = thread_id
            message["is_topic_message"] = True
        if photo_bytes is not None:
            file_id = f"photo{self._next_message}"
            self.files[file_id] = photo_bytes
            message["photo"] = [
                {"file_id": file_id + "s", "file_unique_id": "s", "width": 90, "height": 90},
                {"file_id": file_id, "file_unique_id": "l", "width": 800, "height": 800},
            ]
            self.files[file_id + "s"] = b"small"
        if reply_to_bot:
            message["reply_to_message"] = {
                "message_id": 1,
                "date": int(time.time()),
                "chat": message["chat"],
                "from": BOT,
                "text": "earlier",
            }
        update_id = self._next_update
        self._next_update += 1
        self._updates.append({"update_id": update_id, "message": message})
        self._wake()
        return update_id

    def chat_view(self, chat_id: int, thread_id: int | None = None) -> list[str]:
        """The texts a user sees in this chat, oldest first (edits applied)."""
        return [
            m.text
            for m in sorted(self.messages.values(), key=lambda m: m.message_id)
            if m.chat_id == chat_id and m.thread_id == thread_id
        ]

    def method_calls(self, method: str) -> list[dict[str, str]]:
        return [params for name, params in self.calls if name == method]

    async def wait_for(self, predicate: Any, seconds: float = 10.0) -> None:
        with anyio.fail_after(seconds):
            while not predicate():
                await self._changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # -- the API -----------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = {k: str(v) for k, v in (await request.post()).items()}
        self.calls.append((method, params))
        self._wake()
        if self.down:
            return self._error(503, "Service Unavailable")
        gate = self.holds.get(method)
        if gate is not None:
            await gate.wait()
        if self.faults[method]:
            fault = self.faults[method].popleft()
            body: dict[str, Any] = {
                "ok": False,
                "error_code": fault.status,
                "description": fault.description,
            }
            if fault.retry_after is not None:
                body["parameters"] = {"retry_after": fault.retry_after}
            return web.json_response(body, status=fault.status)
        if self.delay and method in ("sendMessage", "editMessageText"):
            await anyio.sleep(self.delay)
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return self._error(404, "Not Found: method not found")
        result: Any = await handler(params)
        if isinstance(result, web.Response):
            return result
        return web.json_response({"ok": True, "result": result})

    @staticmethod
    def _error(status: int, description: str) -> web.Response:
        body = {"ok": False, "error_code": status, "description": description}
        return web.json_response(body, status=status)

    async def _m_getMe(self, params: dict[str, str]) -> Any:
        return BOT

    async def _m_deleteWebhook(self, params: dict[str, str]) -> Any:
        return True

    async def _m_setMyCommands(self, params: dict[str, str]) -> Any:
        return True

    async def _m_sendChatAction(self, params: dict[str, str]) -> Any:
        return True

    async def _m_getUpdates(self, params: dict[str, str]) -> Any:
        offset = int(params.get("offset", "0") or 0)
        timeout = min(float(params.get("timeout", "0") or 0), self.max_poll)
        self._updates = [u for u in self._updates if u["update_id"] >= offset]
        with anyio.move_on_after(timeout):
            while not self._updates and not self._closing:
                await self._changed.wait()
        return list(self._updates)

    def _check_text(self, params: dict[str, str]) -> web.Response | None:
        text = params.get("text", "")
        if not text.strip():
            return self._error(400, "Bad Request: message text is empty")
        if len(text) > 4096:
            return self._error(400, "Bad Request: message is too long")
        if params.get("parse_mode") == "HTML":
            problem = html_error(text)
            if problem:
                return self._error(400, f"Bad Request: can't parse entities: {problem}")
        return None

    def _message_json(self, m: ChatMessage) -> dict[str, Any]:
        out: dict[str, Any] = {
            "message_id": m.message_id,
            "date": int(time.time()),
            "chat": {"id": m.chat_id, "type": "private", "first_name": "A"},
            "from": BOT,
            "text": m.text,
        }
        if m.thread_id is not None:
            out["message_thread_id"] = m.thread_id
        if m.edits:
            out["edit_date"] = int(time.time())
        return out

    async def _m_sendMessage(self, params: dict[str, str]) -> Any:
        problem = self._check_text(params)
        if problem is not None:
            return problem
        self._next_message += 1
        thread = params.get("message_thread_id")
        m = ChatMessage(
            message_id=self._next_message,
            chat_id=int(params["chat_id"]),
            thread_id=int(thread) if thread else None,
            text=params["text"],
            parse_mode=params.get("parse_mode"),
        )
        self.messages[m.message_id] = m
        self._wake()
        return self._message_json(m)

    async def _m_editMessageText(self, params: dict[str, str]) -> Any:
        m = self.messages.get(int(params.get("message_id", "0")))
        if m is None or m.chat_id != int(params.get("chat_id", "0")):
            return self._error(400, "Bad Request: message to edit not found")
        problem = self._check_text(params)
        if problem is not None:
            return problem
        if params["text"] == m.text and params.get("parse_mode") == m.parse_mode:
            return self._error(
                400,
                "Bad Request: message is not modified: specified new message content and "
                "reply markup are exactly the same as a current content and reply markup "
                "of the message",
            )
        m.text = params["text"]
        m.parse_mode = params.get("parse_mode")
        m.edits += 1
        self._wake()
        return self._message_json(m)

    async def _m_getFile(self, params: dict[str, str]) -> Any:
        file_id = params["file_id"]
        if file_id not in self.files:
            return self._error(400, "Bad Request: invalid file_id")
        return {
            "file_id": file_id,
            "file_unique_id": file_id,
            "file_size": len(self.files[file_id]),
            "file_path": f"photos/{file_id}.jpg",
        }

    async def _file(self, request: web.Request) -> web.Response:
        name = request.match_info["path"].rsplit("/", 1)[-1].removesuffix(".jpg")
        data = self.files.get(name)
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="image/jpeg")


@asynccontextmanager
async def running_fake_telegram() -> AsyncIterator[FakeTelegram]:
    fake = FakeTelegram()
    app = web.Application()
    app.router.add_route("*", "/bot{token}/{method}", fake._api)
    app.router.add_get("/file/bot{token}/{path:.*}", fake._file)
    async with serve_on_loopback(app) as fake.port:
        try:
            yield fake
        finally:
            fake._closing = True  # let a parked long poll return so the server can stop
            fake._wake()
