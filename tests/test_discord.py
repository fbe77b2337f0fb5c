"""Discord end to end: injected MESSAGE_CREATE → real discord.py → evie → fake pi."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
import anyio.abc
import pytest

from evie.chat.commands import LAST_REPLY_SENT
from evie.durable.inbox import Inbox
from evie.durable.outbox import Outbox
from evie.sessions.manager import SessionManager
from tests.conftest import fake_launcher
from tests.fake_discord import CHANNEL_ID, THREAD_ID, Fault, running_fake_discord
from tests.harness import (
    DiscordHarness,
    discord_config,
    discord_interface,
    kept_discord_endpoints,
    serving_discord,
)

pytestmark = pytest.mark.anyio

DM = 500


@pytest.fixture
async def dc(tmp_path: Path) -> AsyncIterator[DiscordHarness]:
    async with running_fake_discord() as fake, serving_discord(fake_launcher(tmp_path), fake) as h:
        yield h


async def test_a_dm_gets_an_answer(dc: DiscordHarness) -> None:
    await dc.fake.push_message("hello discord", channel_id=DM)
    await dc.shows(DM, "echo: hello discord")
    # once pi is up (its start may take longer than "typing…"'s delay on a busy machine),
    # a quick answer comes without "typing…"
    before = len(dc.fake.calls)
    await dc.fake.push_message("again", channel_id=DM)
    await dc.shows(DM, "echo: again")
    assert ("POST", f"channels/{DM}/typing") not in dc.fake.calls[before:]


async def test_typing_shows_while_a_turn_takes_a_while(dc: DiscordHarness, tmp_path: Path) -> None:
    release = tmp_path / "release"
    script = "script:" + json.dumps([{"wait_file": str(release)}, {"text": "slow reply"}])
    await dc.fake.push_message(script, channel_id=DM)
    await dc.fake.wait_for(lambda: ("POST", f"channels/{DM}/typing") in dc.fake.calls)
    release.touch()
    await dc.shows(DM, "slow reply")


async def test_guild_messages_need_a_mention_and_threads_are_sessions(dc: DiscordHarness) -> None:
    await dc.fake.push_message("chatter", channel_id=600, guild_id=1)
    await dc.fake.push_message("in the channel", channel_id=600, guild_id=1, mention_bot=True)
    await dc.fake.push_message("in a thread", channel_id=601, guild_id=1, mention_bot=True)
    await dc.shows(600, "echo: in the channel")
    await dc.shows(601, "echo: in a thread")
    assert not any("chatter" in t for t in dc.fake.channel_view(600))
    assert {s.key for s in dc.manager.slots()} == {"dc:600", "dc:601"}


async def test_status_during_a_turn_and_strangers(dc: DiscordHarness, tmp_path: Path) -> None:
    release = tmp_path / "release"
    steps = [{"text": "busy busy"}, {"wait_file": str(release)}, {"text": " done"}]
    await dc.fake.push_message("script:" + json.dumps(steps), channel_id=DM)
    await dc.shows(DM, "busy busy")
    await dc.fake.push_message("/status", channel_id=DM)
    await dc.shows(DM, "Turn running for")
    for _ in range(5):
        await dc.fake.push_message("hi", user_id=7, channel_id=777)
    await dc.shows(777, "private assistant")
    release.touch()
    await dc.shows(DM, "busy busy done")
    assert dc.fake.channel_view(777) == ["Sorry, this is a private assistant."]
    assert [s.key for s in dc.manager.slots()] == [f"dc:{DM}"]


async def test_long_replies_are_chunked_under_2000(dc: DiscordHarness) -> None:
    text = "\n\n".join(f"Part {i}: " + "lorem " * 60 for i in range(20))
    await dc.fake.push_message(
        "script:" + json.dumps([{"text": text, "chunk": 3000}]), channel_id=DM
    )
    await dc.shows(DM, "Part 19:")
    await anyio.sleep(0.1)
    parts = [t for t in dc.fake.channel_view(DM) if "Part" in t]
    assert len(parts) > 1
    assert all(len(t) <= 2000 for t in parts)
    assert "\n\n".join(parts).count("Part ") == 20


async def test_rate_limits_and_server_errors_are_survived(dc: DiscordHarness) -> None:
    dc.fake.inject("POST channels", Fault(429, retry_after=0.2), times=2)
    dc.fake.inject("POST channels", Fault(500), times=1)
    await dc.fake.push_message("still there?", channel_id=DM)
    await dc.shows(DM, "echo: still there?")
    await anyio.sleep(0.2)
    assert [t for t in dc.fake.channel_view(DM) if "still there" in t] == ["echo: still there?"]


async def test_gateway_drop_mid_turn_delivers_the_reply_once(
    dc: DiscordHarness, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    steps = [{"text": "part one"}, {"wait_file": str(release)}, {"text": ", part two"}]
    await dc.fake.push_message("script:" + json.dumps(steps), channel_id=DM)
    await dc.shows(DM, "part one")
    dc.fake.replay_overlap = 5  # the resumed session re-delivers the message being answered
    await dc.fake.disconnect()
    await dc.fake.wait_for(lambda: dc.fake.resumes >= 1)
    release.touch()
    await dc.shows(DM, "part one, part two")
    await anyio.sleep(0.3)
    finals = [t for t in dc.fake.channel_view(DM) if "part" in t]
    assert finals == ["part one, part two"]  # the replayed MESSAGE_CREATE did not run again
    assert not any("queued" in t for t in dc.fake.channel_view(DM))
    assert len(dc.manager.slots()) == 1
    assert dc.manager._slots[f"dc:{DM}"].turns == 1


async def test_slash_commands_are_registered_and_answered(
    dc: DiscordHarness, tmp_path: Path
) -> None:
    await dc.fake.wait_for(lambda: len(dc.fake.app_commands) == 5)
    assert {c["name"] for c in dc.fake.app_commands} == {"status", "stop", "new", "last", "help"}
    release = tmp_path / "release"
    steps = [{"text": "crunching"}, {"wait_file": str(release)}]
    await dc.fake.push_message("script:" + json.dumps(steps), channel_id=DM)
    await dc.shows(DM, "crunching")
    iid = await dc.fake.push_interaction("status", channel_id=DM)
    await dc.fake.wait_for(lambda: iid in dc.fake.interaction_replies)
    reply = dc.fake.interaction_replies[iid]
    assert reply["type"] == 4
    assert "Turn running for" in reply["data"]["content"]
    stranger = await dc.fake.push_interaction("status", user_id=9, channel_id=901)
    await dc.fake.wait_for(lambda: stranger in dc.fake.interaction_replies)
    refusal = dc.fake.interaction_replies[stranger]["data"]
    assert refusal["content"] == "Sorry, this is a private assistant."
    assert refusal["flags"] == 64  # ephemeral
    stop = await dc.fake.push_interaction("stop", channel_id=DM)
    await dc.fake.wait_for(lambda: stop in dc.fake.interaction_replies)
    await dc.shows(DM, "Stopped.")


async def test_a_slash_command_slower_than_discords_deadline_is_deferred_then_answered(
    dc: DiscordHarness,
) -> None:
    """Discord forgets a slash command not acknowledged within 3 s: /last uploading a file
    through a slow link is acknowledged ("thinking…") in time and answered as a follow-up."""
    await dc.fake.wait_for(lambda: len(dc.fake.app_commands) == 5)
    await dc.fake.push_message("remember me", channel_id=DM)
    await dc.shows(DM, "echo: remember me")
    upload = dc.fake.hold(f"channels/{DM}/messages")
    iid = await dc.fake.push_interaction("last", channel_id=DM)
    await dc.fake.wait_for(lambda: iid in dc.fake.interaction_replies)  # before the deadline
    assert dc.fake.interaction_replies[iid]["type"] == 5  # deferred
    assert iid not in dc.fake.interaction_followups
    upload.set()
    await dc.fake.wait_for(lambda: iid in dc.fake.interaction_followups)
    assert dc.fake.interaction_followups[iid] == [LAST_REPLY_SENT]
    [message] = [m for m in dc.fake.messages.values() if m.attachments]
    assert message.attachments == [("reply.md", b"echo: remember me")]


async def test_a_slash_command_discord_no_longer_accepts_is_one_log_line(
    dc: DiscordHarness, caplog: pytest.LogCaptureFixture
) -> None:
    await dc.fake.wait_for(lambda: len(dc.fake.app_commands) == 5)
    dc.fake.interaction_deadline = 0  # every first answer comes too late
    iid = await dc.fake.push_interaction("help", channel_id=DM)
    with caplog.at_level(logging.WARNING, logger="evie.platforms.discord"):
        await dc.fake.wait_for(
            lambda: ("POST", f"interactions/{iid}/itoken{iid}/callback") in dc.fake.calls
        )
        await anyio.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records if "could not answer" in r.getMessage()]
    assert lines == [
        "discord: could not answer /help: 404 Not Found (error code: 10062): Unknown interaction"
    ]
    assert all(r.exc_info is None for r in caplog.records)


async def test_image_attachments_reach_pi(
    dc: DiscordHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    picture = b"\x89PNG\r\n\x1a\n not really"
    attachment = dc.fake.attachment("shot.png", picture, "image/png")
    record = tmp_path / "state" / "record.jsonl"
    monkeypatch.setenv("FAKE_PI_RECORD", str(record))
    await dc.fake.push_message("look", channel_id=DM, attachments=[attachment])
    await dc.shows(DM, "echo: look")
    prompts = [json.loads(line) for line in record.read_text().splitlines()]
    prompt = next(p for p in prompts if p.get("type") == "prompt")
    assert prompt["images"] == [
        {"type": "image", "data": base64.b64encode(picture).decode(), "mimeType": "image/png"}
    ]


@pytest.mark.timeout(90)
async def test_messages_posted_while_the_gateway_was_down_are_answered_once(
    dc: DiscordHarness,
) -> None:
    """The gateway is away (3 s standing for 30 s) and the session cannot be resumed, so
    nothing is replayed: evie reads the channel's REST history after it reconnects."""
    await dc.fake.push_message("before", channel_id=DM)
    await dc.shows(DM, "echo: before")
    await dc.fake.push_message("in the channel", channel_id=600, guild_id=1, mention_bot=True)
    await dc.shows(600, "echo: in the channel")
    dc.fake.forget_sessions = True
    dc.fake.gateway_down = True
    await dc.fake.disconnect()
    for n in range(5):
        await dc.fake.push_message(f"while away {n}", channel_id=DM)
    await dc.fake.push_message("chatter, not for the bot", channel_id=600, guild_id=1)
    await anyio.sleep(3)
    dc.fake.gateway_down = False
    await dc.fake.wait_for(
        lambda: any("echo: while away 4" in t for t in dc.fake.channel_view(DM)), seconds=60
    )
    await dc.fake.push_message("after", channel_id=DM)
    await dc.shows(DM, "echo: after")
    await anyio.sleep(0.3)
    answers = [t for t in dc.fake.channel_view(DM) if t.startswith("echo: ")]
    assert answers == [
        "echo: before",
        *(f"echo: while away {n}" for n in range(5)),
        "echo: after",
    ]
    assert not any("chatter" in t for t in dc.fake.channel_view(600))
    assert dc.fake.identifies >= 2  # a new session, not a resume


@pytest.mark.timeout(90)
async def test_messages_posted_while_evie_was_stopped_are_answered_after_it_starts(
    tmp_path: Path,
) -> None:
    """The last seen message id per channel is on disk; a new evie reads what it missed."""
    async with running_fake_discord() as fake:

        def serve() -> AbstractAsyncContextManager[DiscordHarness]:
            inbox = Inbox(tmp_path / "inbox.json")
            outbox = Outbox(tmp_path / "outbox")
            inbox.load()
            outbox.load()
            launcher = fake_launcher(tmp_path)
            return serving_discord(launcher, fake, inbox=inbox, outbox=outbox, connect_within=20)

        async with serve():
            await fake.push_message("first", channel_id=DM)
            await fake.wait_for(lambda: "echo: first" in fake.channel_view(DM))
        fake.gateway_down = True  # nobody listening: these reach only the history
        for n in range(3):
            await fake.push_message(f"missed {n}", channel_id=DM)
        fake.gateway_down = False
        async with serve():
            await fake.wait_for(lambda: "echo: missed 2" in fake.channel_view(DM), 30)
            await anyio.sleep(0.3)
        answers = [t for t in fake.channel_view(DM) if t.startswith("echo: ")]
        assert answers == ["echo: first", "echo: missed 0", "echo: missed 1", "echo: missed 2"]


async def test_run_returns_once_intake_stopped_and_handlers_finished(tmp_path: Path) -> None:
    with kept_discord_endpoints():
        async with running_fake_discord() as fake:
            async with SessionManager(fake_launcher(tmp_path)) as manager:
                interface = discord_interface(manager, discord_config(fake))
                assert interface.health().state == "starting"
                returned = anyio.Event()

                async def serve(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                    await interface.run(task_status=task_status)
                    returned.set()

                async with anyio.create_task_group() as tg:
                    with anyio.fail_after(10):
                        await tg.start(serve)  # at once: Discord connects in the background
                        await interface.wait_connected()
                    health = interface.health()
                    assert health.state == "up"
                    assert health.seconds_since_ok is not None  # READY was a sign of life
                    await fake.disconnect()
                    await fake.wait_for(lambda: fake.resumes >= 1)
                    with anyio.fail_after(10):
                        while interface.health().detail != "gateway resumed":
                            await anyio.sleep(0.01)
                    assert interface.health().consecutive_failures == 0

                    release = tmp_path / "release"
                    steps = [{"text": "busy"}, {"wait_file": str(release)}, {"text": " done"}]
                    await fake.push_message("script:" + json.dumps(steps), channel_id=DM)
                    await fake.wait_for(lambda: "busy" in " ".join(fake.channel_view(DM)))
                    await interface.stop_intake()
                    assert interface.health().state == "down"
                    await fake.push_message("too late", channel_id=DM)  # ignored
                    release.touch()
                    with anyio.fail_after(10):
                        await returned.wait()
                    # run returned only after the running handler delivered its answer
                    assert fake.channel_view(DM) == ["busy done"]


async def test_long_replies_go_as_first_part_plus_an_attachment(dc: DiscordHarness) -> None:
    paragraphs = [f"Paragraph {i}: " + "word " * 150 for i in range(30)]  # 2 per message
    text = "\n\n".join(paragraphs)
    steps = [{"text": text, "chunk": 20_000}]
    await dc.fake.push_message("script:" + json.dumps(steps), channel_id=DM)
    await dc.fake.wait_for(lambda: any(m.attachments for m in dc.fake.messages.values()))
    [message] = [m for m in dc.fake.messages.values() if m.attachments]
    assert message.attachments == [("reply.md", text.encode())]
    assert f"({len(text):,} characters)" in message.content
    shown = [t for t in dc.fake.channel_view(DM) if "Paragraph" in t]
    assert len(shown) == 1
    assert all(len(t) <= 2000 for t in dc.fake.channel_view(DM))


async def test_a_boosted_server_takes_bigger_files_than_a_dm(tmp_path: Path) -> None:
    # at boost level 2 a bot may upload 50 MiB in the server's channels; a DM stays at
    # 10 MiB: the same reply goes whole in one and as two parts in the other
    size = 12_000_000
    unit = "0123456789abcdef" * 4 + "\n"  # what fake pi's "big" step streams
    reply = (unit * (size // len(unit) + 1))[:size].encode()
    script = "script:" + json.dumps([{"big": size, "chunk": 4_000_000}])  # few big events

    def files(channel: int) -> list[tuple[str, bytes]]:
        return [a for m in fake.messages.values() if m.channel_id == channel for a in m.attachments]

    async with running_fake_discord() as fake:
        fake.premium_tier = 2  # what GUILD_CREATE says, and the limit the fake holds to
        async with serving_discord(fake_launcher(tmp_path), fake):
            for channel in (CHANNEL_ID, THREAD_ID):  # the server's channel, a thread in it
                await fake.push_message(script, channel_id=channel, guild_id=1, mention_bot=True)
                await fake.wait_for(lambda: files(channel), seconds=40)  # noqa: B023
            await fake.push_message(script, channel_id=DM)
            await fake.wait_for(lambda: len(files(DM)) >= 2, seconds=40)
            await anyio.sleep(0.3)  # nothing more follows
    assert files(CHANNEL_ID) == files(THREAD_ID) == [("reply.md", reply)]
    in_dm = files(DM)
    assert [name for name, _ in in_dm] == ["reply-1-of-2.md", "reply-2-of-2.md"]
    assert all(len(data) <= 10 * 1024 * 1024 for _, data in in_dm)
    assert b"".join(data for _, data in in_dm) == reply
    for channel in (CHANNEL_ID, THREAD_ID, DM):
        assert not any("Could not send" in t for t in fake.channel_view(channel))


async def test_last_sends_the_last_reply_as_an_attachment(dc: DiscordHarness) -> None:
    await dc.fake.push_message("some *markdown* here", channel_id=DM)
    await dc.shows(DM, "echo: some")
    await dc.fake.push_message("/last", channel_id=DM)
    await dc.fake.wait_for(lambda: any(m.attachments for m in dc.fake.messages.values()))
    [message] = [m for m in dc.fake.messages.values() if m.attachments]
    assert message.attachments == [("reply.md", b"echo: some *markdown* here")]


async def test_a_failed_attachment_download_is_reported(dc: DiscordHarness) -> None:
    image = dc.fake.attachment("pic.png", b"\x89PNG", "image/png")
    del dc.fake.files["pic.png"]  # the CDN answers 404
    await dc.fake.push_message("look", channel_id=DM, attachments=[image])
    await dc.shows(DM, "couldn't download your image")
