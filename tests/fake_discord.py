"""A fake Discord REST API and gateway websocket on 127.0.0.1, for the real discord.py.

REST: users/@me, oauth2/applications/@me, gateway/bot, channel messages
(create, edit, history with after/before/limit), typing. Gateway: HELLO,
IDENTIFY → READY, heartbeat ACK, RESUME → RESUMED with replay of what was missed,
MESSAGE_CREATE injection, forced disconnects. Faults per route: 429 (sent the way
Discord does, with a ``Via`` header, ``Retry-After`` and JSON ``retry_after``), 5xx.
Gateway outages: ``refuse_gateway`` answers that many websocket upgrades with an
HTML 502 page; ``gateway_down`` refuses them all while set (messages posted meanwhile
reach only REST history); ``forget_sessions`` answers RESUME with INVALID_SESSION.
Enforces the 2000-character limit (400, code 50035) and the message-content intent.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
from aiohttp import WSMsgType, web

from tests.loopback import serve_on_loopback

BOT_ID = 900_000_000_000_000_001
BOT_USER = {
    "id": str(BOT_ID),
    "username": "evie",
    "discriminator": "0",
    "avatar": None,
    "bot": True,
}
TOKEN = "fake-discord-token"
CONTENT_INTENT = 1 << 15
EPOCH_MS = 1420070400000


GUILD_ID = 1
CHANNEL_ID = 600
THREAD_ID = 601


#: a bot's upload limit in a server by its boost level (discord.py's _PREMIUM_GUILD_LIMITS)
GUILD_UPLOAD = {0: 10 * 1024 * 1024, 1: 10 * 1024 * 1024, 2: 50 * 1024 * 1024, 3: 100 * 1024 * 1024}


def _guild(premium_tier: int = 0) -> dict[str, Any]:
    """One guild with a text channel and a thread in it."""
    return {
        "id": str(GUILD_ID),
        "name": "Test guild",
        "premium_tier": premium_tier,
        "owner_id": "42",
        "unavailable": False,
        "large": False,
        "member_count": 2,
        "features": [],
        "emojis": [],
        "stickers": [],
        "members": [],
        "presences": [],
        "voice_states": [],
        "roles": [{"id": str(GUILD_ID), "name": "@everyone", "permissions": "0", "position": 0,
                   "color": 0, "hoist": False, "managed": False, "mentionable": False}],
        "channels": [{"id": str(CHANNEL_ID), "type": 0, "name": "general", "position": 0,
                      "permission_overwrites": []}],
        "threads": [{"id": str(THREAD_ID), "type": 11, "name": "a thread",
                     "parent_id": str(CHANNEL_ID), "owner_id": "42", "guild_id": str(GUILD_ID),
                     "thread_metadata": {"archived": False, "auto_archive_duration": 1440,
                                         "archive_timestamp": "2026-11-25T00:00:00+00:00",
                                         "locked": False},
                     "message_count": 0, "member_count": 1}],
    }  # fmt: skip


def _message_payload(
    message_id: int, channel_id: int, content: str, author: dict[str, Any]
) -> dict[str, Any]:
    """A message object as the gateway and REST API send it."""
    return {
        "id": str(message_id),
        "type": 0,
        "content": content,
        "channel_id": str(channel_id),
        "author": author,
        "attachments": [],
        "embeds": [],
        "mentions": [],
        "mention_roles": [],
        "pinned": False,
        "mention_everyone": False,
        "tts": False,
        "timestamp": "2026-11-25T00:00:00+00:00",
        "edited_timestamp": None,
        "flags": 0,
        "components": [],
    }


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py parses JSON only when Content-Type is exactly application/json
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


@attrs.define
class Fault:
    status: int
    retry_after: float = 0.0


@attrs.define
class PostedMessage:
    id: int
    channel_id: int
    content: str
    edits: int = 0
    attachments: list[tuple[str, bytes]] = attrs.Factory(list)  # (filename, data)


@attrs.define
class FakeDiscord:
    port: int = 0
    messages: dict[int, PostedMessage] = attrs.Factory(dict)
    calls: list[tuple[str, str]] = attrs.Factory(list)
    faults: dict[str, deque[Fault]] = attrs.Factory(lambda: defaultdict(deque))
    identifies: int = 0
    resumes: int = 0
    _counter: int = 0
    _seq: int = 0
    _events: list[dict[str, Any]] = attrs.Factory(list)  # every dispatch, for RESUME replay
    _ws: web.WebSocketResponse | None = None
    _intents: int = 0
    _changed: anyio.Event = attrs.Factory(anyio.Event)
    session_id: str = "fake-session"
    replay_overlap: int = 0  # RESUME replays this many already-delivered events too
    # False: the Message Content intent is off in the Developer Portal, so an IDENTIFY
    # asking for it is closed with 4014, as Discord does
    content_intent_enabled: bool = True
    app_commands: list[dict[str, Any]] = attrs.Factory(list)
    interaction_replies: dict[int, dict[str, Any]] = attrs.Factory(dict)
    interaction_followups: dict[int, list[str]] = attrs.Factory(dict)  # id -> contents
    #: like Discord, refuse ("Unknown interaction") a first answer later than this
    interaction_deadline: float = 3.0
    max_upload: int = 10 * 1024 * 1024  # a bot's limit in a DM: bigger attachments are refused
    premium_tier: int = 0  # the guild's boost level (set before evie connects), its upload limit
    _interactions_at: dict[int, float] = attrs.Factory(dict)
    files: dict[str, bytes] = attrs.Factory(dict)
    refuse_gateway: int = 0  # answer this many gateway connections with an HTML 502
    gateway_attempts: int = 0
    history: list[dict[str, Any]] = attrs.Factory(list)  # users' messages, for GET .../messages
    gateway_down: bool = False  # refuse gateway connections (REST stays up)
    forget_sessions: bool = False  # answer RESUME with INVALID_SESSION: nothing is replayed
    holds: dict[str, anyio.Event] = attrs.Factory(dict)  # REST path -> gate

    def hold(self, path: str) -> anyio.Event:
        """REST calls to ``path`` (e.g. ``users/@me``, the login) wait until the event is set."""
        gate = self.holds[path] = anyio.Event()
        return gate

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    def _snowflake(self) -> int:
        self._counter += 1
        return ((int(time.time() * 1000) - EPOCH_MS) << 22) | (self._counter & 0xFFF)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, predicate: Any, seconds: float = 10.0) -> None:
        with anyio.fail_after(seconds):
            while not predicate():
                await self._changed.wait()

    def channel_view(self, channel_id: int) -> list[str]:
        return [
            m.content
            for m in sorted(self.messages.values(), key=lambda m: m.id)
            if m.channel_id == channel_id
        ]

    def inject(self, route: str, fault: Fault, times: int = 1) -> None:
        for _ in range(times):
            self.faults[route].append(fault)

    # -- gateway ------------------------------------------------------------------

    async def _dispatch(self, event: str, data: dict[str, Any], *, record: bool = True) -> None:
        self._seq += 1
        payload = {"op": 0, "t": event, "s": self._seq, "d": data}
        if record:
            self._events.append(payload)
        if self._ws is not None and not self._ws.closed:
            await self._ws.send_str(json.dumps(payload))

    async def push_message(
        self,
        content: str,
        *,
        user_id: int = 42,
        channel_id: int = 500,
        guild_id: int | None = None,
        mention_bot: bool = False,
        attachments: list[dict[str, Any]] | None = None,
    ) -> int:
        message_id = self._snowflake()
        author = {"id": str(user_id), "username": f"user{user_id}", "discriminator": "0",
                  "avatar": None}  # fmt: skip
        if mention_bot:
            content = f"<@{BOT_ID}> {content}"
        if not self._intents & CONTENT_INTENT:
            content = ""  # what Discord does without the message-content intent
        data = _message_payload(message_id, channel_id, content, author)
        data["attachments"] = attachments or []
        data["mentions"] = [BOT_USER] if mention_bot else []
        self.history.append(dict(data))
        if guild_id is not None:
            data["guild_id"] = str(guild_id)
            data["member"] = {"roles": [], "joined_at": "2026-01-01T00:00:00+00:00",
                              "deaf": False, "mute": False}  # fmt: skip
        if self.gateway_down:
            return message_id  # posted, but no gateway to hear about it: only REST has it
        await self._dispatch("MESSAGE_CREATE", data)
        return message_id

    def attachment(self, name: str, data: bytes, content_type: str) -> dict[str, Any]:
        """An attachment object whose URL this fake serves."""
        self.files[name] = data
        return {"id": str(self._snowflake()), "filename": name, "size": len(data),
                "url": f"{self.base_url}/attachments/{name}",
                "proxy_url": f"{self.base_url}/attachments/{name}",
                "content_type": content_type}  # fmt: skip

    async def push_interaction(self, name: str, *, user_id: int = 42, channel_id: int = 500) -> int:
        """A slash command invocation in a DM channel."""
        interaction_id = self._snowflake()
        user = {"id": str(user_id), "username": f"user{user_id}", "discriminator": "0",
                "avatar": None}  # fmt: skip
        command = next(c for c in self.app_commands if c["name"] == name)
        data = {
            "id": str(interaction_id),
            "application_id": str(BOT_ID),
            "type": 2,
            "token": f"itoken{interaction_id}",
            "version": 1,
            "channel_id": str(channel_id),
            "channel": {"id": str(channel_id), "type": 1},
            "user": user,
            "locale": "en-US",
            "attachment_size_limit": 8_000_000,
            "authorizing_integration_owners": {},
            "context": 1,
            "data": {"id": command["id"], "name": name, "type": 1},
        }
        self._interactions_at[interaction_id] = time.monotonic()
        await self._dispatch("INTERACTION_CREATE", data)
        return interaction_id

    async def _attachment(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["name"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data)

    async def disconnect(self, code: int = 4000) -> None:
        """Drop the gateway connection; the client resumes on resume_gateway_url."""
        if self._ws is not None:
            await self._ws.close(code=code, message=b"forced by test")

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        self.gateway_attempts += 1
        self._wake()
        if self.refuse_gateway > 0:
            self.refuse_gateway -= 1
            page = "<html><body><h1>502 Bad Gateway</h1></body></html>"
            return web.Response(text=page, status=502, content_type="text/html")
        if self.gateway_down:
            return web.Response(status=503, text="gateway unavailable")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._ws = ws
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            payload = json.loads(msg.data)
            op = payload.get("op")
            if op == 1:
                await ws.send_str(json.dumps({"op": 11}))
            elif op == 2:
                self.identifies += 1
                self._intents = payload["d"].get("intents", 0)
                if self._intents & CONTENT_INTENT and not self.content_intent_enabled:
                    await ws.close(code=4014, message=b"Disallowed intent(s).")
                    break
                ready = {
                    "v": 10,
                    "user": BOT_USER,
                    "session_id": self.session_id,
                    "resume_gateway_url": self.gateway_url,
                    "guilds": [{"id": str(GUILD_ID), "unavailable": True}],
                    "application": {"id": str(BOT_ID), "flags": CONTENT_INTENT},
                }
                shard = payload["d"].get("shard")
                if shard:
                    ready["shard"] = shard
                await self._dispatch("READY", ready, record=False)
                await self._dispatch("GUILD_CREATE", _guild(self.premium_tier), record=False)
            elif op == 6 and self.forget_sessions:
                await ws.send_str(json.dumps({"op": 9, "d": False}))  # start a new session
            elif op == 6:
                self.resumes += 1
                since = (payload["d"].get("seq") or 0) - self.replay_overlap
                missed = [e for e in self._events if e["s"] > since]
                for event in missed:
                    await ws.send_str(json.dumps(event))
                await self._dispatch("RESUMED", {}, record=False)
            self._wake()
        if self._ws is ws:
            self._ws = None
        return ws

    # -- REST -------------------------------------------------------------------------

    def _fault(self, route: str) -> web.Response | None:
        if not self.faults[route]:
            return None
        fault = self.faults[route].popleft()
        if fault.status == 429:
            body = {"message": "You are being rate limited.", "retry_after": fault.retry_after,
                    "global": False}  # fmt: skip
            headers = {"Via": "1.1 google", "Retry-After": str(fault.retry_after),
                       "X-RateLimit-Scope": "user"}  # fmt: skip
            return _json(body, 429, headers)
        return _json({"message": "server error", "code": 0}, fault.status)

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        self.calls.append((request.method, path))
        self._wake()
        authorized = request.headers.get("Authorization") == f"Bot {TOKEN}"
        # interaction callbacks and webhooks are authorised by their own token in the URL
        if not authorized and not path.startswith(("interactions/", "webhooks/")):
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        gate = self.holds.get(path)
        if gate is not None:
            await gate.wait()
        route = f"{request.method} {path.split('/')[0]}"
        fault = self._fault(route)
        if fault is not None:
            return fault
        parts = path.split("/")
        if path == "users/@me":
            return _json(BOT_USER)
        if path == "oauth2/applications/@me":
            return _json({"id": str(BOT_ID), "name": "evie", "icon": None, "description": "",
                          "bot_public": False, "bot_require_code_grant": False,
                          "verify_key": "x", "flags": CONTENT_INTENT, "team": None,
                          "owner": BOT_USER})  # fmt: skip
        if path == "gateway/bot":
            return _json({"url": self.gateway_url, "shards": 1, "session_start_limit":
                          {"total": 1000, "remaining": 1000, "reset_after": 0,
                           "max_concurrency": 1}})  # fmt: skip
        if parts[0] == "applications" and parts[-1] == "commands" and request.method == "PUT":
            self.app_commands = [
                {**c, "id": str(self._snowflake()), "application_id": str(BOT_ID), "version": "1",
                 "type": c.get("type", 1)}
                for c in await request.json()
            ]  # fmt: skip
            return _json(self.app_commands)
        if parts[0] == "interactions" and parts[-1] == "callback":
            body = await request.json()
            interaction_id = int(parts[1])
            late = time.monotonic() - self._interactions_at[interaction_id]
            if late > self.interaction_deadline or interaction_id in self.interaction_replies:
                return _json({"message": "Unknown interaction", "code": 10062}, 404)
            self.interaction_replies[interaction_id] = body
            self._wake()
            message = self._message_json(
                PostedMessage(self._snowflake(), 0, body.get("data", {}).get("content", ""))
            )
            return _json({"interaction": {"id": str(interaction_id), "type": 2},
                          "resource": {"type": body["type"], "message": message}})  # fmt: skip
        if parts[0] == "webhooks" and len(parts) == 3 and request.method == "POST":
            # an interaction's follow-up: authorised by the interaction's token
            interaction_id = int(parts[2].removeprefix("itoken"))
            if interaction_id not in self.interaction_replies:
                return _json({"message": "Unknown Webhook", "code": 10015}, 404)
            body, _files = await self._message_body(request)
            content = body.get("content") or ""
            self.interaction_followups.setdefault(interaction_id, []).append(content)
            self._wake()
            return _json(self._message_json(PostedMessage(self._snowflake(), 0, content)))
        if parts[0] == "channels" and len(parts) >= 3:
            channel_id = int(parts[1])
            if parts[2] == "typing":
                return web.Response(status=204)
            if parts[2] == "messages" and request.method == "GET" and len(parts) == 3:
                return _json(self._channel_history(channel_id, request.query))
            if parts[2] == "messages":
                body, files = await self._message_body(request)
                content = body.get("content") or ""
                if len(content) > 2000:
                    return _json({"message": "Invalid Form Body", "code": 50035}, 400)
                in_guild = channel_id in (CHANNEL_ID, THREAD_ID)
                limit = GUILD_UPLOAD[self.premium_tier] if in_guild else self.max_upload
                if sum(len(data) for _name, data in files) > limit:
                    return _json({"message": "Request entity too large", "code": 40005}, 413)
                if request.method == "POST":
                    m = PostedMessage(self._snowflake(), channel_id, content, attachments=files)
                    self.messages[m.id] = m
                elif request.method == "PATCH" and len(parts) == 4:
                    found = self.messages.get(int(parts[3]))
                    if found is None:
                        return _json({"message": "Unknown Message", "code": 10008}, 404)
                    m = found
                    m.content = content
                    m.edits += 1
                else:
                    return _json({"message": "405: Method Not Allowed", "code": 0}, 405)
                self._wake()
                return _json(self._message_json(m))
        return _json({"message": "404: Not Found", "code": 0}, 404)

    @staticmethod
    async def _message_body(request: web.Request) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
        """JSON, or multipart with ``payload_json`` and ``files[n]`` when files are attached."""
        if request.content_type != "multipart/form-data":
            return await request.json(), []
        form = await request.post()
        files = [(v.filename, v.file.read()) for v in form.values() if isinstance(v, web.FileField)]
        return json.loads(str(form.get("payload_json", "{}"))), files

    def _channel_history(self, channel_id: int, query: Any) -> list[dict[str, Any]]:
        """GET /channels/{id}/messages: newest first, like Discord, with after/before/limit."""
        after = int(query.get("after", 0))
        before = int(query.get("before", 0)) or None
        limit = int(query.get("limit", 50))
        mine = [self._message_json(m) for m in self.messages.values() if m.channel_id == channel_id]
        found = [
            m
            for m in [*mine, *(h for h in self.history if int(h["channel_id"]) == channel_id)]
            if int(m["id"]) > after and (before is None or int(m["id"]) < before)
        ]
        found.sort(key=lambda m: int(m["id"]))
        page = found[:limit] if after else found[-limit:]
        return list(reversed(page))

    def _message_json(self, m: PostedMessage) -> dict[str, Any]:
        return _message_payload(m.id, m.channel_id, m.content, BOT_USER)


@asynccontextmanager
async def running_fake_discord(port: int = 0) -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    app = web.Application(client_max_size=GUILD_UPLOAD[3] + 1_000_000)  # the fake says 413
    app.router.add_get("/gateway", fake._gateway)
    app.router.add_get("/attachments/{name}", fake._attachment)
    app.router.add_route("*", "/api/v10/{path:.*}", fake._rest)
    async with serve_on_loopback(app, port) as fake.port:
        try:
            yield fake
        finally:
            if fake._ws is not None:
                await fake._ws.close()
