"""The turn state machine fed with pi's own records (as pi writes them), without a process."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgspec

from evie.agent import protocol as p
from evie.agent.events import Outcome, TurnFinished
from evie.agent.turn import Turn


def line(obj: dict[str, Any]) -> p.PiMessage | p.OtherEvent:
    return p.decode_line(json.dumps(obj).encode())


class Barriers:
    """pi's answers to the get_state barrier, handed out when the test says so."""

    def __init__(self) -> None:
        self.waiting: list[Callable[[p.Response | None], None]] = []

    def __call__(self, callback: Callable[[p.Response | None], None]) -> None:
        self.waiting.append(callback)

    def answer(self, pending: int = 0) -> None:
        data = msgspec.json.encode({"isStreaming": False, "pendingMessageCount": pending})
        self.waiting.pop(0)(
            p.Response(id="x", command="get_state", success=True, data=msgspec.Raw(data))
        )


def assistant(stop: str, text: str = "", error: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": [{"type": "text", "text": text}],
                               "stopReason": stop}  # fmt: skip
    if error:
        message["errorMessage"] = error
    return {"type": "message_end", "message": message}


def user(text: str) -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {"role": "user", "content": [{"type": "text", "text": text}]},
    }


def test_an_abort_too_late_to_stop_a_finished_reply_is_done() -> None:
    barriers = Barriers()
    turn = Turn(barriers)
    turn.abort_requested = True  # /stop arrived before pi even started
    for record in ({"type": "agent_start"}, user("hi"), assistant("stop", "complete answer"),
                   {"type": "agent_end", "messages": []}):  # fmt: skip
        turn.feed(line(record))
    barriers.answer()
    assert turn.finished == TurnFinished(Outcome.DONE)


def test_agent_end_is_not_final_while_a_retry_is_announced() -> None:
    barriers = Barriers()
    turn = Turn(barriers)
    turn.feed(line({"type": "agent_start"}))
    turn.feed(line(assistant("error", error="529 overloaded")))
    turn.feed(line({"type": "agent_end", "messages": []}))
    turn.feed(line({"type": "auto_retry_start", "attempt": 1, "maxAttempts": 3, "delayMs": 2000,
                    "errorMessage": "529 overloaded"}))  # fmt: skip
    barriers.answer()
    assert turn.finished is None
    assert turn.retry is not None
    turn.feed(line({"type": "agent_start"}))
    turn.feed(line(assistant("stop", "ok")))
    turn.feed(line({"type": "agent_end", "messages": []}))
    barriers.answer()
    assert turn.finished == TurnFinished(Outcome.DONE)


def test_a_follow_up_sent_as_the_run_ended_keeps_the_turn_open() -> None:
    barriers = Barriers()
    turn = Turn(barriers)
    turn.feed(line({"type": "agent_start"}))
    turn.feed(line(user("first")))
    turn.note_followup_sent("second")
    turn.feed(line(assistant("stop", "answer one")))
    turn.feed(line({"type": "agent_end", "messages": []}))
    barriers.answer(pending=0)  # pi is starting a new run for "second"
    assert turn.finished is None
    turn.feed(line({"type": "agent_start"}))
    turn.feed(line(user("second")))
    turn.feed(line(assistant("stop", "answer two")))
    turn.feed(line({"type": "agent_end", "messages": []}))
    barriers.answer()
    assert turn.finished == TurnFinished(Outcome.DONE)
    assert turn.queued_texts == []


def test_a_refused_follow_up_does_not_leave_the_turn_hanging() -> None:
    barriers = Barriers()
    turn = Turn(barriers)
    turn.feed(line({"type": "agent_start"}))
    turn.note_followup_sent("second")
    turn.feed(line(assistant("stop", "answer one")))
    turn.feed(line({"type": "agent_end", "messages": []}))
    barriers.answer(pending=0)
    assert turn.finished is None
    turn.followup_failed("second")  # pi answered the queued prompt with an error
    assert turn.finished == TurnFinished(Outcome.DONE)


def test_a_stale_barrier_answer_is_ignored() -> None:
    barriers = Barriers()
    turn = Turn(barriers)
    turn.feed(line({"type": "agent_start"}))
    turn.feed(line(assistant("stop", "one")))
    turn.feed(line({"type": "agent_end", "messages": []}))
    turn.feed(line({"type": "agent_start"}))  # a new run began before the answer came
    barriers.answer()
    assert turn.finished is None
