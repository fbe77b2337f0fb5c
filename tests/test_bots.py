"""The set-up's own Bot API / Discord calls against the fakes: captures, timeouts, refusals."""

from __future__ import annotations

import pytest

from evie.setup import bots
from tests.fake_discord import TOKEN as DISCORD_TOKEN
from tests.fake_discord import running_fake_discord
from tests.fake_telegram import TOKEN, Fault, running_fake_telegram

pytestmark = pytest.mark.anyio


async def test_telegram_capture_confirms_what_it_read() -> None:
    async with running_fake_telegram() as fake:
        fake.push_message("123456", user_id=7, chat_type="group", chat_id=-5)  # not private
        fake.push_message("hello", user_id=8)
        fake.push_message("code 123456 please", user_id=9, username="me")
        owner = await bots.telegram_capture_owner(fake.base_url, TOKEN, "123456", seconds=20)
        assert owner == bots.Owner(9, "me")
        last_poll = fake.method_calls("getUpdates")[-1]
        assert int(last_poll["offset"]) == 4  # all three updates confirmed: none is answered twice
        assert fake.chat_view(-5) == []  # a group is never where the owner is found


async def test_telegram_capture_gives_up_with_the_fix() -> None:
    async with running_fake_telegram() as fake:
        fake.max_poll = 0.2
        with pytest.raises(bots.BotCheckFailed, match=r"no message with the code 000000 .*again"):
            await bots.telegram_capture_owner(fake.base_url, TOKEN, "000000", seconds=1, poll=1)


async def test_telegram_conflict_says_to_stop_the_running_evie() -> None:
    async with running_fake_telegram() as fake:
        fake.inject("getUpdates", Fault(409, "Conflict: terminated by other getUpdates request"))
        with pytest.raises(bots.BotCheckFailed, match=r"stop the running `evie run`"):
            await bots.telegram_capture_owner(fake.base_url, TOKEN, "1", seconds=10)


async def test_discord_without_the_content_intent_says_where_to_turn_it_on() -> None:
    async with running_fake_discord() as fake:
        fake.content_intent_enabled = False
        with pytest.raises(bots.BotCheckFailed, match=r"Message Content Intent"):
            await bots.discord_capture_owner(
                fake.api_url, fake.gateway_url, DISCORD_TOKEN, "1", seconds=20
            )


async def test_discord_server_errors_are_one_line() -> None:
    from tests.fake_discord import Fault as DiscordFault

    async with running_fake_discord() as fake:
        fake.inject("GET users", DiscordFault(502))
        with pytest.raises(bots.BotCheckFailed, match=r"HTTP 502 .*try again"):
            await bots.discord_me(fake.api_url, DISCORD_TOKEN)
