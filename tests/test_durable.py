"""The durable inbox and outbox: outages, restarts, bounds (adr/0012)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evie.agent.events import Outcome
from evie.chat.courier import CourierSettings, dropped_text
from evie.durable import store
from evie.durable.inbox import QUEUED, STARTED, Inbox
from evie.durable.outbox import Outbox
from evie.errors import StateError
from evie.platforms.telegram import TelegramTransport
from evie.sessions.manager import SessionManager
from tests.conftest import fake_launcher
from tests.fake_telegram import FakeTelegram
from tests.harness import OWNER, TelegramHarness, serving_telegram

pytestmark = pytest.mark.anyio


def durable_telegram(tmp_path: Path) -> AbstractAsyncContextManager[TelegramHarness]:
    """Telegram over a disk-backed inbox and outbox, with retry intervals compressed."""
    inbox, outbox = Inbox(tmp_path / "inbox.json"), Outbox(tmp_path / "outbox")
    inbox.load()
    outbox.load()
    # one second here stands for a minute: 60 s caps become 1 s
    courier = CourierSettings(max_age=3600, late_after=1.0, base_backoff=0.05, max_backoff=1.0)
    return serving_telegram(
        fake_launcher(tmp_path), edit_interval=0.2, inbox=inbox, outbox=outbox, courier=courier
    )


@pytest.fixture
async def tg(tmp_path: Path) -> AsyncIterator[tuple[FakeTelegram, SessionManager]]:
    async with durable_telegram(tmp_path) as h:
        yield h.fake, h.manager


def script(*steps: dict[str, object]) -> str:
    return "script:" + json.dumps(list(steps))


async def test_an_outage_during_a_turn_delays_the_reply_but_loses_nothing(
    tmp_path: Path, tg: tuple[FakeTelegram, SessionManager]
) -> None:
    fake, manager = tg
    release = tmp_path / "release"
    fake.push_message(script({"text": "first"}, {"wait_file": str(release)}, {"text": " done"}))
    await fake.wait_for(lambda: any("first" in t for t in fake.chat_view(OWNER)))
    fake.push_message("follow-up")  # queued into the running turn
    await fake.wait_for(lambda: any("queued #1" in t for t in fake.chat_view(OWNER)))
    fake.down = True  # every Bot API method answers 503 from now on
    failed_before = len(fake.calls)
    release.touch()
    # the turn ends, with its follow-up, while Telegram is down: nothing is aborted
    await fake.wait_for(
        lambda: (s := manager.get_status(f"tg:{OWNER}")) is not None and s.state.value == "idle",
        seconds=30,
    )
    status = manager.get_status(f"tg:{OWNER}")
    assert status is not None
    assert status.last_outcome is Outcome.DONE
    # far more attempts than the old limit of 6 retries, over more than late_after
    await fake.wait_for(lambda: len(fake.calls) - failed_before > 20, seconds=30)
    await anyio.sleep(1.5)
    fake.down = False
    await fake.wait_for(
        lambda: any("echo: follow-up" in t for t in fake.chat_view(OWNER)), seconds=30
    )
    await anyio.sleep(0.5)
    view = fake.chat_view(OWNER)
    replies = [t for t in view if "first done" in t]
    follow = [t for t in view if "echo: follow-up" in t]
    assert len(replies) == 1  # exactly once
    assert len(follow) == 1
    assert view.index(replies[0]) < view.index(follow[0])  # in order
    assert follow[0].startswith("(delayed reply from ")  # and it says it is late


async def test_a_long_reply_held_through_an_outage_keeps_its_file_parts(tmp_path: Path) -> None:
    async with durable_telegram(tmp_path) as h:
        fake, manager = h.fake, h.manager
        assert h.interface.frontend is not None
        transport = h.interface.frontend.transport
        assert isinstance(transport, TelegramTransport)
        transport.max_file_bytes = 20_000  # stands for Telegram's 50 MB (its upload_limit)
        fake.max_upload = 20_000
        release = tmp_path / "release"
        text = "\n\n".join(f"Paragraph {i}: " + "word " * 300 for i in range(40))
        fake.push_message(script({"text": "start "}, {"wait_file": str(release)}, {"text": text}))
        await fake.wait_for(lambda: any("start" in t for t in fake.chat_view(OWNER)))
        fake.down = True  # the whole reply goes to the outbox: first part and file parts
        release.touch()
        await fake.wait_for(
            lambda: (
                (s := manager.get_status(f"tg:{OWNER}")) is not None and s.state.value == "idle"
            ),
            seconds=30,
        )
        await anyio.sleep(1.0)
        fake.down = False
        await fake.wait_for(lambda: len(fake.documents) >= 3, seconds=30)
        await anyio.sleep(0.5)
        n = len(fake.documents)
        names = [d.filename for d in fake.documents]
        assert names == [f"reply-{i}-of-{n}.md" for i in range(1, n + 1)]
        assert all(len(d.data) <= 20_000 for d in fake.documents)  # each within the limit
        assert b"".join(d.data for d in fake.documents) == ("start " + text).encode()


async def test_messages_waiting_in_the_inbox_run_after_a_restart(tmp_path: Path) -> None:
    """What a kill -9 leaves behind: pending items rerun in order, started ones never."""
    inbox = Inbox(tmp_path / "inbox.json")
    inbox.load()
    first = inbox.add("tg:7", OWNER, 1, "was running")
    second = inbox.add("tg:7", OWNER, 2, "was queued in pi")
    third = inbox.add("tg:7", OWNER, 3, "was waiting")
    assert first is not None
    assert second is not None
    assert third is not None
    assert inbox.add("tg:7", OWNER, 3, "a replay") is None
    inbox.mark(first.seq, STARTED)
    inbox.mark(second.seq, QUEUED)
    inbox.set_cursor("tg:offset", 99)
    await inbox.commit()

    again = Inbox(tmp_path / "inbox.json")
    again.load()
    assert [i.text for i in again.interrupted] == ["was running"]
    assert [i.text for i in again.pending("tg")] == ["was queued in pi", "was waiting"]
    assert again.cursor("tg:offset") == 99
    assert again.add("tg:7", OWNER, 2, "a replay after the restart") is None


async def test_interrupted_items_are_told_once_across_restarts(tmp_path: Path) -> None:
    from evie.runtime import _tell_interrupted
    from evie.state import StateStore

    inbox = Inbox(tmp_path / "inbox.json")
    item = inbox.add("tg:7", OWNER, 1, "hello there")
    assert item is not None
    inbox.mark(item.seq, STARTED)
    await inbox.commit()
    for _restart in range(2):
        inbox, outbox = Inbox(tmp_path / "inbox.json"), Outbox(tmp_path / "outbox")
        inbox.load()
        outbox.load()
        await _tell_interrupted(inbox, outbox, StateStore(tmp_path / "state.json"))
    head = outbox.head("tg:7")
    assert head is not None
    assert "hello there" in head.text
    assert len(outbox) == 1


@settings(max_examples=30, deadline=None)
@given(
    ops=st.lists(st.tuples(st.sampled_from(["put", "deliver"]), st.integers(1, 3)), max_size=60),
    limit=st.integers(4, 8),
)
def test_the_outbox_is_bounded_and_keeps_order(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]], limit: int
) -> None:
    """Whatever the puts and deliveries, each chat holds <= limit entries, in order,
    survives a reload unchanged, and every dropped entry is counted in a marker."""
    path = tmp_path_factory.mktemp("outbox")
    outbox = Outbox(path, max_per_chat=limit)
    written: dict[str, list[int]] = {}
    delivered: dict[str, list[str]] = {}

    async def run() -> None:
        n = 0
        for op, chat_no in ops:
            chat = f"tg:{chat_no}"
            if op == "put":
                n += 1
                outbox.put(chat, f"m{n}")
                written.setdefault(chat, []).append(n)
            elif (head := outbox.head(chat)) is not None:
                outbox.mark_attempted(head)
                outbox.remove(head)
                delivered.setdefault(chat, []).append(
                    dropped_text(head.dropped) if head.dropped else head.text
                )
            await outbox.commit()

    anyio.run(run)
    reloaded = Outbox(path, max_per_chat=limit)
    reloaded.load()
    for chat, sent in written.items():
        queue = []
        while (head := reloaded.head(chat)) is not None:
            queue.append(head)
            reloaded.remove(head)
        assert len(queue) <= limit
        texts = delivered.get(chat, []) + [e.text for e in queue if not e.dropped]
        numbers = [int(t[1:]) for t in texts if t.startswith("m")]
        assert numbers == sorted(numbers)  # order kept
        dropped = sum(e.dropped for e in queue) + sum(
            int(t.split()[1]) for t in delivered.get(chat, []) if t.startswith("⚠️")
        )
        assert len(numbers) + dropped == len(sent)  # nothing vanishes uncounted


@given(commits=st.integers(1, 12), cut=st.floats(0, 1), resume=st.booleans())
@settings(max_examples=40, deadline=None)
def test_the_inbox_journal_reloads_the_last_whole_snapshot(
    tmp_path_factory: pytest.TempPathFactory, commits: int, cut: float, resume: bool
) -> None:
    """Each commit appends a snapshot line; a file cut anywhere (a kill during a write)
    reloads as the last commit written whole, and the next commit after a start leaves
    no cut line behind to hide it (it compacts)."""
    path = tmp_path_factory.mktemp("journal") / "inbox.json"
    ends: list[int] = []

    async def run() -> None:
        inbox = Inbox(path)
        inbox.load()
        for n in range(1, commits + 1):
            inbox.set_cursor("tg:offset", n)
            await inbox.commit()
            ends.append(path.stat().st_size)
        inbox.close()

    anyio.run(run)
    assert len(path.read_bytes().splitlines()) == commits  # appended, not rewritten
    size = round(cut * ends[-1])
    with open(path, "r+b") as f:
        f.truncate(size)
    whole = [n for n, end in enumerate(ends, 1) if end - 1 <= size]  # (newline or not)
    again = Inbox(path)
    if not whole:
        with pytest.raises(StateError):
            again.load()
        return
    again.load()
    assert again.cursor("tg:offset") == whole[-1]
    if resume:
        again.set_cursor("tg:offset", 100)
        anyio.run(again.commit)
        again.set_cursor("tg:offset", 101)
        anyio.run(again.commit)
        again.close()
        last = Inbox(path)
        last.load()
        assert last.cursor("tg:offset") == 101
        assert len(path.read_bytes().splitlines()) == 2  # compacted at the first commit


async def test_the_inbox_journal_is_compacted_when_it_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "COMPACT_BYTES", 4096)
    inbox = Inbox(tmp_path / "inbox.json")
    inbox.load()
    for n in range(2000):
        inbox.set_cursor("tg:offset", n)
        await inbox.commit()
    inbox.close()
    assert inbox._doc.compactions > 1
    assert (tmp_path / "inbox.json").stat().st_size <= 4096
    again = Inbox(tmp_path / "inbox.json")
    again.load()
    assert again.cursor("tg:offset") == 1999
