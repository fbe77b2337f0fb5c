"""Benchmarks across processes: evie run against the fake Bot API, beside the floor.

Sample counts scale with ``$EVIE_BENCH_SCALE`` (default 1; the smoke test in
``just check`` runs them tiny). Every figure here was taken on a 2-core
machine shared with other work: the JSON records the load average.
"""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

from bench.common import REAL_PI, ROOT, fake_launcher, fmt_s, save, summary
from bench.procs import (
    chat_on_a_terminal,
    cpu_seconds,
    echo_bot,
    evie_run,
    fake_botapi,
    rss_mib,
    write_config,
)
from bench.steps import Steps
from evie.agent.events import Prompt, TurnEvent
from evie.sessions.manager import SessionManager, SessionSettings

WARMUP = 20
PAUSE = 0.025  # a reply slower than this is a pause worth counting


def count(n: int) -> int:
    return max(3, int(n * float(os.environ.get("EVIE_BENCH_SCALE", "1"))))


async def _sink(_event: TurnEvent) -> None:
    return None


def _latency(samples: list[float]) -> dict[str, float]:
    figures = summary(samples)
    figures["over_25ms"] = sum(1 for s in samples if s > PAUSE)
    return figures


GC_POLICIES = {"evie": "tuned", "evie_freeze_only": "freeze", "evie_default_gc": "default"}


async def telegram_latency(tmp: Path) -> None:
    """Update → reply through the fake Bot API (own process): evie run vs a raw aiohttp bot.

    The floor and evie under three gc policies run side by side, each with its own
    fake Bot API, and are sampled in interleaved rounds so that other load on the
    machine falls on all of them alike.
    """
    n, rounds = count(1000), 10 if count(1000) >= 100 else 1
    samples: dict[str, list[float]] = {"floor": []}
    cpu: dict[str, float] = {}  # per turn, from /proc: the floor's own as well
    async with AsyncExitStack() as stack:
        apis = {"floor": await stack.enter_async_context(fake_botapi(tmp / "floor"))}
        procs = {"floor": await stack.enter_async_context(echo_bot(apis["floor"]))}
        cpu["floor"] = 0.0
        apis["floor_agent"] = await stack.enter_async_context(fake_botapi(tmp / "floor_agent"))
        procs["floor_agent"] = await stack.enter_async_context(
            echo_bot(apis["floor_agent"], agent=tmp / "floor_agent" / "state")
        )
        samples["floor_agent"], cpu["floor_agent"] = [], 0.0
        for label, policy in GC_POLICIES.items():
            apis[label] = await stack.enter_async_context(fake_botapi(tmp / label))
            config = write_config(tmp / label, apis[label], spares=0)
            procs[label], _ = await stack.enter_async_context(evie_run(config, gc_policy=policy))
            samples[label] = []
            cpu[label] = 0.0
        per_round: dict[str, list[float]] = {label: [] for label in apis}  # CPU s per turn
        steps = Steps(tmp / "steps")
        stack.callback(steps.close)
        journal: list[float] = []
        ask_pi: list[float] = []
        for api in apis.values():
            await api.first_poll()
            await api.run(WARMUP)  # pi started, every code path warm
        await anyio.to_thread.run_sync(steps.ask_pi, WARMUP)
        for r in range(rounds):
            for label, api in apis.items():
                before = cpu_seconds(procs[label].pid)
                samples[label] += await api.run(n // rounds, prefix=f"r{r}")
                cpu[label] += cpu_seconds(procs[label].pid) - before
                per_round[label].append((cpu_seconds(procs[label].pid) - before) / (n // rounds))
            journal += await anyio.to_thread.run_sync(steps.journal, n // rounds)
            ask_pi += await anyio.to_thread.run_sync(steps.ask_pi, n // rounds)
        status = summary(await apis["evie"].run(count(1000), prefix="/status", expect=""))
    cpu = {label: seconds / len(samples[label]) for label, seconds in cpu.items()}
    latency = {label: _latency(values) for label, values in samples.items()}
    f, el, fa = latency["floor"], latency["evie"], latency["floor_agent"]
    ratio = el["p50"] / f["p50"]
    alone = {"journal_fdatasync": summary(journal), "pi_round_trip": summary(ask_pi)}
    bound = f["p50"] + alone["journal_fdatasync"]["p50"] + alone["pi_round_trip"]["p50"]
    for name, figures in latency.items():
        print(f"  {name:<18} p50 {fmt_s(figures['p50'])}  p99 {fmt_s(figures['p99'])}"
              f"  max {fmt_s(figures['max'])}  over 25 ms {figures['over_25ms']:.0f}"
              f"  (n={figures['n']:.0f})  CPU/turn {fmt_s(cpu.get(name, 0.0))}")  # fmt: skip
    others = ", ".join(
        f"{label.removeprefix('evie_')}: p99 {fmt_s(latency[label]['p99'])}, "
        f"{latency[label]['over_25ms']:.0f} over 25 ms, CPU {fmt_s(cpu[label])}"
        for label in ("evie_freeze_only", "evie_default_gc")
    )
    save(
        "telegram_latency",
        {
            "latency": latency,
            "cpu_per_turn": cpu,
            # the same per round of n/rounds turns: the machine's speed drifts between runs
            # minutes apart (floor 0.78-0.96 ms), the rounds show it within one
            "cpu_per_turn_per_round": per_round,
            "cpu_over_floor": cpu["evie"] / cpu["floor"],
            "ratio_p50": ratio,
            "ratio_p99": el["p99"] / f["p99"],
            # beside the floor that also does what evie's guarantees need (bench/echo_bot.py)
            "cpu_over_floor_agent": cpu["evie"] / cpu["floor_agent"],
            "ratio_p50_floor_agent": el["p50"] / fa["p50"],
            # the two steps the guarantees add, timed alone (bench/steps.py), and the raw
            # floor's p50 plus theirs: a bot keeping the guarantees can answer no sooner
            "steps_alone": alone,
            "bound_p50": bound,
            "ratio_bound_p50": bound / f["p50"],
            "rounds": rounds,
        },
        f"p50 {fmt_s(el['p50'])} = {ratio:.2f}x the raw aiohttp floor ({fmt_s(f['p50'])}); "
        f"p99 {fmt_s(el['p99'])} = {el['p99'] / f['p99']:.2f}x the floor's; "
        f"{el['over_25ms']:.0f}/{el['n']:.0f} over 25 ms; evie CPU {fmt_s(cpu['evie'])}/turn "
        f"= {cpu['evie'] / cpu['floor']:.2f}x the floor's ({fmt_s(cpu['floor'])}; rounds of "
        f"{n // rounds}: evie {fmt_s(min(per_round['evie']))}–{fmt_s(max(per_round['evie']))}). "
        f"Beside the floor that also journals each message with an fdatasync and asks the "
        f"same fake pi, written tightly (p50 {fmt_s(fa['p50'])} = "
        f"{fa['p50'] / f['p50']:.2f}x the raw floor's, CPU {fmt_s(cpu['floor_agent'])}/turn): "
        f"p50 {el['p50'] / fa['p50']:.2f}x, CPU {cpu['evie'] / cpu['floor_agent']:.2f}x. "
        f"The two steps the guarantees add, timed alone: a journal line synced p50 "
        f"{fmt_s(alone['journal_fdatasync']['p50'])}, a prompt to pi and back p50 "
        f"{fmt_s(alone['pi_round_trip']['p50'])}; with the raw floor's p50 they make "
        f"{fmt_s(bound)} = {bound / f['p50']:.2f}x it before any CPU of the bot's own. "
        f"Other gc policies ({others})",
        title="Telegram update → reply, fake pi answering at once (bot, fakes: own processes)",
    )
    save(
        "status_as_received",
        {"evie": status},
        f"p50 {fmt_s(status['p50'])}, p99 {fmt_s(status['p99'])} (n={status['n']:.0f}); "
        "includes pi's get_session_stats round trip",
        title="`/status` as the user receives it (Bot API update → reply)",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def startup(tmp: Path) -> None:
    """evie run: launch → first getUpdates (CPU then), RSS; evie chat on a terminal → its first
    prompt (CPU then), RSS once its session manager is up."""
    runs = count(5)
    rows: dict[str, dict[str, float]] = {}
    for label, with_http in (("telegram", False), ("telegram+http", True)):
        times, rss, cpu = [], [], []
        for i in range(runs):
            async with fake_botapi(tmp / f"{label}{i}") as api:
                port = _free_port() if with_http else None
                config = write_config(tmp / f"{label}{i}", api, http_port=port)
                async with evie_run(config) as (proc, launched):
                    await api.watch(proc.pid)
                    polled = await api.first_poll()
                    rss.append(rss_mib(proc.pid))
                    cpu.append(await api.cpu_at_first_poll())  # read by the fake on the poll
                times.append(polled - launched)
        rows[label] = {**summary(times), "rss_mib": max(rss), "cpu_p50": summary(cpu)["p50"]}
    chat_times, chat_rss, chat_cpu = [], [], []
    # once unmeasured: a changed module compiles its bytecode (and peaks RSS) only once
    await anyio.to_thread.run_sync(chat_on_a_terminal, write_config(tmp / "chat-warm", None))
    for i in range(runs):  # on a pseudo-terminal: what a person starting it sees
        config = write_config(tmp / f"chat{i}", None)
        greeted, chat_s, chat_mib = await anyio.to_thread.run_sync(chat_on_a_terminal, config)
        chat_times.append(greeted)
        chat_cpu.append(chat_s)
        chat_rss.append(chat_mib)
    rows["chat"] = {
        **summary(chat_times),
        "rss_mib": max(chat_rss),
        "cpu_p50": summary(chat_cpu)["p50"],
    }
    for label, r in rows.items():
        memory = f"RSS {r['rss_mib']:.0f} MiB"
        print(f"  {label:<14} p50 {fmt_s(r['p50'])}  max {fmt_s(r['max'])}  {memory}")
    t, c = rows["telegram"], rows["chat"]
    save(
        "startup",
        rows,
        f"evie run (Telegram) launch → first poll p50 {fmt_s(t['p50'])} wall, "
        f"{fmt_s(t['cpu_p50'])} CPU, {t['rss_mib']:.0f} MiB; "
        f"with [http] {fmt_s(rows['telegram+http']['p50'])}; "
        f"evie chat on a terminal → first prompt {fmt_s(c['p50'])} wall, "
        f"{fmt_s(c['cpu_p50'])} CPU; {c['rss_mib']:.0f} MiB once up",
        title="Start-up: launch → first poll (fake Bot API in its own process), RSS",
    )


async def metrics_scale(tmp: Path, sessions: int = 10_000) -> None:
    """/metrics and HTTP /status at many sessions: time on the loop."""
    from evie.http import STATUS_CHUNK, render_metrics, status_body

    sessions = count(sessions) if sessions == 10_000 else sessions
    async with SessionManager(fake_launcher(tmp / "m")) as manager:
        for i in range(sessions):
            manager._get_or_create(f"tg:{i}")
        reps = count(1000)
        ours, ours_cpu = [], []
        for _ in range(reps):
            started, cpu = time.perf_counter(), time.thread_time()
            render_metrics(manager, manager.metrics)
            ours.append(time.perf_counter() - started)
            ours_cpu.append(time.thread_time() - cpu)
        walk = []
        for _ in range(count(50)):
            started = time.perf_counter()
            manager.all_status()  # what /metrics did before: a snapshot of every session
            walk.append(time.perf_counter() - started)
        gaps: list[float] = []
        collections: list[float] = []  # gc pauses, told apart from evie's own blocking
        collecting: list[float] = []
        done = False

        def on_gc(phase: str, _info: dict[str, int]) -> None:
            if phase == "start":
                collecting.append(time.perf_counter())
            elif collecting:
                collections.append(time.perf_counter() - collecting.pop())

        gaps_cpu: list[float] = []  # the same in this thread's CPU time: without preemption

        async def ticker() -> None:
            while not done:
                started, cpu = time.perf_counter(), time.thread_time()
                await anyio.lowlevel.checkpoint()
                gaps.append(time.perf_counter() - started)
                gaps_cpu.append(time.thread_time() - cpu)

        gc.callbacks.append(on_gc)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker)
                started = time.perf_counter()
                for _ in range(count(20)):
                    await status_body(manager)
                status_total = (time.perf_counter() - started) / count(20)
                done = True
        finally:
            gc.callbacks.remove(on_gc)
    m, w, mc, gc_ = summary(ours), summary(walk), summary(ours_cpu), summary(gaps_cpu)
    longest_gc = max(collections, default=0.0)
    figures = {"sessions": sessions, "metrics": m, "walk_before": w,
               "status_total": status_total, "status_longest_block": max(gaps, default=0.0),
               "status_gaps": summary(gaps), "longest_collection": longest_gc,
               "metrics_cpu": mc, "status_gaps_cpu": gc_}  # fmt: skip
    print(f"  /metrics at {sessions:,}: p50 {fmt_s(m['p50'])} p99 {fmt_s(m['p99'])}; "
          f"the old walk {fmt_s(w['p50'])}")  # fmt: skip
    longest = max(gaps, default=0.0)
    print(f"  /status: {fmt_s(status_total)} in all, longest loop block {fmt_s(longest)}"
          f" (p99 {fmt_s(summary(gaps)['p99'])}; gc pause {fmt_s(longest_gc)})")  # fmt: skip
    save(
        "metrics_scale",
        figures,
        f"/metrics p50 {fmt_s(m['p50'])}, p99 {fmt_s(m['p99'])} wall, p99 {fmt_s(mc['p99'])} "
        f"CPU, at {sessions:,} sessions (the walk it replaced: p50 {fmt_s(w['p50'])}); "
        f"HTTP /status {fmt_s(status_total)} in {-(-sessions // STATUS_CHUNK)} chunks: loop "
        f"blocks p99 {fmt_s(summary(gaps)['p99'])} wall / {fmt_s(gc_['p99'])} CPU, longest "
        f"{fmt_s(longest)} wall / {fmt_s(gc_['max'])} CPU (gc pauses meanwhile: longest "
        f"{fmt_s(longest_gc)})",
        title="`/metrics` and HTTP `/status` with 10,000 sessions (time on the event loop)",
    )


#: label, warm spares, the model's API, the warm-up extension loaded
SPARE_ROWS = (
    ("warm_spare", 1, "openai-completions", True),
    ("cold", 0, "openai-completions", True),
    ("warm_spare_anthropic", 1, "anthropic-messages", True),
    ("warm_spare_responses", 1, "openai-responses", True),
    ("no_warm_up_responses", 1, "openai-responses", False),
    ("warm_spare_gemini", 1, "google-generative-ai", True),
    ("no_warm_up_gemini", 1, "google-generative-ai", False),
    ("warm_spare_mistral", 1, "mistral-conversations", True),
    ("no_warm_up_mistral", 1, "mistral-conversations", False),
    ("warm_spare_bedrock", 1, "bedrock-converse-stream", True),
    ("no_warm_up_bedrock", 1, "bedrock-converse-stream", False),
)
#: the overhead figures: label of the row -> suffix of its ``spare_overhead`` key
OVERHEADS = {
    "warm_spare": "",
    "warm_spare_anthropic": "_anthropic",
    "warm_spare_responses": "_responses",
    "no_warm_up_responses": "_responses_no_warm_up",
    "warm_spare_gemini": "_gemini",
    "no_warm_up_gemini": "_gemini_no_warm_up",
    "warm_spare_mistral": "_mistral",
    "no_warm_up_mistral": "_mistral_no_warm_up",
    "warm_spare_bedrock": "_bedrock",
    "no_warm_up_bedrock": "_bedrock_no_warm_up",
}


async def spare_first_reply(tmp: Path) -> None:
    """First reply of a new session: warm spare vs cold start (real pi, fake LLM), on each
    API pi users commonly hit: chat completions, Anthropic's messages, OpenAI's responses
    (pi's API for OpenAI's own models), Gemini, Mistral's and Bedrock's (over HTTP/1.1: the
    fake speaks no HTTP/2; the warm-up's own reply runs the SDK's HTTP/2); the last four also
    without the warm-up extension, so that its gain shows. ``EVIE_BENCH_SPARE_ROWS`` (labels,
    comma-separated) runs only those rows, printed and not saved.

    Every configuration runs side by side, one session each in turn, and each reply is
    timed only once every spare is booted: the machine's drift and other load fall on all
    of them alike, and no refill's boot falls inside another's measurement."""
    if not REAL_PI.exists():
        print("  real pi not installed (npm ci); skipped")
        return
    import attrs

    from tests.conftest import real_launcher
    from tests.fake_llm import BEDROCK, bedrock_env, running_fake_llm

    runs = count(5)
    chosen = [r for r in os.environ.get("EVIE_BENCH_SPARE_ROWS", "").split(",") if r]
    table = [row for row in SPARE_ROWS if not chosen or row[0] in chosen]
    firsts: dict[str, list[float]] = {label: [] for label, *_ in table}
    again: dict[str, list[float]] = {label: [] for label, *_ in table}
    async with running_fake_llm() as llm, AsyncExitStack() as stack:
        managers: dict[str, SessionManager] = {}
        for label, spares, api, warm_up in table:
            env = bedrock_env(tmp / label) if api == BEDROCK else ()
            launcher = real_launcher(tmp / label, llm, api)
            launcher = attrs.evolve(launcher, warm_up=warm_up, extra_env=env)
            settings = SessionSettings(warm_spares=spares, max_processes=runs + 2)
            managers[label] = await stack.enter_async_context(SessionManager(launcher, settings))

        async def settled() -> None:  # every spare booted (a refill boots after a first turn)
            for manager in managers.values():
                while manager.spares is not None and not manager.spares.ready:  # noqa: ASYNC110
                    await anyio.sleep(0.01)

        for i in range(runs):
            for label, manager in managers.items():
                await settled()
                started = time.perf_counter()
                await manager.send(f"s{i}", Prompt("hi"), _sink)
                firsts[label].append(time.perf_counter() - started)
                await settled()
                started = time.perf_counter()
                await manager.send(f"s{i}", Prompt("again"), _sink)
                again[label].append(time.perf_counter() - started)
    rows: dict[str, Any] = {
        label: {
            "first": summary(firsts[label])["p50"],
            "warm_session_reply": summary(again[label])["p50"],
            "spares_taken": manager.metrics.spares_taken,  # the spare was really used
            "spares_missed": manager.metrics.spares_missed,
        }
        for label, manager in managers.items()
    }
    above = {label: row["first"] - row["warm_session_reply"] for label, row in rows.items()}
    for label, row in rows.items():
        print(f"  {label:<22} first {fmt_s(row['first'])}  established "
              f"{fmt_s(row['warm_session_reply'])}  above {fmt_s(above[label])}  "
              f"spares taken {row['spares_taken']}")  # fmt: skip
    if chosen:
        return
    w, c = rows["warm_spare"], rows["cold"]
    save(
        "spare_first_reply",
        {
            **rows,
            **{f"spare_overhead{suffix}": above[label] for label, suffix in OVERHEADS.items()},
        },
        f"new session's first reply {fmt_s(w['first'])} with a warm spare vs {fmt_s(c['first'])}"
        f" cold; {fmt_s(above['warm_spare'])} above an established session's reply "
        f"({fmt_s(w['warm_session_reply'])}, the model's own time + evie). Above an established "
        f"reply on Anthropic's API {fmt_s(above['warm_spare_anthropic'])}, OpenAI's responses "
        f"{fmt_s(above['warm_spare_responses'])} (without the warm-up "
        f"{fmt_s(above['no_warm_up_responses'])}), Gemini {fmt_s(above['warm_spare_gemini'])} "
        f"(without {fmt_s(above['no_warm_up_gemini'])}), Mistral's "
        f"{fmt_s(above['warm_spare_mistral'])} (without {fmt_s(above['no_warm_up_mistral'])}), "
        f"Bedrock's {fmt_s(above['warm_spare_bedrock'])} (without "
        f"{fmt_s(above['no_warm_up_bedrock'])})",
        title="First reply of a new session (real pi, fake LLM)",
    )


_GC_PROBE = """
import gc, json, sys, time
if sys.argv[1] == "pin":  # as evie run imports it: evie first, aiogram's types deferred
    import evie.platforms.telegram
import aiogram
from aiogram.methods import SendMessage
from aiogram.methods.base import Response
import evie.daemon, evie.http
tracked = len(gc.get_objects())
t = time.perf_counter(); gc.collect(); full = time.perf_counter() - t
def build():  # in a function, as aiogram does it (at module level pydantic keeps a global ref)
    return Response[SendMessage.__returning__]
build()
gc.collect()
t = time.perf_counter(); build(); rebuild = time.perf_counter() - t
gc.freeze()
t = time.perf_counter(); gc.collect(); frozen = time.perf_counter() - t
print(json.dumps({"tracked": tracked, "full_collection": full, "response_after_gc": rebuild,
                  "full_collection_frozen": frozen}))
"""


async def gc_and_aiogram(_tmp: Path) -> None:
    """A full collection with aiogram loaded, before/after gc.freeze(); Response[...] rebuilds."""
    import json

    def probe(mode: str) -> dict[str, float]:
        out = subprocess.run(
            [sys.executable, "-c", _GC_PROBE, mode], capture_output=True, text=True, check=True,
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        return dict(json.loads(out.stdout))

    before = await anyio.to_thread.run_sync(probe, "nopin")
    after = await anyio.to_thread.run_sync(probe, "pin")
    gc.collect()
    print(f"  tracked objects {before['tracked']:,.0f}; full collection "
          f"{fmt_s(before['full_collection'])}, after gc.freeze() "
          f"{fmt_s(after['full_collection_frozen'])}")  # fmt: skip
    print(f"  Response[...] after a collection: {fmt_s(before['response_after_gc'])} rebuilt, "
          f"{fmt_s(after['response_after_gc'])} held by evie")  # fmt: skip
    save(
        "gc_and_aiogram",
        {"aiogram_only": before, "evie_pins": after},
        f"aiogram as it imports itself: {before['tracked']:,.0f} objects, a full collection "
        f"{fmt_s(before['full_collection'])}; as evie imports it (types built on first use): "
        f"{after['tracked']:,.0f} objects, {fmt_s(after['full_collection'])}; after gc.freeze() "
        f"{fmt_s(after['full_collection_frozen'])}. aiogram's Response[...] after a collection: "
        f"rebuilt in {fmt_s(before['response_after_gc'])}, held by evie "
        f"{fmt_s(after['response_after_gc'])}",
        title="Garbage collection with aiogram loaded; aiogram response classes",
    )


SCENARIOS: dict[str, Callable[[Path], Awaitable[None]]] = {
    "telegram_latency": telegram_latency,
    "startup": startup,
    "metrics_scale": metrics_scale,
    "spare_first_reply": spare_first_reply,
    "gc_and_aiogram": gc_and_aiogram,
}
