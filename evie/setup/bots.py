"""The few Telegram and Discord calls set-up needs, made directly over aiohttp.

Checking a token (``getMe``, ``users/@me``) and finding the owner's user id
(the first person who sends the one-time code shown in the terminal) are
one-off conversations: no chat library, no dispatcher. Every failure becomes
a :class:`BotCheckFailed` with one line that says what to do.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp
import anyio
import attrs
import yarl

TELEGRAM_API = "https://api.telegram.org"
DISCORD_API = "https://discord.com/api/v10"
DISCORD_GATEWAY = "wss://gateway.discord.gg"

# what evie's Discord adapter asks for (evie/platforms/discord.py)
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15
INTENTS = INTENT_GUILDS | INTENT_GUILD_MESSAGES | INTENT_DIRECT_MESSAGES | INTENT_MESSAGE_CONTENT
# view channels, send messages, embed links, attach files, read history, send in threads
PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 38)


class BotCheckFailed(Exception):
    """One line for the user: what went wrong and the fix."""


@attrs.frozen
class BotIdentity:
    id: int
    username: str


@attrs.frozen
class Owner:
    user_id: int
    username: str | None


def one_time_code() -> str:
    return f"{secrets.randbelow(1_000_000):06d}"


def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


# -- Telegram -------------------------------------------------------------------------


async def _telegram(
    session: aiohttp.ClientSession, base: str, token: str, method: str, **params: Any
) -> Any:
    url = f"{base}/bot{token}/{method}"
    # form-encoded, as the Bot API documents it (objects and lists as JSON strings)
    form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    try:
        async with session.post(url, data=form) as response:
            body = await response.read()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise BotCheckFailed(f"cannot reach the Telegram Bot API at {base}: {exc}") from None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise BotCheckFailed(
            f"{base} did not answer like the Telegram Bot API (HTTP {response.status}); "
            "check [telegram] api_url"
        )
    if data.get("ok") is not True:
        description = data.get("description", f"HTTP {response.status}")
        if response.status in (401, 404):
            raise BotCheckFailed(
                f"Telegram rejected the bot token ({description}): "
                "copy it again from @BotFather (/mybots → API Token)"
            )
        if response.status == 409:
            raise BotCheckFailed(
                f"Telegram says another program is reading this bot's updates ({description}): "
                "stop the running `evie run` (or `evie service`) during set-up"
            )
        raise BotCheckFailed(f"Telegram answered {method} with an error: {description}")
    return data.get("result")


async def telegram_me(base: str, token: str, *, seconds: float = 15.0) -> BotIdentity:
    async with aiohttp.ClientSession(timeout=_timeout(seconds)) as session:
        me = await _telegram(session, base, token, "getMe")
    if not isinstance(me, dict) or not isinstance(me.get("id"), int):
        raise BotCheckFailed("Telegram's getMe answer has no bot id; check [telegram] api_url")
    return BotIdentity(me["id"], str(me.get("username") or me["id"]))


async def telegram_capture_owner(
    base: str, token: str, code: str, *, seconds: float = 300.0, poll: int = 20
) -> Owner:
    """Wait for a private message containing ``code``; its sender is the owner.

    Other messages get a short hint. The updates read here are confirmed, so a
    later ``evie run`` does not answer them again.
    """
    offset: int | None = None
    async with aiohttp.ClientSession(timeout=_timeout(poll + 15)) as session:
        with anyio.move_on_after(seconds):
            while True:
                params: dict[str, Any] = {"timeout": poll, "allowed_updates": ["message"]}
                if offset is not None:
                    params["offset"] = offset
                updates = await _telegram(session, base, token, "getUpdates", **params)
                for update in updates if isinstance(updates, list) else []:
                    if not isinstance(update, dict) or not isinstance(update.get("update_id"), int):
                        continue
                    offset = update["update_id"] + 1
                    owner = await _telegram_update(session, base, token, update, code)
                    if owner is not None:
                        # confirm what was read, without waiting for more
                        await _telegram(session, base, token, "getUpdates", offset=offset)
                        return owner
    raise BotCheckFailed(
        f"no message with the code {code} arrived within {seconds:g}s: run `evie setup` again"
    )


async def _telegram_update(
    session: aiohttp.ClientSession, base: str, token: str, update: dict[str, Any], code: str
) -> Owner | None:
    message = update.get("message")
    if not isinstance(message, dict):
        return None
    sender, chat = message.get("from"), message.get("chat")
    if not isinstance(sender, dict) or not isinstance(chat, dict):
        return None
    if chat.get("type") != "private" or not isinstance(sender.get("id"), int):
        return None
    text = str(message.get("text") or "")
    owner = code in text
    reply = (
        "✅ You are this bot's owner now. Finish the set-up in your terminal."
        if owner
        else "Hello! Now send the 6-digit code shown in the terminal running `evie setup`."
    )
    try:
        await _telegram(session, base, token, "sendMessage", chat_id=chat["id"], text=reply)
    except BotCheckFailed:
        pass  # a courtesy: the capture does not depend on it
    return Owner(sender["id"], sender.get("username")) if owner else None


# -- Discord --------------------------------------------------------------------------


async def _discord(
    session: aiohttp.ClientSession, base: str, token: str, method: str, path: str, **body: Any
) -> Any:
    headers = {"Authorization": f"Bot {token}", "User-Agent": "DiscordBot (evie, 0.1)"}
    try:
        async with session.request(
            method, f"{base}/{path}", headers=headers, json=body or None
        ) as response:
            raw = await response.read()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise BotCheckFailed(f"cannot reach Discord at {base}: {exc}") from None
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        data = None
    if response.status == 401:
        raise BotCheckFailed(
            "Discord rejected the bot token (401 Unauthorized): copy it again from the "
            "Developer Portal (your application → Bot → Reset Token)"
        )
    if response.status >= 400 or (raw and data is None):
        message = data.get("message") if isinstance(data, dict) else None
        raise BotCheckFailed(
            f"Discord answered {method} /{path} with HTTP {response.status}"
            + (f" ({message})" if message else "")
            + "; check [discord] api_url and try again"
        )
    return data


async def discord_me(base: str, token: str, *, seconds: float = 15.0) -> BotIdentity:
    async with aiohttp.ClientSession(timeout=_timeout(seconds)) as session:
        me = await _discord(session, base, token, "GET", "users/@me")
    if not isinstance(me, dict) or "id" not in me:
        raise BotCheckFailed("Discord's users/@me answer has no id; check [discord] api_url")
    return BotIdentity(int(me["id"]), str(me.get("username") or me["id"]))


async def discord_application_id(base: str, token: str, *, seconds: float = 15.0) -> int:
    async with aiohttp.ClientSession(timeout=_timeout(seconds)) as session:
        app = await _discord(session, base, token, "GET", "oauth2/applications/@me")
    if not isinstance(app, dict) or "id" not in app:
        raise BotCheckFailed("Discord's application answer has no id; check [discord] api_url")
    return int(app["id"])


def discord_invite_url(application_id: int) -> str:
    return (
        "https://discord.com/oauth2/authorize"
        f"?client_id={application_id}&scope=bot+applications.commands&permissions={PERMISSIONS}"
    )


_GATEWAY_CLOSE_FIXES = {
    4004: "Discord rejected the bot token: copy it again from the Developer Portal",
    4014: "the Message Content intent is off: enable it in the Developer Portal "
    "(your application → Bot → Privileged Gateway Intents → Message Content Intent)",
}


async def discord_capture_owner(
    api: str,
    gateway: str,
    token: str,
    code: str,
    *,
    seconds: float = 300.0,
    on_ready: Callable[[], None] | None = None,
) -> Owner:
    """Connect to the gateway and wait for a message containing ``code`` (DM or channel)."""
    url = yarl.URL(gateway).update_query(v="10", encoding="json")
    async with aiohttp.ClientSession(timeout=_timeout(seconds + 30)) as session:
        try:
            ws = await session.ws_connect(url, heartbeat=None, timeout=_ws_timeout())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise BotCheckFailed(f"cannot reach the Discord gateway at {gateway}: {exc}") from None
        outcome: Owner | BotCheckFailed | None = None
        async with ws, anyio.create_task_group() as tg:  # the heartbeat's owner
            with anyio.move_on_after(seconds):
                try:
                    outcome = await _gateway_session(session, api, token, code, ws, tg, on_ready)
                except BotCheckFailed as exc:  # raised below, not as an exception group
                    outcome = exc
            tg.cancel_scope.cancel()
    if isinstance(outcome, BotCheckFailed):
        raise outcome
    if outcome is not None:
        return outcome
    raise BotCheckFailed(
        f"no message with the code {code} arrived within {seconds:g}s: run `evie setup` again"
    )


def _ws_timeout() -> aiohttp.ClientWSTimeout:
    return aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0)


async def _gateway_session(
    session: aiohttp.ClientSession,
    api: str,
    token: str,
    code: str,
    ws: aiohttp.ClientWebSocketResponse,
    tg: anyio.abc.TaskGroup,
    on_ready: Callable[[], None] | None,
) -> Owner:
    seq: list[int | None] = [None]
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            continue
        try:
            payload = json.loads(msg.data)
        except ValueError:
            continue
        if not isinstance(payload, dict):
            continue
        if payload.get("s") is not None:
            seq[0] = payload["s"]
        op, data = payload.get("op"), payload.get("d")
        if op == 10 and isinstance(data, dict):
            interval = float(data.get("heartbeat_interval", 41250)) / 1000
            tg.start_soon(_heartbeat, ws, interval, seq)
            identify = {
                "token": token,
                "intents": INTENTS,
                "properties": {"os": "linux", "browser": "evie", "device": "evie"},
            }
            await ws.send_str(json.dumps({"op": 2, "d": identify}))
        elif op == 0 and payload.get("t") == "READY" and on_ready is not None:
            on_ready()
        elif op == 0 and payload.get("t") == "MESSAGE_CREATE" and isinstance(data, dict):
            author = data.get("author")
            if not isinstance(author, dict) or author.get("bot"):
                continue
            content = str(data.get("content") or "")
            channel = data.get("channel_id")
            if code in content:
                await _courtesy(session, api, token, channel, "✅ You are this bot's owner now.")
                return Owner(int(author["id"]), author.get("username"))
            if "guild_id" not in data:  # a DM without the code: say what to send
                await _courtesy(
                    session, api, token, channel, "Hello! Now send the code shown by `evie setup`."
                )
    fix = _GATEWAY_CLOSE_FIXES.get(ws.close_code or 0)
    raise BotCheckFailed(fix or f"the Discord gateway closed the connection (code {ws.close_code})")


async def _courtesy(
    session: aiohttp.ClientSession, api: str, token: str, channel: object, text: str
) -> None:
    try:
        await _discord(session, api, token, "POST", f"channels/{channel}/messages", content=text)
    except BotCheckFailed:
        pass  # the capture does not depend on it


async def _heartbeat(
    ws: aiohttp.ClientWebSocketResponse, interval: float, seq: list[int | None]
) -> None:
    while not ws.closed:
        await anyio.sleep(interval)
        try:
            await ws.send_str(json.dumps({"op": 1, "d": seq[0]}))
        except (aiohttp.ClientError, ConnectionError):
            return  # the session loop sees the close and reports it
