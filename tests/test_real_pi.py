"""Integration: evie drives the real pi binary (node_modules) against the fake LLM."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import anyio
import attrs
import pytest

from evie.agent import procfs
from evie.agent.events import (
    AssistantMessage,
    FollowUpStarted,
    Outcome,
    Prompt,
    RetryScheduled,
    ToolStarted,
    TurnFinished,
)
from evie.agent.process import PiProcess
from evie.agent.reaper import marked_processes
from evie.config import parse_config
from evie.runtime import open_runtime
from evie.sessions.manager import Queued, SessionManager, SessionSettings
from evie.sessions.slot import SlotStatus
from tests.conftest import PI, Recorder, pid_alive, real_launcher, start_turn
from tests.fake_llm import (
    ANTHROPIC,
    AZURE,
    BEDROCK,
    GEMINI,
    MISTRAL,
    OPENAI,
    RESPONSES,
    VERTEX,
    FakeLLM,
    Reply,
    bedrock_env,
    write_agent_dir,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.realpi,
    pytest.mark.skipif(not PI.exists(), reason="pi is not installed (run npm ci)"),
]


async def test_a_real_turn(tmp_path: Path, llm: FakeLLM) -> None:
    llm.queue(Reply(text="Hello from the fake model\u2028with a separator", chunk=3))
    async with SessionManager(real_launcher(tmp_path, llm)) as manager:
        rec = Recorder()
        result = await manager.send("chat", Prompt("hi there"), rec)
        assert result == TurnFinished(Outcome.DONE)
        assert [m.text for m in rec.of(AssistantMessage)] == [
            "Hello from the fake model\u2028with a separator"
        ]
        assert llm.user_texts(llm.requests[-1]) == ["hi there"]
        status = manager.get_status("chat")
        assert status is not None
        assert status.model == "fake/fake-1"  # pi's get_state answer, typed
        stats = await manager.session_stats("chat")  # and its get_session_stats answer
        assert stats is not None
        assert (stats.tokens.input, stats.tokens.output) == (10, 5)  # the fake LLM's usage


async def test_history_survives_kill_9_of_pi(tmp_path: Path, llm: FakeLLM) -> None:
    async with SessionManager(real_launcher(tmp_path, llm)) as manager:
        await manager.send("chat", Prompt("remember the word kiwi"), Recorder())
        slot = manager._slots["chat"]
        assert slot.process is not None
        session_file = Path(slot.process.state.sessionFile or "")
        os.kill(slot.process.pid, signal.SIGKILL)
        with anyio.fail_after(10):
            await slot.process.exited.wait()
        rec = Recorder()
        assert await manager.send("chat", Prompt("what was the word?"), rec) == TurnFinished(
            Outcome.DONE
        )
        # the new pi process resumed the same session file with the full history
        assert slot.process is not None
        assert Path(slot.process.state.sessionFile or "") == session_file
        assert llm.user_texts(llm.requests[-1]) == ["remember the word kiwi", "what was the word?"]


async def test_abort_mid_stream(tmp_path: Path, llm: FakeLLM) -> None:
    llm.queue(Reply(text="word " * 400, chunk=5, delay=0.01))
    async with SessionManager(real_launcher(tmp_path, llm)) as manager:
        async with anyio.create_task_group() as tg:
            rec = await start_turn(tg, manager, "chat", Prompt("talk a lot"))
            assert await manager.abort("chat")
        assert rec.events[-1] == TurnFinished(Outcome.ABORTED)
        assert llm.chunks_sent < 400
        # the session is usable afterwards
        assert await manager.send("chat", Prompt("still there?"), Recorder()) == TurnFinished(
            Outcome.DONE
        )


@pytest.mark.parametrize(
    ("status", "error", "retries"),
    [
        pytest.param(500, "upstream exploded", [1, 2], id="server-error-retried-then-reported"),
        pytest.param(401, "invalid api key", [], id="unauthorised-fails-at-once"),
    ],
)
async def test_llm_errors_end_the_turn_as_failed(
    tmp_path: Path, llm: FakeLLM, status: int, error: str, retries: list[int]
) -> None:
    llm.queue(*[Reply(status=status, error=error)] * (1 + len(retries)))  # 1 try + the retries
    async with SessionManager(real_launcher(tmp_path, llm)) as manager:
        rec = Recorder()
        result = await manager.send("chat", Prompt("hi"), rec)
        assert isinstance(result, TurnFinished)
        assert result.outcome is Outcome.FAILED
        assert str(status) in (result.error or "")
        assert [r.attempt for r in rec.of(RetryScheduled)] == retries
        assert len(llm.requests) == 1 + len(retries)


async def test_a_retried_error_can_recover(tmp_path: Path, llm: FakeLLM) -> None:
    llm.queue(Reply(status=503, error="overloaded"), Reply(text="better now"))
    async with SessionManager(real_launcher(tmp_path, llm)) as manager:
        rec = Recorder()
        assert await manager.send("chat", Prompt("hi"), rec) == TurnFinished(Outcome.DONE)
        assert [m.text for m in rec.of(AssistantMessage)] == ["better now"]
        assert len(rec.of(RetryScheduled)) == 1


@pytest.mark.parametrize("sandbox", ["off", "auto"])
async def test_tool_children_do_not_outlive_evie(
    tmp_path: Path, llm: FakeLLM, sandbox: str
) -> None:
    # a unique argument finds the child on the host (inside a sandbox, $! is another pid)
    seconds = f"300.{os.getpid()}{len(str(tmp_path))}"
    command = f"nohup sleep {seconds} >/dev/null 2>&1 & echo started"
    llm.queue(Reply(tool=("bash", {"command": command})), Reply(text="ran it"))
    config = parse_config(
        {
            "agent": {
                "command": [str(PI)],
                "provider": "fake",
                "model": "fake-1",
                "agent_dir": str(tmp_path / "agent"),
                "sandbox": sandbox,
            },
            "state": {"dir": str(tmp_path / "state")},
        }
    )
    write_agent_dir(tmp_path / "agent", llm)

    def children() -> list[int]:
        needle = f"sleep\0{seconds}".encode()
        return [pid for pid, cmdline in procfs.read_each("cmdline") if needle in cmdline]

    async with open_runtime(config) as runtime:
        rec = Recorder()
        result = await runtime.manager.send("chat", Prompt("start a background job"), rec)
        assert result == TurnFinished(Outcome.DONE)
        assert rec.of(ToolStarted)[0].tool_name == "bash"
        [child] = children()
        assert pid_alive(child)
    with anyio.fail_after(5):
        while pid_alive(child):
            await anyio.sleep(0.02)
    assert marked_processes(str((tmp_path / "state").resolve())) == []


async def test_a_message_sent_mid_turn_is_answered_as_a_follow_up(
    tmp_path: Path, llm: FakeLLM
) -> None:
    llm.queue(Reply(text="first " * 60, chunk=6, delay=0.01), Reply(text="second answer"))
    async with SessionManager(real_launcher(tmp_path, llm)) as manager:
        async with anyio.create_task_group() as tg:
            rec = await start_turn(tg, manager, "chat", Prompt("tell me something long"))
            queued = await manager.send("chat", Prompt("and one more thing"), Recorder())
            assert isinstance(queued, Queued)
        assert rec.events[-1] == TurnFinished(Outcome.DONE)
        assert rec.of(FollowUpStarted) == [FollowUpStarted("and one more thing")]
        texts = [m.text for m in rec.of(AssistantMessage)]
        assert texts == ["first " * 60, "second answer"]
        assert llm.user_texts(llm.requests[-1]) == ["tell me something long", "and one more thing"]


async def test_steer_mode_delivers_the_message_into_the_running_turn(
    tmp_path: Path, llm: FakeLLM
) -> None:
    llm.queue(Reply(text="first " * 60, chunk=6, delay=0.01), Reply(text="steered"))
    settings = SessionSettings(mid_turn="steer")
    async with SessionManager(real_launcher(tmp_path, llm), settings) as manager:
        async with anyio.create_task_group() as tg:
            rec = await start_turn(tg, manager, "chat", Prompt("go"))
            assert await manager.send("chat", Prompt("actually, stop"), Recorder()) == Queued(
                position=1, steer=True
            )
        assert rec.events[-1] == TurnFinished(Outcome.DONE)
        assert rec.of(FollowUpStarted) == [FollowUpStarted("actually, stop")]
        assert llm.user_texts(llm.requests[-1])[-1] == "actually, stop"


async def _spare_pid(manager: SessionManager) -> int:
    pool = manager.spares
    assert pool is not None
    with anyio.fail_after(30):
        while not pool.ready:
            await anyio.sleep(0.02)
    return pool.ready[0]


async def _answered_by(manager: SessionManager, text: str, pid: int) -> SlotStatus:
    """Send ``text`` to "chat"; the turn succeeds and the process that ran it is ``pid``."""
    result = await manager.send("chat", Prompt(text), Recorder())
    assert result == TurnFinished(Outcome.DONE)
    status = manager.get_status("chat")
    assert status is not None
    assert status.pid == pid
    return status


async def test_a_warm_spare_resumes_the_sessions_history(tmp_path: Path, llm: FakeLLM) -> None:
    """pi's switch_session really loads the history: the model is sent the earlier turn."""
    (tmp_path / "project").mkdir()  # a configured cwd must exist
    launcher = attrs.evolve(real_launcher(tmp_path, llm), cwd=tmp_path / "project")
    settings = SessionSettings(warm_spares=1, max_processes=4)
    async with SessionManager(launcher, settings) as manager:
        await manager.send("chat", Prompt("remember the word kiwi"), Recorder())
        assert await manager.cleanup_idle(now=anyio.current_time() + 10**6) == 1
        spare = await _spare_pid(manager)
        await _answered_by(manager, "what was the word?", spare)
        assert llm.user_texts(llm.requests[-1]) == ["remember the word kiwi", "what was the word?"]


async def test_a_warm_spare_runs_a_new_sessions_tools_in_its_own_work_dir(
    tmp_path: Path, llm: FakeLLM
) -> None:
    llm.queue(Reply(tool=("bash", {"command": "pwd"})), Reply(text="done"))
    settings = SessionSettings(warm_spares=1)
    async with SessionManager(real_launcher(tmp_path, llm), settings) as manager:
        spare = await _spare_pid(manager)
        status = await _answered_by(manager, "where are you?", spare)
        work = (tmp_path / "work" / status.session_id).resolve()
        tool_results = [m for m in llm.requests[-1]["messages"] if m.get("role") == "tool"]
        assert str(work) in json.dumps(tool_results)


NODE_LOAD_LOG = Path(__file__).with_name("node_load_log.mjs")
PROVIDER_MODULE = "pi-ai/dist/providers/openai-completions.js"  # the fake model's api


def _loads(log: Path) -> list[tuple[int, str]]:
    """(pid, url) of each provider module Node loaded, as tests/node_load_log.mjs logs them."""
    if not log.exists():
        return []
    lines = log.read_text().splitlines()
    return [(int(pid), url) for pid, url in (line.split(" ", 1) for line in lines)]


@pytest.mark.parametrize("warm_up", [True, False])
async def test_a_warm_spare_has_loaded_the_model_provider_before_its_first_prompt(
    tmp_path: Path, llm: FakeLLM, warm_up: bool
) -> None:
    """evie's warm-up extension makes pi load the provider (the OpenAI client library and
    pi-ai's module for it) while the spare waits; without it pi does that on the first prompt.

    Node's own loader is watched (a load hook), so the warm-up must have filled the module
    cache pi itself uses, not a copy."""
    log = tmp_path / "loads.log"
    launcher = attrs.evolve(
        real_launcher(tmp_path, llm),
        command=("node", "--import", str(NODE_LOAD_LOG), str(PI)),
        extra_env=(("EVIE_TEST_LOAD_LOG", str(log)), ("EVIE_TEST_LOAD_MATCH", PROVIDER_MODULE)),
        warm_up=warm_up,
    )
    async with SessionManager(launcher, SessionSettings(warm_spares=1)) as manager:
        spare = await _spare_pid(manager)  # pi answered get_state: it is waiting for a prompt
        before = _loads(log)
        await _answered_by(manager, "hello", spare)
        after = _loads(log)
    assert len(llm.requests) == 1  # the warm-up never reached the model
    # loaded once, by the spare
    [(pid, url)] = after
    assert pid == spare
    assert url.endswith(PROVIDER_MODULE)
    assert before == (after if warm_up else [])


@pytest.mark.parametrize(
    ("api", "proxy"),
    [
        (OPENAI, None),
        (OPENAI, "http://127.0.0.1:9"),
        (ANTHROPIC, None),
        (RESPONSES, None),
        (AZURE, None),
        (GEMINI, None),
        (VERTEX, None),
        (MISTRAL, None),
        (BEDROCK, None),
    ],
)
async def test_the_warm_up_streams_from_its_own_loopback_server_never_the_model(
    tmp_path: Path, llm: FakeLLM, api: str, proxy: str | None
) -> None:
    """What evie's extension reports once pi is ready: the provider, fetch and one reply
    streamed through pi-ai from its own 127.0.0.1 server, in the model's API's format.
    With a proxy configured the stream is skipped (pi would send even that request to the
    proxy). The model is never asked; the conversation that follows works."""
    env: tuple[tuple[str, str], ...] = (
        () if proxy is None else (("HTTPS_PROXY", proxy), ("http_proxy", proxy))
    )
    if api == AZURE:  # wins over the model's baseUrl in pi-ai: the warm-up must not use it
        env += (("AZURE_OPENAI_BASE_URL", llm.base_url),)
    if api == VERTEX:  # a Vertex user's usual setting: the warm-up's key must still win over it
        env += (("GOOGLE_CLOUD_PROJECT", "evie-test"), ("GOOGLE_CLOUD_LOCATION", "us-central1"))
    if api == BEDROCK:  # (the warm-up gives the SDK every setting: it reads none of these)
        env += bedrock_env(tmp_path)
    launcher = attrs.evolve(real_launcher(tmp_path, llm, api), extra_env=env)
    async with anyio.create_task_group() as tg:
        process = await PiProcess.spawn(launcher.spec_for("s1"), tg)
        try:
            with anyio.fail_after(10):  # written before pi answered get_state; the pump reads it
                while "evie-warmup:" not in process.stderr_tail:
                    await anyio.sleep(0.02)
            report = process.stderr_tail.split("evie-warmup: ", 1)[1].splitlines()[0]
            assert report.startswith(f"provider {api}, fetch")
            assert ("loopback stream ready" in report) == (proxy is None)
            assert llm.requests == []
            if proxy is None:  # (with the proxy, pi would send the model's request there too)
                events = [e async for e in process.start_turn("hello")]
                assert events[-1] == TurnFinished(Outcome.DONE)
                assert [llm.user_texts(r) for r in llm.requests] == [["hello"]]
        finally:
            await process.close()


async def test_bedrocks_warm_up_speaks_http2_unless_pi_ai_is_told_http1(
    tmp_path: Path, llm: FakeLLM
) -> None:
    """The AWS SDK's default handler is HTTP/2; the test above runs pi-ai's HTTP/1.1 switch
    (the fake speaks no HTTP/2). Without it the warm-up's own server and client speak
    HTTP/2, and still nothing reaches the model."""
    env = tuple((k, v) for k, v in bedrock_env(tmp_path) if k != "AWS_BEDROCK_FORCE_HTTP1")
    launcher = attrs.evolve(real_launcher(tmp_path, llm, BEDROCK), extra_env=env)
    async with anyio.create_task_group() as tg:
        process = await PiProcess.spawn(launcher.spec_for("s1"), tg)
        try:
            with anyio.fail_after(10):
                while "evie-warmup:" not in process.stderr_tail:
                    await anyio.sleep(0.02)
            report = process.stderr_tail.split("evie-warmup: ", 1)[1].splitlines()[0]
            assert report.startswith(f"provider {BEDROCK}, fetch, loopback stream ready")
            assert llm.requests == []
        finally:
            await process.close()
