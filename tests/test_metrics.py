"""/metrics reads counters kept on slot transitions: they must always equal a walk."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import anyio
import pytest

from evie.http import render_metrics, status_body
from evie.sessions.manager import SessionManager, SessionSettings
from evie.sessions.slot import SlotState
from tests.conftest import Recorder, fake_launcher, script

pytestmark = pytest.mark.anyio


def walked(manager: SessionManager) -> tuple[Counter[str], int, int]:
    statuses = manager.all_status()
    states = Counter(s.state.value for s in statuses if s.state is not SlotState.CLOSED)
    processes = sum(1 for slot in manager.slots() if slot.process is not None)
    return states, processes, sum(len(s.queued) for s in statuses)


def tallied(manager: SessionManager) -> tuple[Counter[str], int, int]:
    tally = manager.metrics.sessions
    states = Counter({k: v for k, v in tally.by_state.items() if v and k != "closed"})
    return states, tally.processes, manager.queue_depth()


@pytest.mark.parametrize("seed", range(3))
async def test_the_counters_match_a_walk_through_random_traffic(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    keys = [f"k{i}" for i in range(5)]
    steps = [
        script({"text": "hi"}),
        script({"sleep": 0.05}, {"text": "slow"}),
        script({"crash": 3}),
        script({"sleep": 0.2}),
    ]
    settings = SessionSettings(max_processes=3, idle_timeout=600)
    async with SessionManager(fake_launcher(tmp_path), settings) as manager:
        mismatches: list[object] = []

        async def check_often() -> None:
            while True:
                # (a replaced slot's pi may still be stopping: processes compared at the end)
                if walked(manager)[0] != tallied(manager)[0]:
                    mismatches.append((walked(manager), tallied(manager)))
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as tg:
            tg.start_soon(check_often)
            async with anyio.create_task_group() as traffic:
                for _ in range(40):
                    key, action = rng.choice(keys), rng.random()
                    if action < 0.6:
                        traffic.start_soon(manager.send, key, rng.choice(steps), Recorder())
                    elif action < 0.7:
                        await manager.new_session(key)
                    elif action < 0.8:
                        await manager.abort(key)
                    else:
                        await manager.cleanup_idle(now=anyio.current_time() + 10**6)
                    await anyio.sleep(rng.random() * 0.03)
            await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        assert walked(manager) == tallied(manager)
        assert mismatches == []
        text = render_metrics(manager, manager.metrics)
        states, processes, _ = walked(manager)
        assert f"evie_pi_processes {processes}\n" in text
        for state, count in states.items():
            assert f'evie_sessions{{state="{state}"}} {count}\n' in text
        records = json.loads(await status_body(manager))
        assert sorted(r["key"] for r in records) == sorted({s.key for s in manager.slots()})


async def test_http_status_lists_every_session_across_chunks(tmp_path: Path) -> None:
    from evie.http import STATUS_CHUNK

    async with SessionManager(fake_launcher(tmp_path)) as manager:
        keys = [f"tg:{i}" for i in range(STATUS_CHUNK * 2 + 7)]
        for key in keys:
            manager._get_or_create(key)
        body = json.loads(await status_body(manager))
        assert [r["key"] for r in body] == keys
        assert {r["state"] for r in body} == {"idle"}
        assert f'evie_sessions{{state="idle"}} {len(keys)}\n' in render_metrics(
            manager, manager.metrics
        )
    async with SessionManager(fake_launcher(tmp_path / "empty")) as manager:
        assert json.loads(await status_body(manager)) == []
