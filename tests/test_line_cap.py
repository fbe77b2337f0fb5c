"""pi's lines are capped at [agent] max_line_bytes: a longer one is dropped and counted."""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import attrs
import pytest

from evie.agent import protocol as p
from evie.agent.events import AssistantMessage, Outcome, TurnFinished
from evie.http import render_metrics
from evie.sessions.manager import SessionManager
from tests.conftest import Recorder, fake_launcher, script

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("seed", range(40))
def test_splitter_keeps_short_lines_and_drops_long_ones_whatever_the_chunking(seed: int) -> None:
    rng = random.Random(seed)
    cap = rng.choice([1, 5, 16, 100])
    records = [
        bytes(
            rng.choice(b'ab{}"\xe2\x80\xa8')
            for _ in range(rng.choice([0, 1, cap, cap + 1, 3 * cap]))
        )
        for _ in range(rng.randint(0, 30))
    ]
    stream = b"".join(r + b"\n" for r in records)
    splitter = p.LineSplitter(cap)
    out: list[bytes] = []
    dropped: list[bytes] = []
    i = 0
    while i < len(stream):
        step = rng.randint(1, 3 * cap + 2)
        out += splitter.feed(stream[i : i + step])
        dropped += splitter.dropped
        splitter.dropped.clear()
        i += step
    assert out == [r for r in records if len(r) <= cap]
    long = [r for r in records if len(r) > cap]
    assert len(dropped) == len(long)
    for head, record in zip(dropped, long, strict=True):  # enough of it to tell its type
        assert record.startswith(head)
        assert len(head) >= min(p.LineSplitter.HEAD, cap + 1)
    assert splitter.rest() == b""
    assert len(splitter._buf) <= cap  # never holds more than the cap


def test_the_type_of_a_dropped_record_is_read_from_its_head() -> None:
    assert p.record_type(b'{"type":"agent_end","messages":[{"pad":"xxxx') == "agent_end"
    assert p.record_type(b'{"pad":"x"') is None


async def test_an_over_long_line_is_dropped_and_the_turn_carries_on(tmp_path: Path) -> None:
    launcher = fake_launcher(tmp_path)
    launcher = attrs.evolve(launcher, base=attrs.evolve(launcher.base, max_line_bytes=100_000))
    async with SessionManager(launcher) as manager:
        rec = Recorder()
        steps: list[dict[str, object]] = [
            {"text": "before "},
            {"big_line": 300_000},
            {"text": "after"},
        ]
        with anyio.fail_after(20):
            result = await manager.send("chat", script(*steps), rec)
        assert result == TurnFinished(Outcome.DONE)
        assert [m.text for m in rec.of(AssistantMessage)] == ["before after"]
        assert manager.metrics.lines_dropped == 1
        assert "evie_pi_lines_dropped_total 1" in render_metrics(manager, manager.metrics)
        # an over-long agent_end still ends the turn (a stand-in is dispatched)
        with anyio.fail_after(20):
            result = await manager.send("chat", script({"end_pad": 300_000}, {"text": "x"}), rec)
        assert result == TurnFinished(Outcome.DONE)
        assert manager.metrics.lines_dropped == 2
