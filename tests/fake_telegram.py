"""A fake Telegram Bot API on 127.0.0.1 for driving the real aiogram.

It speaks the HTTP API aiogram uses (form-encoded POSTs, multipart for
files, ``{"ok": ...}`` envelopes), long-polls ``getUpdates``, keeps every
chat's messages (with edits) and documents so tests can read what a user
would see, and injects faults per method: 429 with ``retry_after``, 400
``can't parse entities``, 400 ``message is not modified`` (also produced
naturally), 5xx, 401, 409; an HTML error page instead of JSON (what a proxy in
front of the Bot API sends), a connection reset, and an answer that hangs.
``push_raw`` queues any update JSON, e.g. one aiogram cannot validate
(:func:`poison_update`). Lengths are checked as Telegram does: at most 4096
UTF-16 code units of text *after entity parsing* (1024 for captions).
"""

from __future__ import annotations

import html.parser
import json
import socket
import struct
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
    """Telegram's HTML rules, roughly: known tags only, properly nested; the text it leaves."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.error: str | None = None
        self.text: list[str] = []

    def handle_data(self, data: str) -> None:
        self.text.append(data)

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


def visible_text(text: str, parse_mode: str | None) -> str:
    """The message text after entity parsing (what Telegram counts and shows)."""
    if parse_mode != "HTML":
        return text
    parser = _HtmlCheck()
    parser.feed(text)
    parser.close()
    return "".join(parser.text)


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@attrs.define
class Document:
    chat_id: int
    thread_id: int | None
    filename: str
    data: bytes
    caption: str


@attrs.define
class Fault:
    status: int = 0
    description: str = ""
    retry_after: int | None = None
    html: bool = False  # answer an HTML error page (status ``status``) instead of JSON
    reset: bool = False  # reset the connection instead of answering
    hang: float = 0.0  # wait this long first; then answer normally when status is 0


HTML_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
HTML_BAD_GATEWAY = Fault(502, html=True)
RESET = Fault(reset=True)
CONFLICT = Fault(
    409,
    "Conflict: terminated by other getUpdates request; make sure that only one bot "
    "instance is running",
)
UNAUTHORIZED = Fault(401, "Unauthorized")


def poison_update(update_id: int, user_id: int, text: str = "look at my story") -> dict[str, Any]:
    """A reply to a story whose ``story`` is empty: real Telegram sent it (aiogram #1587);
    aiogram's models reject it."""
    return {
        "update_id": update_id,
        "message": {
            "message_id": 90_000 + update_id,
            "date": int(time.time()),
            "chat": {"id": user_id, "type": "private", "first_name": "A"},
            "from": {"id": user_id, "is_bot": False, "first_name": "A"},
            "text": text,
            "reply_to_story": {},
        },
    }


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
    documents: list[Document] = attrs.Factory(list)
    _updates: list[dict[str, Any]] = attrs.Factory(list)
    _next_update: int = 1
    _next_message: int = 5000
    _changed: anyio.Event = attrs.Factory(anyio.Event)
    _closing: bool = False
    max_poll: float = 1.0
    delay: float = 0.0  # seconds each send/edit takes: a slow Telegram
    max_upload: int = 50_000_000  # sendDocument refuses a bigger file, as the Bot API does
    down: bool = False  # an outage: every method answers 503 while set
    holds: dict[str, anyio.Event] = attrs.Factory(dict)  # method -> gate: answers wait for it
    reject_html: bool = False  # refuse every HTML message, as if our markup were broken
    commands: list[dict[str, Any]] = attrs.Factory(list)  # the menu setMyCommands set

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
        username: str | None = None,
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
        if username is not None:
            message["from"]["username"] = username
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

    def push_raw(self, make: Any) -> int:
        """Queue an update built by ``make(update_id)`` exactly as given (no validation)."""
        update_id = self._next_update
        self._next_update += 1
        self._updates.append(make(update_id))
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
        form = await request.post()
        params = {k: str(v) for k, v in form.items() if not isinstance(v, web.FileField)}
        uploads = {k: v for k, v in form.items() if isinstance(v, web.FileField)}
        self.calls.append((method, params))
        self._wake()
        if request.match_info["token"] != TOKEN:  # what the real Bot API says to a bad token
            return self._error(401, "Unauthorized")
        if self.down:
            return self._error(503, "Service Unavailable")
        gate = self.holds.get(method)
        if gate is not None:
            await gate.wait()
        if self.faults[method]:
            fault = self.faults[method].popleft()
            if fault.hang:
                await anyio.sleep(fault.hang)
            if fault.reset:
                sock = request.transport.get_extra_info("socket") if request.transport else None
                if sock is not None:  # SO_LINGER 0: close sends RST, as a dropped proxy does
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                if request.transport is not None:
                    request.transport.close()
                return web.Response(status=500)
            if fault.html:
                return web.Response(text=HTML_502, status=fault.status, content_type="text/html")
            if fault.status:
                return self._fault_response(fault)
        if self.delay and method in ("sendMessage", "editMessageText", "sendDocument"):
            await anyio.sleep(self.delay)
        if method == "sendDocument":
            return self._send_document(params, uploads)
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return self._error(404, "Not Found: method not found")
        result: Any = await handler(params)
        if isinstance(result, web.Response):
            return result
        return web.json_response({"ok": True, "result": result})

    @staticmethod
    def _fault_response(fault: Fault) -> web.Response:
        body: dict[str, Any] = {
            "ok": False,
            "error_code": fault.status,
            "description": fault.description,
        }
        if fault.retry_after is not None:
            body["parameters"] = {"retry_after": fault.retry_after}
        return web.json_response(body, status=fault.status)

    @staticmethod
    def _error(status: int, description: str) -> web.Response:
        body = {"ok": False, "error_code": status, "description": description}
        return web.json_response(body, status=status)

    async def _m_getMe(self, params: dict[str, str]) -> Any:
        return BOT

    async def _m_deleteWebhook(self, params: dict[str, str]) -> Any:
        return True

    async def _m_setMyCommands(self, params: dict[str, str]) -> Any:
        self.commands = json.loads(params.get("commands", "[]"))
        return True

    async def _m_getMyCommands(self, params: dict[str, str]) -> Any:
        return self.commands

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
        if params.get("parse_mode") == "HTML":
            problem = "rejected by the test" if self.reject_html else html_error(text)
            if problem:
                return self._error(400, f"Bad Request: can't parse entities: {problem}")
        shown = visible_text(text, params.get("parse_mode"))
        if not shown.strip():
            return self._error(400, "Bad Request: message text is empty")
        if utf16_len(shown) > 4096:
            return self._error(400, "Bad Request: message is too long")
        return None

    def _send_document(
        self, params: dict[str, str], uploads: dict[str, web.FileField]
    ) -> web.Response:
        ref = params.get("document", "")  # aiogram sends "attach://<field>"
        upload = uploads.get(ref.removeprefix("attach://")) or uploads.get("document")
        if upload is None:
            return self._error(400, "Bad Request: there is no document in the request")
        caption = params.get("caption", "")
        if utf16_len(visible_text(caption, params.get("parse_mode"))) > 1024:
            return self._error(400, "Bad Request: message caption is too long")
        data = upload.file.read()
        if len(data) > self.max_upload:
            return self._error(413, "Request Entity Too Large")
        thread = params.get("message_thread_id")
        document = Document(
            chat_id=int(params["chat_id"]),
            thread_id=int(thread) if thread else None,
            filename=upload.filename,
            data=data,
            caption=caption,
        )
        self.documents.append(document)
        self._next_message += 1
        m = ChatMessage(self._next_message, document.chat_id, document.thread_id, "", None)
        self._wake()
        out = self._message_json(m)
        del out["text"]
        out["caption"] = caption
        out["document"] = {"file_id": f"doc{m.message_id}", "file_unique_id": "d",
                           "file_name": document.filename}  # fmt: skip
        return web.json_response({"ok": True, "result": out})

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
async def running_fake_telegram(port: int = 0) -> AsyncIterator[FakeTelegram]:
    fake = FakeTelegram()
    # the body limit is the fake's max_upload (413, as the Bot API answers), not aiohttp's 1 MiB
    app = web.Application(client_max_size=fake.max_upload + 1_000_000)
    app.router.add_route("*", "/bot{token}/{method}", fake._api)
    app.router.add_get("/file/bot{token}/{path:.*}", fake._file)
    async with serve_on_loopback(app, port) as fake.port:
        try:
            yield fake
        finally:
            fake._closing = True  # let a parked long poll return so the server can stop
            fake._wake()
