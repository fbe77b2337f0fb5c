"""Telegram end to end: fake Bot API → real aiogram → evie → fake pi (and real pi)."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import anyio.abc
import attrs
import pytest

from evie.chat.streaming import Delivery
from evie.config import parse_config
from evie.platforms.telegram import TelegramInterface, TelegramTransport
from evie.sessions.manager import SessionManager
from tests.conftest import PI, fake_launcher, real_launcher
from tests.fake_llm import Reply, running_fake_llm
from tests.fake_telegram import Fault, running_fake_telegram
from tests.harness import (
    OWNER,
    TelegramHarness,
    fast_delivery,
    serving_telegram,
    telegram_config,
)

pytestmark = pytest.mark.anyio


@attrs.define
class Harness(TelegramHarness):
    record: Path  # the commands the fake pi received, one JSON line each

    async def final_text(self, chat_id: int, needle: str, thread_id: int | None = None) -> None:
        await self.shows(chat_id, needle, thread_id)


@pytest.fixture
async def tg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    record = tmp_path / "pi-commands.jsonl"
    monkeypatch.setenv("FAKE_PI_RECORD", str(record))
    async with serving_telegram(fake_launcher(tmp_path)) as h:
        yield Harness(h.fake, h.manager, h.interface, record)


async def test_a_message_gets_an_answer(tg: Harness) -> None:
    tg.fake.push_message("hello there")
    await tg.final_text(OWNER, "echo: hello there")
    assert tg.fake.method_calls("deleteWebhook")
    # the menu goes beside the first poll, once the message types are built: it may
    # follow a first reply that needed none of them (a plain text message)
    await tg.fake.wait_for(lambda: tg.fake.method_calls("setMyCommands"))
    commands = json.loads(tg.fake.method_calls("setMyCommands")[0]["commands"])
    assert {c["command"] for c in commands} == {"status", "stop", "new", "last", "help"}


async def test_typing_shows_while_a_turn_takes_a_while_and_not_for_a_quick_one(
    tg: Harness, tmp_path: Path
) -> None:
    tg.fake.push_message("first")  # pi starts (on a busy machine, maybe past typing's delay)
    await tg.final_text(OWNER, "echo: first")
    seen = len(tg.fake.method_calls("sendChatAction"))
    tg.fake.push_message("quick")
    await tg.final_text(OWNER, "echo: quick")
    # answered before anyone could see it
    assert len(tg.fake.method_calls("sendChatAction")) == seen
    release = tmp_path / "release"
    tg.fake.push_message("script:" + json.dumps([{"wait_file": str(release)}, {"text": "slow"}]))
    await tg.fake.wait_for(lambda: len(tg.fake.method_calls("sendChatAction")) > seen)
    assert "slow" not in tg.fake.chat_view(OWNER)  # "typing…" came while the turn ran
    release.touch()
    await tg.final_text(OWNER, "slow")
    typing = tg.fake.method_calls("sendChatAction")[seen:]
    assert typing[0]["action"] == "typing"
    assert typing[0]["chat_id"] == str(OWNER)


async def test_status_answers_while_a_turn_runs(tg: Harness, tmp_path: Path) -> None:
    release = tmp_path / "release"
    steps = [{"text": "working on it"}, {"wait_file": str(release)}, {"text": " — finished"}]
    tg.fake.push_message("script:" + json.dumps(steps))
    await tg.final_text(OWNER, "working on it")
    tg.fake.push_message("/status")
    await tg.final_text(OWNER, "Turn running for")
    status = next(t for t in tg.fake.chat_view(OWNER) if "Turn running for" in t)
    assert "running" in status
    assert "fake/fake-1" in status
    assert "Usage: tokens in 10, out 20" in status
    tg.fake.push_message("and also this")
    await tg.final_text(OWNER, "queued #1")
    release.touch()
    await tg.final_text(OWNER, "working on it — finished")
    await tg.final_text(OWNER, "echo: and also this")


async def test_strangers_are_refused_once_and_spawn_nothing(
    tg: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="evie.chat.frontend")
    for i in range(30):
        tg.fake.push_message(f"let me in {i}", user_id=666, username="mallory")
    tg.fake.push_message("/status", user_id=666)
    tg.fake.push_message("hi", user_id=OWNER)  # a marker that the stranger's updates were handled
    await tg.final_text(OWNER, "echo: hi")
    assert tg.fake.chat_view(666) == ["Sorry, this is a private assistant."]
    assert [s.key for s in tg.manager.slots()] == [f"tg:{OWNER}"]
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals == [
        "refused user 666 (@mallory): add 666 to [telegram] allowed_user_ids to allow"
    ]


async def test_stop_and_new(tg: Harness, tmp_path: Path) -> None:
    steps = [{"text": "long job"}, {"wait_file": str(tmp_path / "never")}]
    tg.fake.push_message("script:" + json.dumps(steps))
    await tg.final_text(OWNER, "long job")
    tg.fake.push_message("/stop")
    await tg.final_text(OWNER, "Stopped.")
    old = tg.manager.get_status(f"tg:{OWNER}")
    tg.fake.push_message("/new")
    await tg.final_text(OWNER, "Started a new session")
    new = tg.manager.get_status(f"tg:{OWNER}")
    assert old is not None
    assert new is not None
    assert new.session_id != old.session_id


async def test_rate_limits_and_server_errors_still_deliver_once_in_order(tg: Harness) -> None:
    tg.fake.inject("sendMessage", Fault(429, "Too Many Requests: retry after 1", 1), times=2)
    tg.fake.inject("sendMessage", Fault(502, "Bad Gateway"), times=2)
    tg.fake.inject("editMessageText", Fault(429, "Too Many Requests: retry after 1", 1))
    chats = [101, 102, 103]
    for chat in chats:
        for n in range(3):
            tg.fake.push_message(f"c{chat} m{n}", user_id=OWNER, chat_id=chat, chat_type="group")
    # group messages without a mention are ignored; mention the bot instead
    for chat in chats:
        for n in range(3):
            tg.fake.push_message(
                f"@evie_test_bot c{chat} n{n}", user_id=OWNER, chat_id=chat, chat_type="group"
            )
    for chat in chats:
        await tg.final_text(chat, f"echo: c{chat} n2", None)
    for chat in chats:
        answers = [t for t in tg.fake.chat_view(chat) if t.startswith("echo:")]
        queued = [t for t in tg.fake.chat_view(chat) if "queued" in t]
        # each message answered exactly once, in the order sent
        assert answers == [f"echo: c{chat} n{n}" for n in range(3)], (answers, queued)
        assert not any(f"m{n}" in t for t in tg.fake.chat_view(chat) for n in range(3))


async def test_formatting_rejections_fall_back_to_plain_text(tg: Harness) -> None:
    tg.fake.inject("sendMessage", Fault(400, "Bad Request: can't parse entities: boom"))
    tg.fake.inject("editMessageText", Fault(400, "Bad Request: can't parse entities: boom"))
    tg.fake.push_message("script:" + json.dumps([{"text": "**bold** and `code`", "chunk": 100}]))
    await tg.final_text(OWNER, "bold")
    await anyio.sleep(0.2)
    view = tg.fake.chat_view(OWNER)
    assert len([t for t in view if "bold" in t]) == 1


async def test_markdown_is_rendered_as_telegram_html(tg: Harness) -> None:
    text = (
        "# Title\n\n**bold** *it* `x<y` [link](https://example.com)\n\n"
        "```py\nif a < b:\n    pass\n```"
    )
    tg.fake.push_message("script:" + json.dumps([{"text": text, "chunk": 1000}]))
    await tg.final_text(OWNER, "<b>Title</b>")
    final = next(m for m in tg.fake.messages.values() if "<b>Title</b>" in m.text)
    assert final.parse_mode == "HTML"
    assert "<b>bold</b> <i>it</i> <code>x&lt;y</code>" in final.text
    assert '<a href="https://example.com">link</a>' in final.text
    assert '<pre><code class="language-py">if a &lt; b:\n    pass</code></pre>' in final.text


async def test_long_replies_are_split_under_the_limit(tg: Harness) -> None:
    paragraphs = [f"Paragraph {i}: " + "word " * 150 for i in range(30)]
    text = "\n\n".join(paragraphs)
    tg.fake.push_message("script:" + json.dumps([{"text": text, "chunk": 2000}]))
    # the live preview shows the tail first; wait for the delivered reply (every paragraph)
    await tg.fake.wait_for(
        lambda: all(
            any(f"Paragraph {i}:" in t for t in tg.fake.chat_view(OWNER)) for i in range(30)
        )
    )
    await anyio.sleep(0.1)
    view = [t for t in tg.fake.chat_view(OWNER) if "Paragraph" in t]
    assert len(view) > 1
    assert all(len(t) <= 4096 for t in view)
    joined = "\n\n".join(view)
    for i in range(30):
        assert joined.count(f"Paragraph {i}:") == 1
    assert all(t.rstrip().endswith("word") for t in view)  # cut at paragraph ends


async def test_forum_topics_are_separate_sessions(tg: Harness) -> None:
    tg.fake.push_message("/new", chat_id=-100, chat_type="supergroup", thread_id=7)
    tg.fake.push_message(
        "@evie_test_bot in topic 7", chat_id=-100, chat_type="supergroup", thread_id=7
    )
    tg.fake.push_message(
        "@evie_test_bot in topic 9", chat_id=-100, chat_type="supergroup", thread_id=9
    )
    await tg.final_text(-100, "echo: in topic 7", 7)
    await tg.final_text(-100, "echo: in topic 9", 9)
    assert {s.key for s in tg.manager.slots()} == {"tg:-100:7", "tg:-100:9"}


async def test_photos_reach_pi_as_images(tg: Harness) -> None:
    picture = b"\xff\xd8\xff\xe0 not really a jpeg"
    tg.fake.push_message("what is this?", photo_bytes=picture)
    await tg.final_text(OWNER, "echo: what is this?")
    prompts = [json.loads(line) for line in tg.record.read_text().splitlines()]
    prompt = next(p for p in prompts if p.get("type") == "prompt")
    assert prompt["images"] == [
        {"type": "image", "data": base64.b64encode(picture).decode(), "mimeType": "image/jpeg"}
    ]


@pytest.mark.realpi
@pytest.mark.skipif(not PI.exists(), reason="pi is not installed (run npm ci)")
async def test_a_real_pi_turn_through_telegram(tmp_path: Path) -> None:
    async with running_fake_llm() as llm:
        llm.queue(Reply(text="Hi! Here is **something** useful.\n\n```sh\nls -la\n```", chunk=4))
        async with serving_telegram(real_launcher(tmp_path, llm), delivery=Delivery()) as tg:
            fake = tg.fake
            fake.push_message("hello real pi")
            await fake.wait_for(
                lambda: any("<b>something</b>" in t for t in fake.chat_view(OWNER)), seconds=30
            )
        final = next(m for m in fake.messages.values() if "<b>something</b>" in m.text)
        assert final.parse_mode == "HTML"
        assert '<pre><code class="language-sh">ls -la</code></pre>' in final.text
        assert llm.user_texts(llm.requests[-1]) == ["hello real pi"]


async def test_health_follows_polling_and_run_returns_after_its_handlers(tmp_path: Path) -> None:
    async with running_fake_telegram() as fake:
        config = telegram_config(fake)
        async with SessionManager(fake_launcher(tmp_path)) as manager:
            interface = TelegramInterface(manager, config, delivery=fast_delivery())
            assert interface.health().state == "starting"
            returned = anyio.Event()

            async def serve(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                await interface.run(task_status=task_status)
                returned.set()

            async def until(predicate: Callable[[], bool]) -> None:
                with anyio.fail_after(10):
                    while not predicate():
                        await anyio.sleep(0.01)

            async with anyio.create_task_group() as tg:
                await tg.start(serve)
                await until(lambda: interface.health().seconds_since_ok is not None)
                assert interface.health().state == "up"
                fake.inject("getUpdates", Fault(502, "Bad Gateway"))
                await until(lambda: interface.health().state == "degraded")
                degraded = interface.health()
                assert degraded.consecutive_failures == 1
                assert "Bad Gateway" in degraded.detail
                await until(lambda: interface.health().state == "up")  # the next poll worked
                assert interface.health().consecutive_failures == 0

                release = tmp_path / "release"
                steps = [{"text": "working"}, {"wait_file": str(release)}, {"text": " done"}]
                fake.push_message("script:" + json.dumps(steps))
                await fake.wait_for(lambda: "working" in " ".join(fake.chat_view(OWNER)))
                await interface.stop_intake()
                await until(lambda: interface.health().state == "down")
                fake.push_message("too late")  # intake has stopped: never fetched
                release.touch()
                with anyio.fail_after(10):
                    await returned.wait()
                # run returned only after the running handler delivered its answer
                assert fake.chat_view(OWNER) == ["working done"]


def test_aiogram_response_classes_survive_a_collection() -> None:
    """pydantic caches Response[...] weakly; evie holds the ones it uses (no rebuild per gc)."""
    import gc

    from aiogram.methods import GetUpdates, SendMessage
    from aiogram.methods.base import Response

    from evie.platforms.telegram import (
        RAW_UPDATES_RESPONSE,
        TEXT_RESPONSES,
        _EditText,
        _RawGetUpdates,
        _SendText,
        response_types,
    )

    held = response_types()
    gc.collect()
    # (a class's runtime ``__returning__`` as Response's parameter: to mypy, a value, not a type)
    for method in (GetUpdates, SendMessage):
        assert Response[method.__returning__] in held  # type: ignore[name-defined]
    # the poll evie makes for every message: the very class held, not a rebuilt one
    assert Response[_RawGetUpdates.__returning__] is RAW_UPDATES_RESPONSE
    # and the replies of every turn (evie's lean sendMessage / editMessageText)
    assert Response[_SendText.__returning__] is TEXT_RESPONSES[0]  # type: ignore[valid-type]
    assert Response[_EditText.__returning__] is TEXT_RESPONSES[1]


def test_aiogram_types_are_built_on_first_use_and_still_validate() -> None:
    """evie imports aiogram with its types deferred (start-up); each still works when used."""
    import subprocess
    import sys

    probe = (
        "import evie.platforms.telegram\n"
        "from aiogram.types import Sticker, Update\n"
        "print(Sticker.__pydantic_complete__)\n"
        "s = Sticker.model_validate({'file_id': 'f', 'file_unique_id': 'u', 'type': 'regular',"
        " 'width': 1, 'height': 1, 'is_animated': False, 'is_video': False})\n"
        "u = Update.model_validate({'update_id': 1, 'message': {'message_id': 1, 'date': 1,"
        " 'chat': {'id': 1, 'type': 'private'}, 'sticker': s.model_dump()}})\n"
        "print(Sticker.__pydantic_complete__, u.message.sticker.file_id)\n"
        "from aiogram.methods import SendDice\n"
        "print(SendDice.__pydantic_complete__, SendDice(chat_id=5).chat_id)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=50
    )
    assert out.stdout.split() == ["False", "True", "f", "False", "5"]


def test_aiogram_types_not_loaded_yet_are_loaded_when_a_model_needs_them() -> None:
    """Most of aiogram's types are imported beside the first poll (adr/0016); a model built
    before that (an answer read at start-up) loads them first and validates as usual."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from evie.platforms import aiogram_lazy\n"
        "import evie.platforms.telegram\n"
        "print(len(aiogram_lazy.missing_types()) > 100,"
        " 'aiogram.types.photo_size' in sys.modules)\n"
        "from aiogram.methods import SendMessage\n"
        "from aiogram.methods.base import Response\n"
        "from aiogram.types import Message\n"
        "r = Response[Message].model_validate({'ok': True, 'result': {'message_id': 1, 'date': 1,"
        " 'chat': {'id': 1, 'type': 'private'}, 'photo': [{'file_id': 'p',"
        " 'file_unique_id': 'u', 'width': 2, 'height': 3}]}})\n"
        "print(r.result.photo[0].height, aiogram_lazy.missing_types())\n"
        "from aiogram.types import PhotoSize, Voice\n"
        "print(PhotoSize is type(r.result.photo[0]), Voice.__module__)\n"
        "aiogram_lazy.load_all_types()\n"  # once more: nothing left to do
        "print(SendMessage(chat_id=1, text='x').text)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=50
    )
    assert out.stdout.split() == ["True", "False", "3", "[]", "True", "aiogram.types.voice", "x"]


_STAND_IN_PROBE = """
import sys, anyio
import evie.platforms.telegram
import aiogram.client.bot as bot_module
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.types import BotCommand
from tests.fake_telegram import TOKEN, running_fake_telegram

methods = [m for m in sys.modules if m.startswith("aiogram.methods.")]
print(len(methods) < 20, "aiogram.methods.get_my_commands" in sys.modules,
      "aiogram.methods.send_dice" in sys.modules, "aiogram.types.passport_data" in sys.modules)
print(type(bot_module.GetMyCommands).__name__, type(bot_module.SendDice).__name__)

async def main():
    async with running_fake_telegram() as fake:
        session = AiohttpSession(api=TelegramAPIServer.from_base(fake.base_url))
        bot = Bot(TOKEN, session=session)
        try:
            await bot.set_my_commands([BotCommand(command="new", description="a new chat")])
            got = await bot.get_my_commands()  # its method's module is imported here
            print([(c.command, c.description) for c in got])
        finally:
            await bot.session.close()
    from aiogram.methods import GetMyCommands, SendDice
    print(bot_module.GetMyCommands is GetMyCommands, type(got[0]) is BotCommand)
    dice = bot_module.SendDice(chat_id=5)  # a stand-in called: the real class's instance
    print(type(dice) is SendDice, isinstance(dice, bot_module.SendDice),
          bot_module.SendDice is SendDice, dice.chat_id)

anyio.run(main)
import aiogram  # the rest of aiogram's own names, made or imported when first asked for
print("aiogram.dispatcher.dispatcher" in sys.modules,
      aiogram.__version__ == aiogram.__meta__.__version__, aiogram.Dispatcher.__module__,
      type(aiogram.F).__name__, aiogram.html.bold("b"),
      aiogram.types.Message.__module__)
"""


def test_bots_methods_and_types_are_imported_when_first_used() -> None:
    """aiogram's `Bot` names every method and ~150 types; evie's import loads only the few
    it uses (adr/0016 §7); a `Bot` call of any other method still works, with its answer
    validated, and the stand-in it went through is then the real class."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _STAND_IN_PROBE],
        capture_output=True, text=True, timeout=50, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "True False False False",
        "_StandIn _StandIn",
        "[('new', 'a new chat')]",
        "True True",
        "True True True 5",
        "False True aiogram.dispatcher.dispatcher MagicFilter <b>b</b> aiogram.types.message",
    ]


def test_aiograms_own_init_is_run_when_it_is_not_the_one_evie_knows(tmp_path: Path) -> None:
    """The lazy ``aiogram`` package stands in only for the ``__init__`` it was written
    against: any statement more, or another ``__all__``, and aiogram's own runs."""
    from evie.platforms import aiogram_lazy

    folder = aiogram_lazy._aiogram_folder(".")
    assert folder is not None
    source = (folder / "__init__.py").read_text()
    init = tmp_path / "__init__.py"
    init.write_text(source)
    assert aiogram_lazy._top_as_expected(init)
    init.write_text(source + "\nregister_something()\n")
    assert not aiogram_lazy._top_as_expected(init)
    init.write_text(source.replace('"Router",', '"Router",\n    "Scene",'))
    assert not aiogram_lazy._top_as_expected(init)


# -- issue 12: replies of any size, entities in UTF-16, files ---------------------------


def prompts(record: Path) -> list[str]:
    if not record.exists():
        return []
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    return [p["message"] for p in lines if p.get("type") == "prompt"]


async def test_a_mention_after_emoji_is_cut_by_utf16_offsets(tg: Harness) -> None:
    text = "🔥🔥🔥🔥 @evie_test_bot don't touch prod"
    offset = len("🔥🔥🔥🔥 ".encode("utf-16-le")) // 2  # 9 units for 5 code points
    entity = {"type": "mention", "offset": offset, "length": len("@evie_test_bot")}
    tg.fake.push_message(text, chat_id=-5, chat_type="group", entities=[entity])
    await tg.final_text(-5, "echo: 🔥🔥🔥🔥 don't touch prod")
    assert prompts(tg.record) == ["🔥🔥🔥🔥 don't touch prod"]


async def test_plain_fallback_is_cut_under_the_limit(tg: Harness) -> None:
    tg.fake.reject_html = True  # every formatted chunk is refused: all go out as plain text
    words = 2000
    text = "**bold** " * words  # rendered: ~10,000 visible characters, ~18,000 of Markdown
    tg.fake.push_message("script:" + json.dumps([{"text": text, "chunk": 20_000}]))
    await tg.fake.wait_for(
        lambda: sum(t.count("bold") for t in tg.fake.chat_view(OWNER)) >= words, seconds=20
    )
    final = [m for m in tg.fake.messages.values() if "bold" in m.text]
    assert all(m.parse_mode is None for m in final)
    assert all(len(m.text.encode("utf-16-le")) // 2 <= 4096 for m in final)
    assert sum(m.text.count("bold") for m in final) == words  # nothing lost
    assert not any("**" in m.text for m in final)  # the words, not the raw Markdown


async def test_long_replies_go_as_first_part_plus_a_file(tg: Harness) -> None:
    paragraphs = [f"Paragraph {i}: " + "word " * 300 for i in range(40)]  # 2 per message
    text = "\n\n".join(paragraphs)
    tg.fake.push_message("script:" + json.dumps([{"text": text, "chunk": 20_000}]))
    await tg.fake.wait_for(lambda: tg.fake.documents, seconds=20)
    [document] = tg.fake.documents
    assert document.filename == "reply.md"
    assert document.data.decode() == text
    assert f"({len(text):,} characters)" in document.caption
    shown = [t for t in tg.fake.chat_view(OWNER) if "Paragraph" in t]
    assert len(shown) == 1
    assert shown[0].startswith("Paragraph 0:")
    assert "Paragraph 2:" not in shown[0]  # the first message only


async def test_a_reply_over_the_upload_limit_goes_as_numbered_files(tg: Harness) -> None:
    assert tg.interface.frontend is not None
    transport = tg.interface.frontend.transport
    assert isinstance(transport, TelegramTransport)
    transport.max_file_bytes = 20_000  # stands for Telegram's 50 MB (its upload_limit)
    tg.fake.max_upload = 20_000  # and the Bot API refuses more, as it would
    text = "\n\n".join(f"Paragraph {i}: " + "wörd🔥 " * 300 for i in range(40))
    tg.fake.push_message("script:" + json.dumps([{"text": text, "chunk": 50_000}]))
    await tg.fake.wait_for(lambda: len(tg.fake.documents) >= 5, seconds=20)
    await anyio.sleep(0.3)
    n = len(tg.fake.documents)
    assert [d.filename for d in tg.fake.documents] == [
        f"reply-{i}-of-{n}.md" for i in range(1, n + 1)
    ]
    assert b"".join(d.data for d in tg.fake.documents) == text.encode()
    assert "(part 1 of" in tg.fake.documents[0].caption
    assert not any("Could not send" in t for t in tg.fake.chat_view(OWNER))


async def test_the_configured_upload_limit_sets_the_size_of_the_parts(tmp_path: Path) -> None:
    # [telegram] max_upload_mb, as a local Bot API server allows (there up to 2000 MB)
    limit = parse_config({"telegram": {"max_upload_mb": 1}}, environ={}).telegram.max_upload_mb
    size = 2_500_000  # 65-byte lines: three parts of at most 1 MB
    unit = "0123456789abcdef" * 4 + "\n"  # what fake pi's "big" step streams
    reply = (unit * (size // len(unit) + 1))[:size].encode()
    async with serving_telegram(fake_launcher(tmp_path), max_upload_mb=limit) as tg:
        tg.fake.max_upload = limit * 1_000_000  # the server refuses a bigger file
        tg.fake.push_message("script:" + json.dumps([{"big": size}]))
        await tg.fake.wait_for(lambda: len(tg.fake.documents) >= 3, seconds=40)
        await anyio.sleep(0.3)  # no fourth part follows
        documents = list(tg.fake.documents)
    n = -(-size // 1_000_000)
    assert n == -(-size // (1_000_000 - len(unit)))  # cut at line ends, still three
    assert [d.filename for d in documents] == [f"reply-{i}-of-{n}.md" for i in range(1, n + 1)]
    assert all(len(d.data) <= 1_000_000 for d in documents)
    assert b"".join(d.data for d in documents) == reply
    assert all(d.caption.endswith(f"(part {i} of {n})") for i, d in enumerate(documents, 1))
    assert not any("Could not send" in t for t in tg.fake.chat_view(OWNER))


async def test_a_file_the_server_finds_too_large_is_not_retried_and_says_the_fix(
    tg: Harness,
) -> None:
    # max_upload_mb above what the server takes (say 2000 against api.telegram.org): the
    # 413 cannot pass by waiting, so each part is tried once and the chat told the fix
    tg.fake.max_upload = 10_000
    text = "\n\n".join(f"Paragraph {i}: " + "word " * 300 for i in range(40))
    tg.fake.push_message("script:" + json.dumps([{"text": text, "chunk": 50_000}]))
    await tg.shows(OWNER, "max_upload_mb")
    await anyio.sleep(0.5)
    assert len(tg.fake.method_calls("sendDocument")) == 1  # one reply.md, no retries
    assert not tg.fake.documents
    [told] = [t for t in tg.fake.chat_view(OWNER) if "Could not send" in t]
    assert "\n" not in told
    assert "too large" in told


async def test_last_sends_the_last_reply_as_a_file(tg: Harness) -> None:
    tg.fake.push_message("/last")
    await tg.final_text(OWNER, "No reply yet")
    tg.fake.push_message("first")
    await tg.final_text(OWNER, "echo: first")
    tg.fake.push_message("second **one**")
    await tg.final_text(OWNER, "echo: second")
    tg.fake.push_message("/last")
    await tg.fake.wait_for(lambda: tg.fake.documents)
    [document] = tg.fake.documents
    assert document.data == b"echo: second **one**"
    assert document.chat_id == OWNER


async def test_stop_cancels_the_pending_delivery(tmp_path: Path) -> None:
    launcher = fake_launcher(tmp_path)
    slow = serving_telegram(launcher, edit_interval=30, max_chunks=100, delivery=Delivery())
    async with slow as tg:
        fake = tg.fake
        fake.delay = 0.2  # a slow Telegram: 20 messages take 4 s
        paragraphs = [f"Paragraph {i}: " + "word " * 300 for i in range(40)]
        steps = [{"text": "\n\n".join(paragraphs), "chunk": 100_000}]
        fake.push_message("script:" + json.dumps(steps))
        await fake.wait_for(lambda: any("Paragraph 0:" in t for t in fake.chat_view(OWNER)))
        fake.push_message("/stop")
        await fake.wait_for(
            lambda: any("Stopped sending this reply" in t for t in fake.chat_view(OWNER))
        )
        await anyio.sleep(0.5)  # nothing more arrives after the stop
    shown = [t for t in fake.chat_view(OWNER) if t.startswith("Paragraph")]
    assert 1 <= len(shown) < 10
    assert not any("Paragraph 39:" in t for t in shown)
    stopped = next(t for t in fake.chat_view(OWNER) if "Stopped sending" in t)
    assert f"({len(shown)} of 20 sent)" in stopped


async def test_a_failed_photo_download_is_reported(tg: Harness) -> None:
    tg.fake.inject("getFile", Fault(400, "Bad Request: invalid file_id"))
    tg.fake.push_message("what is this?", photo_bytes=b"\xff\xd8 jpeg")
    await tg.final_text(OWNER, "couldn't download your image")
    [line] = [t for t in tg.fake.chat_view(OWNER) if "image" in t]
    assert "\n" not in line
    assert "invalid file_id" in line
    assert prompts(tg.record) == []  # pi is not asked about a picture it never got
