"""The turn's event queue under random interleavings of its reader and its consumer.

The queue makes its wake-up event only when the consumer finds it empty, and ``put``
sets it only then (adr/0016 §12): a lost wake-up would hang a turn for ever, so the
schedules here are drawn at random (seeded) — puts in bursts or one by one, the
consumer slow or fast, and consumers cancelled while they wait.
"""

from __future__ import annotations

import random

import anyio
import pytest

from evie.agent.event_queue import EventQueue
from evie.agent.events import Notice, TextDelta, TurnEvent

pytestmark = pytest.mark.anyio


def _script(rng: random.Random, n: int) -> list[TurnEvent]:
    """Text deltas (some empty) and other events, in a random order."""
    return [
        TextDelta(rng.choice(["", "a", "bc", "def"])) if rng.random() < 0.7 else Notice(f"n{i}")
        for i in range(n)
    ]


def _expected(script: list[TurnEvent]) -> tuple[str, list[str]]:
    return (
        "".join(e.text for e in script if isinstance(e, TextDelta)),
        [e.text for e in script if isinstance(e, Notice)],
    )


async def _yield(rng: random.Random, most: int) -> None:
    for _ in range(rng.randrange(most + 1)):
        await anyio.lowlevel.checkpoint()


@pytest.mark.parametrize("seed", range(40))
async def test_every_event_reaches_the_consumer_in_order_whatever_the_schedule(
    seed: int,
) -> None:
    rng = random.Random(seed)
    script = _script(rng, rng.randrange(1, 60))
    queue = EventQueue()
    text: list[str] = []
    notices: list[str] = []
    want_text, want_notices = _expected(script)

    async def reader() -> None:  # like pi's stdout callback: never awaits inside a put
        for event in script:
            await _yield(rng, 3)
            queue.put(event)

    async def consumer() -> None:
        while "".join(text) != want_text or notices != want_notices:
            event = await queue.get()
            if isinstance(event, TextDelta):
                assert event.text, "an empty delta is never handed out"
                text.append(event.text)
            else:
                assert isinstance(event, Notice)
                notices.append(event.text)
            await _yield(rng, 3)

    with anyio.fail_after(10):  # a lost wake-up hangs here
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer)
            tg.start_soon(reader)
    assert "".join(text) == want_text
    assert notices == want_notices
    assert len(queue) == 0


@pytest.mark.parametrize("seed", range(20))
async def test_a_consumer_cancelled_while_waiting_leaves_nothing_behind(seed: int) -> None:
    """The next consumer (a turn's wind-down after its reader left) still gets everything."""
    rng = random.Random(seed)
    queue = EventQueue()
    with anyio.move_on_after(0.001 * rng.randrange(1, 5)):
        await queue.get()  # nothing comes: cancelled while it waits
    script = [Notice(f"n{i}") for i in range(rng.randrange(1, 10))]

    async def reader() -> None:
        for event in script:
            await _yield(rng, 2)
            queue.put(event)

    got: list[TurnEvent] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            for _ in script:
                got.append(await queue.get())
    assert got == script
