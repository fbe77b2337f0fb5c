"""Where evie's CPU per small turn goes: ``evie run`` under cProfile, driven over the fake Bot API.

``python -m bench.profile_turn [N] [OUT.prof]`` starts the fake Bot API (own
process) and ``evie run`` with a cProfile profiler of its event loop's thread that
SIGUSR1 switches on and SIGUSR2 off (and writes), warms evie up, profiles N small
messages sent one after another, and prints the top functions by own and
cumulative time. Not part of ``just bench``: a tool for reading a profile.
"""

from __future__ import annotations

import os
import pstats
import signal
import sys
import tempfile
import time
from pathlib import Path

import anyio

from bench.common import ROOT
from bench.procs import CLK_TCK, _env, _stop, cpu_seconds, fake_botapi, write_config

_PROFILED = """
import cProfile, signal, sys, time
out = sys.argv[1]
profile = cProfile.Profile(time.thread_time)  # CPU of the loop thread, not wall
signal.signal(signal.SIGUSR1, lambda *_: profile.enable())
def _dump(*_):
    profile.disable()
    profile.dump_stats(out)
signal.signal(signal.SIGUSR2, _dump)
from evie.cli import main
main(sys.argv[2:])
"""


def _user_sys(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


async def main(n: int, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        async with fake_botapi(tmp / "api") as api:
            config = write_config(tmp / "evie", api, spares=0)
            env = {**_env(), "EVIE_GC": os.environ.get("EVIE_GC", "tuned")}
            proc = await anyio.open_process(
                [sys.executable, "-c", _PROFILED, str(out), "--config", str(config), "run"],
                env=env, cwd=ROOT,
            )  # fmt: skip
            try:
                await api.first_poll()
                await api.run(50)
                proc.send_signal(signal.SIGUSR1)
                await anyio.sleep(0.2)
                before, split = cpu_seconds(proc.pid), _user_sys(proc.pid)
                started = time.perf_counter()
                samples = await api.run(n)
                wall = time.perf_counter() - started
                cpu = cpu_seconds(proc.pid) - before
                user, system = (b - a for a, b in zip(split, _user_sys(proc.pid), strict=True))
                proc.send_signal(signal.SIGUSR2)
                with anyio.fail_after(30):
                    while not out.exists():  # noqa: ASYNC110, ASYNC240
                        await anyio.sleep(0.1)
                await anyio.sleep(0.5)
            finally:
                await _stop(proc)
    samples.sort()
    print(f"{n} turns in {wall:.2f}s: p50 {samples[len(samples) // 2] * 1e3:.2f} ms, "
          f"evie CPU {cpu / n * 1e3:.2f} ms/turn (user {user / n * 1e3:.2f}, system "
          f"{system / n * 1e3:.2f}; under cProfile: inflated)")  # fmt: skip
    stats = pstats.Stats(str(out))
    stats.sort_stats("tottime").print_stats(40)
    stats.sort_stats("cumulative").print_stats(80)


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 500,
              Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/evie-turn.prof"))  # fmt: skip
