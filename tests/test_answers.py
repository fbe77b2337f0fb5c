"""pi's answers to get_state / get_session_stats are typed: a wrong shape ends cleanly.

The fake pi garbles answers on request (``--garble``, or the ``garble`` script
step); the real pi's answers decode (see test_real_pi.py for the model name).
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from evie.agent.answers import PiState, SessionStats, decode_answer
from evie.agent.events import Outcome, Prompt, TurnFinished
from evie.agent.protocol import Response, decode_line
from evie.chat.commands import run_command
from evie.errors import AgentProtocolError
from evie.sessions.manager import SessionManager
from tests.conftest import Recorder, fake_launcher, script

pytestmark = pytest.mark.anyio


def answer(command: str, data: str) -> Response:
    line = f'{{"type":"response","command":"{command}","success":true,"data":{data}}}'
    response = decode_line(line.encode())
    assert isinstance(response, Response)
    return response


def test_the_answers_documented_by_pi_decode() -> None:
    # abridged from node_modules/@mariozechner/pi-coding-agent/docs/rpc.md
    state = decode_answer(
        answer(
            "get_state",
            '{"model":{"provider":"anthropic","id":"claude-sonnet-4-5","contextWindow":200000},'
            '"thinkingLevel":"medium","isStreaming":false,"sessionFile":"/s.jsonl",'
            '"sessionId":"abc123","messageCount":5,"pendingMessageCount":2}',
        ),
        PiState,
    )
    assert state.model is not None
    assert state.model.name == "anthropic/claude-sonnet-4-5"
    assert state.pendingMessageCount == 2
    assert decode_answer(answer("get_state", '{"model":null}'), PiState).model is None
    stats = decode_answer(
        answer(
            "get_session_stats",
            '{"sessionFile":"/s.jsonl","userMessages":5,"tokens":{"input":50000,"output":10000,'
            '"cacheRead":40000,"total":105000},"cost":0.45,'
            '"contextUsage":{"tokens":60000,"contextWindow":200000,"percent":30}}',
        ),
        SessionStats,
    )
    assert (stats.tokens.input, stats.tokens.output, stats.cost) == (50000, 10000, 0.45)
    assert stats.contextUsage is not None
    assert stats.contextUsage.percent == 30
    after_compaction = '{"tokens":{"input":1,"output":2},"cost":0,"contextUsage":{"percent":null}}'
    stats = decode_answer(answer("get_session_stats", after_compaction), SessionStats)
    assert stats.contextUsage is not None
    assert stats.contextUsage.percent is None


def _decode_as_asked(command: str, data: str) -> PiState | SessionStats:
    """pi's answer to ``command`` decoded as the type evie reads it as."""
    if command == "get_state":
        return decode_answer(answer(command, data), PiState)
    return decode_answer(answer(command, data), SessionStats)


@pytest.mark.parametrize(
    ("command", "data", "where"),
    [
        ("get_state", '{"pendingMessageCount":"2"}', "$.pendingMessageCount"),
        ("get_state", '{"model":"anthropic/x"}', "$.model"),
        ("get_state", '{"model":{"provider":1}}', "$.model.provider"),
        ("get_state", "[]", "got `array`"),
        ("get_state", "null", "got `null`"),
        ("get_session_stats", '{"tokens":{"input":"ten"}}', "$.tokens.input"),
        ("get_session_stats", '{"cost":"cheap"}', "$.cost"),
        ("get_session_stats", '{"contextUsage":{"percent":"30%"}}', "$.contextUsage.percent"),
    ],
)
def test_a_wrong_typed_field_is_a_one_line_protocol_error(
    command: str, data: str, where: str
) -> None:
    with pytest.raises(AgentProtocolError) as info:
        _decode_as_asked(command, data)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"pi's answer to {command} has an unexpected shape")
    assert where in message


async def test_a_wrong_typed_get_state_after_the_turn_ends_it_failed_and_the_next_works(
    tmp_path: Path,
) -> None:
    async with SessionManager(fake_launcher(tmp_path)) as manager:
        rec = Recorder()
        with anyio.fail_after(10):  # it used to hang here forever
            finished = await manager.send(
                "chat", script({"garble": "get_state"}, {"text": "partial answer"}), rec
            )
        assert isinstance(finished, TurnFinished)
        assert finished.outcome is Outcome.FAILED
        assert finished.error is not None
        assert "\n" not in finished.error
        assert "get_state has an unexpected shape" in finished.error
        assert "$.model" in finished.error or "$.pendingMessageCount" in finished.error
        assert "send your message again" in finished.error
        assert rec.text() == "partial answer"  # what was streamed before is kept
        rec2 = Recorder()
        assert await manager.send("chat", Prompt("again"), rec2) == TurnFinished(Outcome.DONE)
        assert rec2.text() == "echo: again"
        status = manager.get_status("chat")
        assert status is not None
        assert status.last_outcome is Outcome.DONE


async def test_a_pi_whose_state_is_misshapen_from_the_start_fails_to_start_clearly(
    tmp_path: Path,
) -> None:
    launcher = fake_launcher(tmp_path, ("bad-", ("--garble", "get_state")))
    async with SessionManager(launcher, known_sessions={"chat": "bad-1"}) as manager:
        rec = Recorder()
        with anyio.fail_after(20):
            finished = await manager.send("chat", Prompt("hi"), rec)
        assert isinstance(finished, TurnFinished)
        assert finished.outcome is Outcome.FAILED
        assert finished.error is not None
        assert "\n" not in finished.error
        assert "get_state has an unexpected shape" in finished.error
        assert "[agent] command" in finished.error
        slot = manager._slots["chat"]
        assert slot.process is None  # the misshapen pi was stopped, not kept


async def test_status_without_usage_when_the_stats_answer_is_misshapen(tmp_path: Path) -> None:
    async with SessionManager(fake_launcher(tmp_path)) as manager:
        await manager.send("chat", script({"garble": "get_session_stats"}), Recorder())
        with anyio.fail_after(10):
            text = await run_command(manager, "chat", "status")
        assert text.startswith("Session ")
        assert "Usage" not in text
        assert "Turns: 1" in text
        text = await run_command(manager, "chat", "status")  # the next answer is fine again
        assert "Usage: tokens in 10, out 20, cost $0.0012" in text
