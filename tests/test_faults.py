"""The fault suite: for each fault, nothing lost, nothing duplicated, order kept, nothing leaked.

(kill -9 of evie mid-turn lives in test_terminal.py; malformed and non-UTF-8 pi output and a pi
that exits at start in test_sessions.py; every test here and there is also checked for leaked
processes by the autouse fixture in conftest.py.)
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from evie.agent.events import AssistantMessage, Outcome, Prompt, TurnFinished
from evie.sessions.manager import SessionManager, SessionSettings
from tests.conftest import PI, Recorder, fake_launcher, real_launcher, start_turn
from tests.fake_llm import Reply, running_fake_llm
from tests.fake_telegram import FakeTelegram, Fault
from tests.harness import OWNER, serving_telegram

pytestmark = pytest.mark.anyio


@pytest.fixture
async def tg(tmp_path: Path) -> AsyncIterator[tuple[FakeTelegram, SessionManager]]:
    settings = SessionSettings(max_processes=64)
    async with serving_telegram(fake_launcher(tmp_path), settings=settings, edit_interval=0.3) as h:
        yield h.fake, h.manager


def answers(fake: FakeTelegram, chat: int) -> list[str]:
    return [t for t in fake.chat_view(chat) if t.startswith("echo: ")]


@pytest.mark.realpi
@pytest.mark.skipif(not PI.exists(), reason="pi is not installed (run npm ci)")
async def test_kill_9_of_real_pi_mid_turn(tmp_path: Path) -> None:
    async with running_fake_llm() as llm:
        llm.queue(Reply(text="first answer"), Reply(text="streaming " * 500, chunk=5, delay=0.01))
        async with SessionManager(real_launcher(tmp_path, llm)) as manager:
            await manager.send("chat", Prompt("one"), Recorder())
            async with anyio.create_task_group() as tg:
                rec = await start_turn(tg, manager, "chat", Prompt("two"))
                process = manager._slots["chat"].process
                assert process is not None
                os.kill(process.pid, signal.SIGKILL)
            result = rec.events[-1]
            assert isinstance(result, TurnFinished)
            assert result.outcome is Outcome.CRASHED
            assert "signal 9" in (result.error or "")
            rec3 = Recorder()
            assert await manager.send("chat", Prompt("three"), rec3) == TurnFinished(Outcome.DONE)
            # resumed: the finished exchange and the unanswered message are both in context
            assert llm.user_texts(llm.requests[-1]) == ["one", "two", "three"]


async def test_telegram_429_and_5xx_storm(tg: tuple[FakeTelegram, SessionManager]) -> None:
    fake, _manager = tg
    for _ in range(6):
        fake.inject("sendMessage", Fault(429, "Too Many Requests: retry after 1", 1))
        fake.inject("sendMessage", Fault(500, "Internal Server Error"))
        fake.inject("editMessageText", Fault(429, "Too Many Requests: retry after 1", 1))
        fake.inject("editMessageText", Fault(503, "Service Unavailable"))
    chats = [201, 202, 203, 204]
    for n in range(4):
        for chat in chats:
            fake.push_message(f"{chat}-{n}", user_id=OWNER, chat_id=chat)
    await fake.wait_for(lambda: all(len(answers(fake, c)) == 4 for c in chats), seconds=60)
    await anyio.sleep(0.3)
    for chat in chats:
        assert answers(fake, chat) == [f"echo: {chat}-{n}" for n in range(4)]


async def test_slow_telegram_while_pi_streams_a_megabyte(
    tg: tuple[FakeTelegram, SessionManager],
) -> None:
    fake, manager = tg
    fake.delay = 0.01  # every send and edit takes 10 ms
    size = 1_000_000
    unit = "0123456789abcdef" * 4 + "\n"
    expected = (unit * (size // len(unit) + 1))[:size].replace("\n", "")
    fake.push_message("script:" + json.dumps([{"big": size, "chunk": 4096}]))
    key = f"tg:{OWNER}"
    await fake.wait_for(
        lambda: (s := manager.get_status(key)) is not None and s.last_outcome is not None,
        seconds=120,
    )

    # the turn is over once the reply is in the outbox; delivery follows. 245 messages'
    # worth: the first one, and the whole reply as a file after it (both via the outbox)
    await fake.wait_for(lambda: len(fake.documents) == 1, seconds=60)
    view = fake.chat_view(OWNER)
    shown = [t for t in view if t[:1] in set("0123456789abcdef")]
    [document] = fake.documents
    assert document.data.decode().replace("\n", "") == expected  # every byte, once, in order
    assert len(shown) == 1
    assert expected.startswith(shown[0].replace("\n", ""))
    assert all(len(t) <= 4096 for t in view)
    status = manager.get_status(key)
    assert status is not None
    assert status.last_outcome is Outcome.DONE


async def test_a_thousand_messages_from_strangers(
    tg: tuple[FakeTelegram, SessionManager],
) -> None:
    fake, manager = tg
    for i in range(1000):
        fake.push_message(f"spam {i}", user_id=1000 + i % 10)
    fake.push_message("owner here")
    await fake.wait_for(lambda: answers(fake, OWNER) == ["echo: owner here"], seconds=60)
    for stranger in range(1000, 1010):
        assert fake.chat_view(stranger) == ["Sorry, this is a private assistant."]
    assert [s.key for s in manager.slots()] == [f"tg:{OWNER}"]


@pytest.mark.timeout(180)  # 1,000 turns via 50 fake pi: 19 s at load 5; its own wait allows 150
async def test_fifty_chats_twenty_messages_each(
    tg: tuple[FakeTelegram, SessionManager],
) -> None:
    fake, _manager = tg
    chats = list(range(3000, 3050))
    for n in range(20):
        for chat in chats:
            fake.push_message(f"{chat}/{n}", user_id=OWNER, chat_id=chat)
    await fake.wait_for(lambda: all(len(answers(fake, c)) >= 20 for c in chats), seconds=150)
    await anyio.sleep(0.5)
    for chat in chats:
        assert answers(fake, chat) == [f"echo: {chat}/{n}" for n in range(20)]


async def test_turn_outcomes_are_told_even_when_the_consumer_is_slow(tmp_path: Path) -> None:
    """A consumer far slower than pi still gets every event, in order, ending in the outcome."""
    async with SessionManager(fake_launcher(tmp_path)) as manager:
        rec = Recorder(delay=0.05)
        steps = [{"text": "a" * 200, "chunk": 1}, {"error": "boom", "max_retries": 0}]
        result = await manager.send("chat", Prompt("script:" + json.dumps(steps)), rec)
        assert result == TurnFinished(Outcome.FAILED, "boom")
        assert rec.text() == "a" * 200
        assert rec.of(AssistantMessage) == []
        assert rec.events[-1] == result
