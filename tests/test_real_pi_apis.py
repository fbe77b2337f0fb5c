"""The real pi on Anthropic's messages API, OpenAI's own models' (responses), Gemini's,
Mistral's and Bedrock's, against the fake LLM speaking each: a turn with a tool call and
usage, and the model's faults as a user sees them through Telegram. (Chat completions, the
fake model's default API: test_real_pi.py.)
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from evie.agent.events import AssistantMessage, Outcome, Prompt, ToolStarted, TurnFinished
from evie.agent.launcher import PiLauncher
from evie.agent.model_error import CUT, HTML_NOTE
from evie.chat.streaming import Delivery
from evie.sessions.manager import SessionManager
from tests.conftest import PI, Recorder, real_launcher
from tests.fake_llm import (
    ANTHROPIC,
    BEDROCK,
    GEMINI,
    MISTRAL,
    RESPONSES,
    FakeLLM,
    Reply,
    bedrock_env,
)
from tests.harness import OWNER, serving_telegram

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.realpi,
    pytest.mark.skipif(not PI.exists(), reason="pi is not installed (run npm ci)"),
]

# what pi uses for Claude, for OpenAI's own models, for Gemini, for Mistral's and for
# Bedrock's. (Azure's and Vertex's clients read the same streams: test_real_pi.py's warm-up
# test runs a real turn on each.)
APIS = [ANTHROPIC, RESPONSES, GEMINI, MISTRAL, BEDROCK]


def launcher_for(tmp_path: Path, llm: FakeLLM, api: str) -> PiLauncher:
    env = bedrock_env(tmp_path) if api == BEDROCK else ()
    return attrs.evolve(real_launcher(tmp_path, llm, api), extra_env=env)


@pytest.mark.parametrize("api", APIS)
async def test_a_real_turn_with_a_tool_call(tmp_path: Path, llm: FakeLLM, api: str) -> None:
    """pi's provider for ``api`` streams that API's own events (named events with content
    blocks and the usage in message_delta, output items, or whole candidates with a
    function-call part); evie sees the same turn and usage from it."""
    llm.queue(
        Reply(text="let me look", tool=("bash", {"command": "echo from-the-tool"})),
        Reply(text="It said **from-the-tool**.", chunk=4),
    )
    async with SessionManager(launcher_for(tmp_path, llm, api)) as manager:
        rec = Recorder()
        assert await manager.send("chat", Prompt("run it"), rec) == TurnFinished(Outcome.DONE)
        assert rec.of(ToolStarted)[0].tool_name == "bash"
        texts = [m.text for m in rec.of(AssistantMessage)]
        assert texts == ["let me look", "It said **from-the-tool**."]
        assert [llm.user_texts(r) for r in llm.requests] == [["run it"], ["run it"]]
        [result] = llm.tool_results(llm.requests[-1])  # the tool's output, in the API's shape
        assert "from-the-tool" in result
        status = manager.get_status("chat")
        assert status is not None
        assert status.model == "fake/fake-1"
        stats = await manager.session_stats("chat")
        assert stats is not None
        assert (stats.tokens.input, stats.tokens.output) == (20, 10)  # 10 + 5 per request


@pytest.mark.parametrize("api", APIS)
async def test_the_models_faults_reach_the_user_as_one_line(
    tmp_path: Path, llm: FakeLLM, api: str
) -> None:
    """Through Telegram: a 429 retried by pi and still failing, a proxy's HTML 502 page,
    a connection reset mid-reply (pi retries; the answer arrives once), a model that never
    answers (/stop ends it); after each, the next message is answered.

    On Bedrock the AWS SDK names a 429 by its exception (``Throttling error: …``; pi retries
    it on the message, as Bedrock words it) and reports a page only as an answer it could not
    parse, without the status; over HTTP/1.1 a reset mid-reply is only "aborted". pi retries
    neither: evie says what each was, after the part of the reply that arrived."""
    retried = 3  # pi's first try and its two retries (write_agent_dir)
    page_tries = 1 if api == BEDROCK else retried
    llm.queue(
        *[Reply(status=429, error="Too many requests, please wait")] * retried,
        *[Reply(status=502, error="Bad Gateway", html=True)] * page_tries,
        Reply(text="never finished " * 10, chunk=5, drop_after=2),
        *([] if api == BEDROCK else [Reply(text="whole answer")]),
        Reply(hang=True),
        Reply(text="still here"),
    )
    launcher = launcher_for(tmp_path, llm, api)
    async with serving_telegram(launcher, delivery=Delivery()) as tg:
        fake = tg.fake

        def lines(prefix: str) -> list[str]:
            return [t for t in fake.chat_view(OWNER) if t.startswith(prefix)]

        warning = "⚠️ The agent reported an error: "
        fake.push_message("one")
        await fake.wait_for(lambda: len(lines(warning)) == 1, seconds=30)
        fake.push_message("two")
        await fake.wait_for(lambda: len(lines(warning)) == 2, seconds=30)
        quota, page = lines(warning)
        assert ("Throttling error: " if api == BEDROCK else "429") in quota
        assert "Too many requests, please wait" in quota
        told = "An unreadable answer" if api == BEDROCK else "502 Bad Gateway"
        assert page == f"{warning}{told} {HTML_NOTE}"
        fake.push_message("three")
        if api == BEDROCK:
            await tg.shows(OWNER, f"never fini\n\n{warning}{CUT}")
        else:
            await tg.shows(OWNER, "whole answer")
        threes = 1 if api == BEDROCK else 2
        fake.push_message("four")
        await fake.wait_for(
            lambda: len(llm.requests) == retried + page_tries + threes + 1, seconds=30
        )
        fake.push_message("/stop")
        await tg.shows(OWNER, "⏹ Stopped")
        fake.push_message("five")
        await tg.shows(OWNER, "still here")
        view = fake.chat_view(OWNER)
    assert all("\n" not in t for t in view if not t.startswith(("whole", "still", "never")))
    assert sum("whole answer" in t for t in view) == (api != BEDROCK)
    assert "never finished" not in " ".join(view)
    assert [llm.user_texts(r)[-1] for r in llm.requests] == (
        ["one"] * retried + ["two"] * page_tries + ["three"] * threes + ["four", "five"]
    )
