"""Integration: evie drives the real pi binary (node_modules) against the fake LLM."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from evie.agent.events import AssistantMessage, Outcome, Prompt, TurnFinished
from evie.agent.launcher import PiLauncher
from evie.sessions.manager import SessionManager
from tests.conftest import Recorder
from tests.fake_llm import FakeLLM, Reply, running_fake_llm, write_agent_dir

PI = Path(__file__).resolve().parent.parent / "node_modules" / ".bin" / "pi"

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.realpi,
    pytest.mark.skipif(not PI.exists(), reason="pi is not installed (run npm ci)"),
]


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    async with running_fake_llm() as fake:
        yield fake


def real_launcher(tmp_path: Path, llm: FakeLLM) -> PiLauncher:
    agent_dir = tmp_path / "state" / "agent"
    write_agent_dir(agent_dir, llm)
    return PiLauncher(
        command=(str(PI),),
        state_dir=tmp_path / "state",
        agent_dir=agent_dir,
        provider="fake",
        model="fake-1",
        system_prompt="You are a test.",
    )


async def test_a_real_turn(tmp_path: Path, llm: FakeLLM) -> None:
    llm.queue(Reply(text="Hello from the fake model\u2028with a separator", chunk=3))
    async with SessionManager(real_launcher(tmp_path, llm)) as manager:
        rec = Recorder()
        result = await manager.send("chat", Prompt("hi there"), rec)
        assert result == TurnFinished(Outcome.DONE)
        assert [m.text for m in rec.of(AssistantMessage)] == [  # type: ignore[attr-defined]
            "Hello from the fake model\u2028with a separator"
        ]
        assert llm.user_texts(llm.requests[-1]) == ["hi there"]
        status = manager.get_status("chat")
        assert status is not None
        assert status.model == "fake/fake-1"
