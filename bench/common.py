"""Helpers shared by the benchmarks: percentiles, result files, the fake-pi launcher."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from evie.agent.launcher import PiLauncher

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
FAKE_PI = ROOT / "tests" / "fake_pi.py"
REAL_PI = ROOT / "node_modules" / ".bin" / "pi"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p99": pct(values, 99),
        "max": max(values) if values else float("nan"),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


def fmt_s(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f}µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f}ms"
    return f"{seconds:.2f}s"


def fake_launcher(state: Path, *extra: str) -> PiLauncher:
    return PiLauncher(
        command=(sys.executable, str(FAKE_PI), *extra),
        state_dir=state,
        agent_dir=state / "agent",
        startup_timeout=60,
    )


def results_dir() -> Path:
    """Where results go: bench/results, or $EVIE_BENCH_RESULTS (the smoke test uses a tmp dir)."""
    return Path(os.environ.get("EVIE_BENCH_RESULTS") or RESULTS)


def save(name: str, figures: dict[str, Any], line: str, *, title: str | None = None) -> None:
    """Write bench/results/<name>.json; ``title`` and ``line`` become its README row."""
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "title": title or name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),  # other work on the machine meanwhile
        "figures": figures,
        "summary": line,
    }
    (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"== {name}: {line}")
