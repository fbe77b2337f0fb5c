"""SessionManager against the fake pi: locking, status during turns, crashes, streaming."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import attrs
import pytest

from evie.agent.events import (
    AssistantMessage,
    FollowUpStarted,
    Outcome,
    Prompt,
    RetryScheduled,
    TextDelta,
    ToolFinished,
    ToolStarted,
    TurnFinished,
)
from evie.agent.reaper import marked_processes
from evie.errors import SessionReplaced
from evie.sessions.manager import Queued, SessionManager, SessionSettings
from evie.sessions.slot import SlotState, SlotStatus
from evie.state import StateStore
from tests.conftest import Recorder, fake_launcher, pid_alive, script, start_turn

pytestmark = pytest.mark.anyio


def status_of(manager: SessionManager, key: str) -> SlotStatus:
    """The chat's status, which must exist (the test has spoken to that chat)."""
    status = manager.get_status(key)
    assert status is not None
    return status


def held(release: Path, before: str = "working") -> Prompt:
    """A turn that streams some text, then waits until the test creates ``release``."""
    return script({"text": before}, {"wait_file": str(release)}, {"text": " done"})


async def test_plain_turn_streams_and_finishes(manager: SessionManager) -> None:
    rec = Recorder()
    result = await manager.send("chat", Prompt("hello"), rec)
    assert result == TurnFinished(Outcome.DONE)
    assert rec.text() == "echo: hello"
    assert [e.text for e in rec.of(AssistantMessage)] == ["echo: hello"]
    assert rec.events[-1] == result
    status = manager.get_status("chat")
    assert status is not None
    assert status.state is SlotState.IDLE
    assert status.last_outcome is Outcome.DONE
    assert status.model == "fake/fake-1"


async def test_status_and_stats_answer_while_a_turn_runs(
    manager: SessionManager, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    await manager.send("other", Prompt("warm up"), Recorder())
    async with anyio.create_task_group() as tg:
        rec = await start_turn(tg, manager, "chat", held(release))
        with anyio.fail_after(2):
            mine = manager.get_status("chat")
            other = manager.get_status("other")
            # a real round trip to the same pi process while its turn is held open
            stats = await manager.session_stats("chat")
        assert mine is not None
        assert mine.state is SlotState.RUNNING
        assert mine.turn_elapsed is not None
        assert other is not None
        assert other.state is SlotState.IDLE
        assert stats is not None
        assert (stats.tokens.input, stats.tokens.output) == (10, 20)
        assert rec.of(TurnFinished) == []  # the turn really was still running
        release.touch()
    assert rec.events[-1] == TurnFinished(Outcome.DONE)
    assert rec.text() == "working done"


async def test_cleanup_idle_never_waits_for_or_removes_a_busy_slot(tmp_path: Path) -> None:
    release = tmp_path / "release"
    settings = SessionSettings(idle_timeout=0.0)
    async with SessionManager(fake_launcher(tmp_path), settings) as manager:
        await manager.send("idle", Prompt("hi"), Recorder())
        idle_slot = manager._slots["idle"]
        assert idle_slot.process is not None
        idle_pid = idle_slot.process.pid
        async with anyio.create_task_group() as tg:
            rec = await start_turn(tg, manager, "busy", held(release))
            busy = manager._slots["busy"]
            with anyio.fail_after(5):
                stopped = await manager.cleanup_idle()
            assert stopped == 1
            assert busy.process is not None
            assert busy.process.alive
            assert busy.state is SlotState.RUNNING
            assert manager._slots["busy"] is busy
            assert idle_slot.process is None
            assert not pid_alive(idle_pid)
            assert manager._slots["idle"] is idle_slot  # the session is kept, only pi stops
            release.touch()
        assert rec.events[-1] == TurnFinished(Outcome.DONE)
        # the reclaimed session comes back transparently on its next message
        rec2 = Recorder()
        assert await manager.send("idle", Prompt("again"), rec2) == TurnFinished(Outcome.DONE)
        assert rec2.text() == "echo: again"


async def test_two_sessions_run_their_turns_at_the_same_time(
    manager: SessionManager, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    a, b = Recorder(), Recorder()
    async with anyio.create_task_group() as tg:
        tg.start_soon(manager.send, "a", held(release), a)
        tg.start_soon(manager.send, "b", held(release), b)
        # both turns are in flight at once: neither waits for the other's lock
        await a.streaming()
        await b.streaming()
        states = {k: status_of(manager, k).state for k in ("a", "b")}
        assert states == {"a": SlotState.RUNNING, "b": SlotState.RUNNING}
        release.touch()
    assert a.events[-1] == b.events[-1] == TurnFinished(Outcome.DONE)


async def test_a_replaced_slot_is_not_clobbered_by_its_old_turn(tmp_path: Path) -> None:
    release = tmp_path / "release"
    store = StateStore(tmp_path / "state.json")
    async with SessionManager(fake_launcher(tmp_path), observer=store) as manager:
        async with anyio.create_task_group() as tg:
            rec = await start_turn(tg, manager, "chat", held(release))
            old = manager._slots["chat"]
            assert old.process is not None
            old_pid = old.process.pid
            new = await manager.new_session("chat")
            # the old turn is aborted by the replacement and ends on its own
            await rec.wait_for(lambda e: isinstance(e, TurnFinished))
        assert rec.events[-1] == TurnFinished(Outcome.ABORTED)
        with anyio.fail_after(5):
            while old.state is not SlotState.CLOSED:
                await anyio.sleep(0.01)
        assert manager._slots["chat"] is new
        assert new.session_id != old.session_id
        assert new.state is SlotState.IDLE
        assert new.last_outcome is None
        assert not pid_alive(old_pid)
        # the old turn's ending did not overwrite what is persisted for this chat
        await store.flush()
        persisted = StateStore(tmp_path / "state.json").load()
        assert persisted["chat"].session_id == new.session_id
        assert persisted["chat"].last_outcome is None
        assert not persisted["chat"].running
        rec2 = Recorder()
        assert await manager.send("chat", Prompt("fresh"), rec2) == TurnFinished(Outcome.DONE)
        assert manager._slots["chat"] is new
        assert new.process is not None
        assert new.process.pid != old_pid


async def test_a_slow_spawn_does_not_hold_the_guard(tmp_path: Path) -> None:
    launcher = fake_launcher(tmp_path, ("slow", ("--startup-delay", "3")))
    known = {"slow-chat": "slow-session"}
    async with SessionManager(launcher, known_sessions=known) as manager:
        slow = Recorder()
        async with anyio.create_task_group() as tg:
            tg.start_soon(manager.send, "slow-chat", Prompt("hi"), slow)
            with anyio.fail_after(5):
                while (s := manager.get_status("slow-chat")) is None or s.state is not (
                    SlotState.STARTING
                ):
                    await anyio.sleep(0.005)
            # while that pi starts, other chats get status and whole turns
            fast = Recorder()
            with anyio.fail_after(2.5):
                assert status_of(manager, "slow-chat").state is SlotState.STARTING
                await manager.send("fast-chat", Prompt("quick"), fast)
            assert status_of(manager, "slow-chat").state is SlotState.STARTING
            assert fast.events[-1] == TurnFinished(Outcome.DONE)
        assert slow.events[-1] == TurnFinished(Outcome.DONE)


async def test_crash_mid_turn_is_reported_and_the_next_message_restarts_pi(
    manager: SessionManager,
) -> None:
    rec = Recorder()
    crash = script({"text": "partial "}, {"crash": 3, "message": "fake pi: out of cheese"})
    result = await manager.send("chat", crash, rec)
    assert isinstance(result, TurnFinished)
    assert result.outcome is Outcome.CRASHED
    assert result.error is not None
    assert "exit code 3" in result.error
    assert "out of cheese" in result.error
    slot = manager._slots["chat"]
    assert slot.state is SlotState.CRASHED
    assert slot.process is None
    assert slot.last_outcome is Outcome.CRASHED
    rec2 = Recorder()
    assert await manager.send("chat", Prompt("again"), rec2) == TurnFinished(Outcome.DONE)
    assert rec2.text() == "echo: again"
    # the crashed slot itself ran the turn; read back through the map, as mypy would keep
    # ``slot.state`` narrowed to CRASHED across the awaits above
    assert manager._slots["chat"] is slot
    assert manager._slots["chat"].state is SlotState.IDLE


async def test_a_one_megabyte_reply_arrives_intact_to_a_slow_consumer(
    manager: SessionManager,
) -> None:
    rec = Recorder(delay=0.02)  # a slow chat platform
    size = 1_000_000
    result = await manager.send("chat", script({"big": size, "chunk": 16384}), rec)
    assert result == TurnFinished(Outcome.DONE)
    final = rec.of(AssistantMessage)
    assert len(final) == 1
    text = final[0].text
    assert len(text) == size
    assert rec.text() == text
    # deltas were coalesced while the consumer was slow, instead of piling up
    assert len(rec.of(TextDelta)) < size // 16384


async def test_unicode_line_separators_arrive_intact(manager: SessionManager) -> None:
    tricky = "a\u2028b\u2029c\u0085d\r\ne"
    rec = Recorder()
    await manager.send("chat", script({"text": tricky, "chunk": 3}), rec)
    assert rec.text() == tricky
    assert rec.of(AssistantMessage)[0].text == tricky


async def test_messages_mid_turn_are_queued_as_follow_ups(
    manager: SessionManager, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    async with anyio.create_task_group() as tg:
        rec = await start_turn(tg, manager, "chat", held(release))
        queued = await manager.send("chat", Prompt("and then?"), Recorder())
        assert queued == Queued(position=1, steer=False)
        assert status_of(manager, "chat").queued == ("and then?",)
        release.touch()
    assert rec.of(FollowUpStarted) == [FollowUpStarted("and then?")]
    texts = [m.text for m in rec.of(AssistantMessage)]
    assert texts == ["working done", "echo: and then?"]
    assert rec.events[-1] == TurnFinished(Outcome.DONE)


async def test_abort_stops_the_running_turn(manager: SessionManager, tmp_path: Path) -> None:
    async with anyio.create_task_group() as tg:
        rec = await start_turn(tg, manager, "chat", held(tmp_path / "never"))
        assert await manager.abort("chat")
    assert rec.events[-1] == TurnFinished(Outcome.ABORTED)
    assert status_of(manager, "chat").last_outcome is Outcome.ABORTED
    assert not await manager.abort("chat")  # nothing running any more


async def test_blocking_dialogs_are_cancelled(manager: SessionManager) -> None:
    rec = Recorder()
    result = await manager.send("chat", script({"dialog": "confirm"}), rec)
    assert result == TurnFinished(Outcome.DONE)
    assert "dialog answered" in rec.text()


async def test_tool_progress_is_reported(manager: SessionManager) -> None:
    rec = Recorder()
    step = {"tool": "bash", "args": {"command": "ls  -la\n/tmp"}, "output": "x"}
    await manager.send("chat", script(step, {"text": "listed"}), rec)
    assert rec.of(ToolStarted)[0] == ToolStarted(
        rec.of(ToolStarted)[0].tool_call_id,
        "bash",
        "ls -la /tmp",
    )
    assert len(rec.of(ToolFinished)) == 1
    assert [m.text for m in rec.of(AssistantMessage)] == ["listed"]


async def test_llm_error_without_retry_fails_with_the_provider_text(
    manager: SessionManager,
) -> None:
    rec = Recorder()
    result = await manager.send("chat", script({"error": "401 invalid api key"}), rec)
    assert result == TurnFinished(Outcome.FAILED, "401 invalid api key")
    assert rec.of(AssistantMessage) == []


async def test_retried_error_that_recovers_is_one_turn(manager: SessionManager) -> None:
    rec = Recorder()
    step = {"error": "500 server error", "fail_times": 2, "max_retries": 3, "then": "fine"}
    result = await manager.send("chat", script(step), rec)
    assert result == TurnFinished(Outcome.DONE)
    assert [r.attempt for r in rec.of(RetryScheduled)] == [1, 2]
    assert [m.text for m in rec.of(AssistantMessage)] == ["fine"]


async def test_retries_exhausted_fail_with_the_final_error(manager: SessionManager) -> None:
    rec = Recorder()
    step = {"error": "503 overloaded", "max_retries": 2, "retry_delay": 0.01}
    result = await manager.send("chat", script(step), rec)
    assert result == TurnFinished(Outcome.FAILED, "503 overloaded")
    assert len(rec.of(RetryScheduled)) == 2


async def test_abort_during_retry_wait_ends_the_turn(manager: SessionManager) -> None:
    rec = Recorder()
    step = {"error": "503 overloaded", "max_retries": 3, "retry_delay": 30}
    async with anyio.create_task_group() as tg:
        tg.start_soon(manager.send, "chat", script(step), rec)
        await rec.wait_for(lambda e: isinstance(e, RetryScheduled))
        status = manager.get_status("chat")
        assert status is not None
        assert status.retry_attempt == (1, 3)
        await manager.abort("chat")
    assert rec.events[-1] == TurnFinished(Outcome.ABORTED)


async def test_a_rejected_prompt_fails_with_pis_message(manager: SessionManager) -> None:
    rec = Recorder()
    result = await manager.send("chat", Prompt("reject:No API key found for fake"), rec)
    assert result == TurnFinished(Outcome.FAILED, "No API key found for fake")


async def test_pi_that_exits_at_start_is_reported(tmp_path: Path) -> None:
    launcher = fake_launcher(tmp_path, ("", ("--exit-at-start", "1")))
    async with SessionManager(launcher) as manager:
        rec = Recorder()
        result = await manager.send("chat", Prompt("hi"), rec)
        assert isinstance(result, TurnFinished)
        assert result.outcome is Outcome.FAILED
        assert "exited while starting" in (result.error or "")
        assert "refusing to start" in (result.error or "")
        assert status_of(manager, "chat").state is SlotState.CRASHED


@pytest.mark.parametrize("warm_up", [True, False])
async def test_a_pi_that_cannot_load_the_warm_up_extension_is_told_how_to_turn_it_off(
    tmp_path: Path, warm_up: bool
) -> None:
    """pi exits when any extension fails to load; another pi version may not load evie's.
    The user is told the one setting that fixes it, and with it off pi starts."""
    launcher = fake_launcher(tmp_path, ("", ("--reject-extensions",)))
    launcher = attrs.evolve(launcher, base=attrs.evolve(launcher.base, warm_up=warm_up))
    async with SessionManager(launcher) as manager:
        result = await manager.send("chat", Prompt("hi"), Recorder())
    if warm_up:
        assert isinstance(result, TurnFinished)
        assert result.outcome is Outcome.FAILED
        assert "Failed to load extension" in (result.error or "")
        assert (result.error or "").endswith("set [agent] warm_up = false.")
        assert "\n" not in (result.error or "")
    else:
        assert result == TurnFinished(Outcome.DONE)


async def test_garbage_lines_from_pi_do_not_break_the_turn(manager: SessionManager) -> None:
    rec = Recorder()
    steps = (
        {"text": "before "},
        {"raw": "this is not json"},
        {"raw_hex": "7b2274797065223a2280ff227d"},  # {"type":"<invalid utf-8>"}
        {"raw": '{"no_type": 1}'},
        {"raw": '{"type": "some_future_event", "x": [1, 2]}'},
        {"text": "after"},
    )
    result = await manager.send("chat", script(*steps), rec)
    assert result == TurnFinished(Outcome.DONE)
    assert rec.text() == "before after"
    process = manager._slots["chat"].process
    assert process is not None
    assert process.protocol_errors == 3


async def test_shutdown_primitives_wait_abort_and_stop_every_process(tmp_path: Path) -> None:
    release = tmp_path / "release"
    rec = Recorder()
    async with SessionManager(fake_launcher(tmp_path)) as manager:
        await manager.send("a", Prompt("hi"), Recorder())
        manager._tasks.start_soon(manager.send, "b", held(release), rec)
        await rec.streaming()
        pids = [s.process.pid for s in manager.slots() if s.process is not None]
        assert len(pids) == 2
        manager.stop_accepting()
        assert manager.running() == ["b"]
        assert not await manager.wait_for_turns(0.2)  # "b" is still running
        with pytest.raises(SessionReplaced, match="shutting down"):
            await manager.send("a", Prompt("too late"), Recorder())
        assert manager.abort_all() == 1
        assert await manager.wait_for_turns(5)
        assert rec.events[-1] == TurnFinished(Outcome.ABORTED)
        assert all(pid_alive(pid) for pid in pids)  # waiting and aborting stop no process
    assert not any(pid_alive(pid) for pid in pids)


async def test_close_all_ends_a_turn_whose_pi_ignores_abort(tmp_path: Path) -> None:
    rec = Recorder()
    async with SessionManager(fake_launcher(tmp_path)) as manager:
        manager._tasks.start_soon(manager.send, "deaf", script({"hang": True, "say": "x"}), rec)
        await rec.streaming()
        manager.stop_accepting()
        assert manager.abort_all() == 1
        assert not await manager.wait_for_turns(0.3)  # pi did not listen
        await manager.close_all()
        assert await manager.wait_for_turns(5)
        finished = rec.events[-1]
        assert isinstance(finished, TurnFinished)
        assert finished.outcome is Outcome.INTERRUPTED
        assert manager.running() == []


async def test_a_message_waiting_for_the_next_turn_is_refused_at_shutdown(tmp_path: Path) -> None:
    first, second = Recorder(), Recorder()
    refused: list[SessionReplaced] = []

    async def waiting() -> None:
        try:
            await manager.send("chat", Prompt("next one"), second)
        except SessionReplaced as exc:
            refused.append(exc)

    # while pi starts, the slot's lock is held and a second message waits for it
    launcher = fake_launcher(tmp_path, ("", ("--startup-delay", "0.5")))
    async with SessionManager(launcher) as manager:
        async with anyio.create_task_group() as tg:
            tg.start_soon(manager.send, "chat", Prompt("first"), first)
            with anyio.fail_after(5):
                while "chat" not in manager._slots:
                    await anyio.sleep(0.01)
            slot = manager._slots["chat"]
            tg.start_soon(waiting)
            with anyio.fail_after(5):
                while not slot.waiters:
                    await anyio.sleep(0.01)
            manager.stop_accepting()
            assert await manager.wait_for_turns(10)
    assert first.events[-1] == TurnFinished(Outcome.DONE)  # already started: it finished
    assert len(refused) == 1
    assert "shutting down" in str(refused[0])
    assert second.events == []  # no turn was started for it


async def test_at_most_max_processes_stay_alive_least_recent_first(tmp_path: Path) -> None:
    settings = SessionSettings(max_processes=2)
    async with SessionManager(fake_launcher(tmp_path), settings) as manager:
        for key in ("a", "b", "c"):
            await manager.send(key, Prompt(f"hi {key}"), Recorder())
        with anyio.fail_after(5):
            while manager._slots["a"].process is not None:
                await anyio.sleep(0.01)
        assert manager._slots["b"].process is not None
        assert manager._slots["c"].process is not None
        # the reclaimed session resumes on its next message (same session id)
        session_id = manager._slots["a"].session_id
        rec = Recorder()
        assert await manager.send("a", Prompt("back"), rec) == TurnFinished(Outcome.DONE)
        assert manager._slots["a"].session_id == session_id
        with anyio.fail_after(5):
            while manager._slots["b"].process is not None:
                await anyio.sleep(0.01)
        assert sum(1 for s in manager.slots() if s.process is not None) == 2


async def test_evie_secrets_are_not_passed_to_pi(
    manager: SessionManager, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EVIE_TELEGRAM_TOKEN", "123:secret")
    monkeypatch.setenv("SOME_TOOL_SETTING", "kept")
    rec = Recorder()
    await manager.send(
        "chat", script({"env": "EVIE_TELEGRAM_TOKEN"}, {"env": "SOME_TOOL_SETTING"}), rec
    )
    assert rec.text() == "EVIE_TELEGRAM_TOKEN=<unset>SOME_TOOL_SETTING=kept"
    process = manager._slots["chat"].process
    assert process is not None
    assert process.pid in marked_processes(str((tmp_path / "state").resolve()))  # the marker does


async def test_unusable_state_dir_fails_the_turn_with_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where a directory should be")
    launcher = fake_launcher(tmp_path)
    launcher = attrs.evolve(
        launcher, base=attrs.evolve(launcher.base, state_dir=tmp_path / "blocker")
    )
    async with SessionManager(launcher) as manager:
        result = await manager.send("chat", Prompt("hi"), Recorder())
        assert isinstance(result, TurnFinished)
        assert result.outcome is Outcome.FAILED
        assert "could not prepare the session's files" in (result.error or "")
        assert status_of(manager, "chat").state is SlotState.CRASHED


async def test_messages_queued_before_a_stop_are_reported_and_ride_along(
    manager: SessionManager, tmp_path: Path
) -> None:
    async with anyio.create_task_group() as tg:
        rec = await start_turn(tg, manager, "chat", held(tmp_path / "never"))
        assert isinstance(await manager.send("chat", Prompt("and then?"), Recorder()), Queued)
        await manager.abort("chat")
    assert rec.events[-1] == TurnFinished(Outcome.ABORTED, None, ("and then?",))
    nxt = Recorder()
    await manager.send("chat", Prompt("next"), nxt)
    # as pi does, the message left in its queue is answered along with the next one
    assert [m.text for m in nxt.of(AssistantMessage)] == ["echo: next", "echo: and then?"]


async def test_no_descriptor_is_left_open_once_pi_is_gone(tmp_path: Path) -> None:
    """evie reads pi's stdout from a pipe of its own (adr/0016 §11): it is closed however
    pi ends — stopped, crashed mid-turn, exited at start. Over months of sessions a
    descriptor left per pi would run evie out of them."""

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    for _round in range(3):
        async with SessionManager(fake_launcher(tmp_path)) as manager:
            crash = script({"text": "partial "}, {"crash": 3, "message": "gone"})
            crashed = await manager.send("chat", crash, Recorder())
            assert isinstance(crashed, TurnFinished)
            assert crashed.outcome is Outcome.CRASHED
            answered = await manager.send("chat", Prompt("again"), Recorder())
            assert answered == TurnFinished(Outcome.DONE)
            await manager.new_session("chat")  # the old pi is stopped
            assert await manager.send("chat", Prompt("new"), Recorder()) == answered
        failing = fake_launcher(tmp_path, ("", ("--exit-at-start", "1")))
        async with SessionManager(failing) as manager:
            refused = await manager.send("chat", Prompt("hi"), Recorder())
            assert isinstance(refused, TurnFinished)
            assert refused.outcome is Outcome.FAILED
    assert open_fds() <= before
