"""Run the benchmarks: python -m bench [name ...]."""

from __future__ import annotations

import sys

import anyio

from bench.scenarios import SCENARIOS, run


def main() -> int:
    names = sys.argv[1:]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {', '.join(SCENARIOS)}")
        return 2
    anyio.run(run, names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
