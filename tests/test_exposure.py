"""What outsiders can reach: the HTTP endpoint (Host check, token) and group chats."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anyio
import pytest

from evie.chat.commands import REFUSAL
from evie.cli import _status
from evie.config import parse_config
from evie.http import serve_http
from evie.sessions.manager import SessionManager
from tests.conftest import fake_launcher
from tests.harness import OWNER, DiscordHarness
from tests.test_discord import dc  # noqa: F401 - the fixture
from tests.test_telegram import Harness, prompts, tg  # noqa: F401 - the fixture

pytestmark = pytest.mark.anyio

GROUP = -500


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[SessionManager]:
    async with SessionManager(fake_launcher(tmp_path)) as m:
        yield m


async def get(port: int, path: str, **headers: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as response,
    ):
        return response.status, await response.text()


async def test_a_foreign_host_header_is_refused(manager: SessionManager) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    async with serve_http("127.0.0.1:0", manager, manager.metrics) as port:
        for path in ("/status", "/metrics", "/healthz"):
            assert (await get(port, path, Host=f"evil.example:{port}"))[0] == 421
            assert (await get(port, path, Host="evil.example"))[0] == 421
        assert (await get(port, "/status"))[0] == 200  # Host: 127.0.0.1:<port>
        assert (await get(port, "/status", Host=f"localhost:{port}"))[0] == 200
        assert (await get(port, "/status", Host="127.0.0.1:1"))[0] == 421


async def test_with_a_token_requests_must_carry_it(manager: SessionManager, tmp_path: Path) -> None:
    async with serve_http("127.0.0.1:0", manager, manager.metrics, token="s3cret") as port:
        assert (await get(port, "/status"))[0] == 401
        assert (await get(port, "/metrics", Authorization="Bearer wrong"))[0] == 401
        status, body = await get(port, "/status", Authorization="Bearer s3cret")
        assert status == 200
        assert json.loads(body)["sessions"] == []
        # `evie status` sends the token from the config
        listen = {"listen": f"127.0.0.1:{port}"}
        with_token = parse_config({"http": {**listen, "token": "s3cret"}})
        without = parse_config({"http": listen})
        assert await anyio.to_thread.run_sync(_status, with_token) == 0
        assert await anyio.to_thread.run_sync(_status, without) == 1


async def test_commands_for_another_bot_never_reach_pi(tg: Harness) -> None:  # noqa: F811
    tg.fake.push_message("/status@OtherBot", user_id=OWNER, chat_id=GROUP, chat_type="group")
    tg.fake.push_message("/new@OtherBot hi", user_id=OWNER, chat_id=GROUP, chat_type="group")
    tg.fake.push_message("/help@OtherBot")  # in the owner's DM as well
    tg.fake.push_message("@evie_test_bot ping", user_id=OWNER, chat_id=GROUP, chat_type="group")
    await tg.final_text(GROUP, "echo: ping")
    assert tg.fake.chat_view(GROUP) == ["echo: ping"]
    assert tg.fake.chat_view(OWNER) == []
    assert prompts(tg.record) == ["ping"]


async def test_strangers_bare_commands_in_a_group_get_no_reply(tg: Harness) -> None:  # noqa: F811
    tg.fake.push_message("/status", user_id=7, chat_id=GROUP, chat_type="group")
    tg.fake.push_message("/start", user_id=8, chat_id=GROUP, chat_type="group")
    tg.fake.push_message("/status@evie_test_bot", user_id=9, chat_id=GROUP, chat_type="group")
    await tg.final_text(GROUP, REFUSAL)
    # a round trip through the same chat: everything pushed before has been handled
    tg.fake.push_message("@evie_test_bot ping", user_id=OWNER, chat_id=GROUP, chat_type="group")
    await tg.final_text(GROUP, "echo: ping")
    assert tg.fake.chat_view(GROUP) == [REFUSAL, "echo: ping"]
    assert prompts(tg.record) == ["ping"]


async def test_strangers_bare_commands_in_a_guild_get_no_reply(dc: DiscordHarness) -> None:  # noqa: F811
    await dc.fake.push_message("/status", user_id=7, channel_id=700, guild_id=1)
    await dc.fake.push_message("/help", user_id=8, channel_id=700, guild_id=1, mention_bot=True)
    await dc.shows(700, REFUSAL)
    # a round trip through the same channel: everything pushed before has been handled
    await dc.fake.push_message("ping", user_id=OWNER, channel_id=700, guild_id=1, mention_bot=True)
    await dc.shows(700, "echo: ping")
    assert dc.fake.channel_view(700) == [REFUSAL, "echo: ping"]
