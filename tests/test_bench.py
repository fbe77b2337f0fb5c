"""The README's performance table is generated from bench/results; the bench code runs.

The benchmarks themselves are not part of ``just check`` (``just bench``); here
they run with tiny sample counts, only to prove the code works.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report
from bench.endtoend import metrics_scale
from bench.procs import echo_bot, fake_botapi
from bench.steps import Steps

pytestmark = pytest.mark.anyio


def test_the_readme_table_is_the_one_generated_from_the_results() -> None:
    readme = report.README.read_text(encoding="utf-8")
    records = report.load()
    assert records, "bench/results/*.json are missing"
    assert report.current(readme) == report.section(records), (
        "README.md's performance table is stale: run `python -m bench.report`"
    )


def test_the_report_rewrites_only_its_section(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    record = {"benchmark": "x", "title": "A | B", "when": "2026-01-01T00:00:00Z",
              "load_average": 3.5, "cpus": 2, "summary": "fast"}  # fmt: skip
    (results / "x.json").write_text(json.dumps(record))
    readme = f"intro\n{report.BEGIN}\nold\n{report.END}\noutro\n"
    new = report.rewrite(readme, report.load(results))
    assert new.startswith("intro\n")
    assert new.endswith("\noutro\n")
    assert "| A \\| B | fast | 2026-01-01 (3.5, 2) |" in new
    assert report.current(new) == report.section(report.load(results))


async def test_the_floor_bot_answers_through_the_fake_bot_api_process(tmp_path: Path) -> None:
    async with fake_botapi(tmp_path / "api") as api, echo_bot(api):
        samples = await api.run(3)
    assert len(samples) == 3
    assert all(s > 0 for s in samples)


async def test_the_floor_with_the_guarantees_journals_asks_pi_and_marks_done(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    async with fake_botapi(tmp_path / "api") as api, echo_bot(api, agent=state):
        samples = await api.run(3)  # each checks the reply is pi's "echo: <text>"
    assert len(samples) == 3
    journal = [json.loads(line) for line in (state / "journal").read_text().splitlines()]
    assert [entry["text"] for entry in journal] == [f"ping {i}" for i in range(3)]
    done = (state / "done").read_text().split()
    assert done == [str(entry["update_id"]) for entry in journal]
    session = [json.loads(line) for line in (state / "s.jsonl").read_text().splitlines()]
    asked = [e["message"]["content"][0]["text"] for e in session if e.get("type") == "message"]
    assert asked == [t for i in range(3) for t in (f"ping {i}", f"echo: ping {i}")]  # pi ran them


async def test_the_steps_alone_are_timed_against_a_journal_and_a_real_fake_pi(
    tmp_path: Path,
) -> None:
    steps = Steps(tmp_path / "steps")
    try:
        synced, asked = steps.journal(4), steps.ask_pi(3)
    finally:
        steps.close()
    assert len(synced) == 4
    assert len(asked) == 3
    assert all(s > 0 for s in synced + asked)
    assert len((tmp_path / "steps" / "journal").read_text().splitlines()) == 4
    session = (tmp_path / "steps" / "s.jsonl").read_text().splitlines()
    replies = [json.loads(line)["message"] for line in session if '"message"' in line]
    assert [m["role"] for m in replies] == ["user", "assistant"] * 3  # every turn ran to its end


async def test_the_metrics_bench_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVIE_BENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("EVIE_BENCH_SCALE", "0.001")
    await metrics_scale(tmp_path, sessions=30)
    saved = json.loads((tmp_path / "results" / "metrics_scale.json").read_text())
    assert saved["figures"]["sessions"] == 30
    assert saved["summary"].startswith("/metrics p50")
