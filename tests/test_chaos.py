"""Chaos: `kill -9` a real `evie run` at random points while ten chats talk to it.

The fake Bot API runs in the test process; evie runs as a subprocess with the fake
pi (which echoes each message). Each chat sends 20 numbered messages; evie is
killed with SIGKILL at random moments and started again each time. Afterwards:

* no message is answered twice, except replies whose send was cut off by a kill
  (evie reports each such "uncertain" re-send; Telegram's sendMessage cannot be
  made idempotent — adr/0012), and the test checks the duplicates never exceed them;
* per chat the answers come in the order the messages were sent;
* a message is unanswered only when its turn had begun at a kill (never run twice),
  and then its chat was told — so unanswered <= notices in that chat;
* no pi process is left behind.

``CHAOS_KILLS`` sets the number of kills (``just soak`` runs many); the counts are
shown in the summary at the end of the run.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.abc
import pytest

from evie.agent.reaper import marked_processes
from tests.conftest import FAKE_PI
from tests.fake_telegram import TOKEN, FakeTelegram
from tests.harness import kill_and_close

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent
OWNER = 42
CHATS = list(range(7001, 7011))
MESSAGES = 20
KILLS = int(os.environ.get("CHAOS_KILLS", "4"))
ANSWER = re.compile(r"echo: (\d+)/(\d+)")
NOTICES = ("evie was stopped while", "evie was restarted while")
QUOTED = re.compile(r"“(\d+/\d+)”")


def write_config(tmp_path: Path, fake: FakeTelegram) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\ncommand = ["{sys.executable}", "{FAKE_PI}"]\n'
        "[sessions]\nshutdown_grace = 2\nmax_processes = 16\n"
        f'[state]\ndir = "{tmp_path / "state"}"\n'
        f'[telegram]\ntoken = "{TOKEN}"\napi_url = "{fake.base_url}"\n'
        f"allowed_user_ids = [{OWNER}]\n"
        "[delivery]\nretry_base = 0.05\nretry_max = 0.5\nlate_after = 86400\n"
    )
    config.chmod(0o600)
    return config


async def start(config: Path, log: Path, fake: FakeTelegram) -> anyio.abc.Process:
    """`evie run`; returns once it polls Telegram (its log goes to ``log``)."""
    polls = len(fake.method_calls("getUpdates"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("ab") as err:
        proc = await anyio.open_process(
            [sys.executable, "-m", "evie.cli", "--config", str(config), "run"],
            env=env,
            stdout=err,
            stderr=err,
        )
    await fake.wait_for(lambda: len(fake.method_calls("getUpdates")) > polls, seconds=60)
    return proc


async def settle_then_stop(proc: anyio.abc.Process) -> None:
    """Give anything extra (a duplicate) a second to arrive, then SIGTERM: evie exits 0."""
    await anyio.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    with anyio.fail_after(30):
        assert await proc.wait() == 0


def tally(fake: FakeTelegram) -> dict[int, tuple[list[int], int]]:
    """Per chat: the numbers answered, in the order the user sees them, and notices told."""
    out = {}
    for chat in CHATS:
        numbers, notices = [], 0
        for text in fake.chat_view(chat):
            if any(n in text for n in NOTICES):
                notices += 1
                continue
            match = ANSWER.search(text)
            if match:
                assert int(match.group(1)) == chat, text
                numbers.append(int(match.group(2)))
        out[chat] = (numbers, notices)
    return out


def needless_notices(fake: FakeTelegram) -> int:
    """Notices quoting a message whose answer the user saw anyway: the live preview had
    streamed all of it when the kill cut the turn short, before the reply was recorded."""
    count = 0
    for chat in CHATS:
        answered = {m.group(0) for t in fake.chat_view(chat) if (m := ANSWER.search(t))}
        for text in fake.chat_view(chat):
            quoted = QUOTED.search(text)
            if any(n in text for n in NOTICES) and quoted and f"echo: {quoted[1]}" in answered:
                count += 1
    return count


def settled(fake: FakeTelegram) -> bool:
    """Every message answered or accounted for by a notice."""
    return all(len(set(n)) + told >= MESSAGES for n, told in tally(fake).values())


@pytest.mark.timeout(120 + 40 * KILLS)
async def test_kill_9_at_random_points(
    tmp_path: Path, telegram: FakeTelegram, report_figure: Callable[[str], None]
) -> None:
    fake = telegram
    rng = random.Random(os.environ.get("CHAOS_SEED"))
    config = write_config(tmp_path, fake)
    log = tmp_path / "evie.log"
    proc = await start(config, log, fake)

    # the rounds are spread over the instances, so every kill lands while messages flow
    schedule: list[list[int]] = [[] for _ in range(KILLS + 1)]
    for n in range(MESSAGES):
        schedule[n * (KILLS + 1) // MESSAGES].append(n)

    async def users(rounds: list[int]) -> None:
        for n in rounds:
            for chat in CHATS:
                fake.push_message(f"{chat}/{n}", user_id=OWNER, chat_id=chat)
            await anyio.sleep(rng.uniform(0.02, 0.3))

    kills = 0
    try:
        for instance, rounds in enumerate(schedule):
            async with anyio.create_task_group() as tg:
                tg.start_soon(users, rounds)
                if instance < KILLS:
                    await anyio.sleep(rng.uniform(0.05, 1.5))
                    await kill_and_close(proc)
                    kills += 1
            if instance < KILLS:
                proc = await start(config, log, fake)
        try:
            await fake.wait_for(lambda: settled(fake), seconds=90)
        except TimeoutError:
            pytest.fail(f"not every message was answered or accounted for: {tally(fake)}")
        await settle_then_stop(proc)
    finally:
        await kill_and_close(proc)

    uncertain = sum(int(m.group(1)) for m in re.finditer(r"re-sending (\d+) repl", log.read_text()))
    results = tally(fake)
    answered = duplicates = unanswered = notices = 0
    for chat, (numbers, told) in results.items():
        assert numbers == sorted(numbers), f"chat {chat} answered out of order: {numbers}"
        assert set(numbers) <= set(range(MESSAGES))
        missing = set(range(MESSAGES)) - set(numbers)
        assert len(missing) <= told, f"chat {chat}: {sorted(missing)} lost without a notice"
        answered += len(set(numbers))
        duplicates += len(numbers) - len(set(numbers))
        unanswered += len(missing)
        notices += told
    report_figure(
        f"chaos: {kills} kill -9, {len(CHATS)} chats x {MESSAGES} messages: "
        f"{answered} answered once, {duplicates} twice, {unanswered} unanswered "
        f"(their turn had begun; {notices} interrupted-turn notices, "
        f"{needless_notices(fake)} for a message its live preview had shown in full), "
        f"{uncertain} uncertain re-sends reported"
    )
    assert duplicates <= uncertain
    assert answered + unanswered == len(CHATS) * MESSAGES
    assert marked_processes(str((tmp_path / "state").resolve())) == []


@pytest.mark.timeout(150)
async def test_a_message_waiting_behind_a_turn_survives_kill_9(
    tmp_path: Path, telegram: FakeTelegram
) -> None:
    """The running turn's message is not run again (its chat is told); the queued one is."""
    fake = telegram
    config = write_config(tmp_path, fake)
    log = tmp_path / "evie.log"
    steps = [{"text": "working"}, {"wait_file": str(tmp_path / "never")}]
    proc = await start(config, log, fake)
    try:
        fake.push_message("script:" + json.dumps(steps), user_id=OWNER)
        await fake.wait_for(lambda: any("working" in t for t in fake.chat_view(OWNER)), 30)
        fake.push_message("waiting behind it", user_id=OWNER)
        await fake.wait_for(lambda: any("queued #1" in t for t in fake.chat_view(OWNER)), 30)
        await kill_and_close(proc)
        proc = await start(config, log, fake)
        await fake.wait_for(
            lambda: (
                "echo: waiting behind it" in fake.chat_view(OWNER)
                and any(n in t for t in fake.chat_view(OWNER) for n in NOTICES)
            ),
            seconds=60,
        )
        await settle_then_stop(proc)
    finally:
        await kill_and_close(proc)
    view = fake.chat_view(OWNER)
    assert view.count("echo: waiting behind it") == 1
    assert sum(any(n in t for n in NOTICES) for t in view) == 1
    previews = [t for t in view if "working" in t and not any(n in t for n in NOTICES)]
    assert len(previews) == 1  # the interrupted turn was not run again
    assert marked_processes(str((tmp_path / "state").resolve())) == []
