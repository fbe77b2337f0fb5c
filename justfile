# evie's tasks. Run through ./dev (which installs everything first): ./dev just check

# lint, format check, strict typing and the test suite: what CI runs
check: lint typecheck layers test

lint:
    ruff check .
    ruff format --check .

# mypy --strict over evie, tests and bench (the files of pyproject.toml's [tool.mypy])
typecheck:
    mypy

# the layer rules (adr/0008), enforced by import-linter
layers:
    lint-imports

test *args:
    pytest {{args}}

# the chaos test with many more kill -9s (not part of check); prints its counts
soak kills="25":
    CHAOS_KILLS={{kills}} pytest tests/test_chaos.py -q

# benchmarks (not part of check): prints figures and writes bench/results/*.json
bench *args:
    python -m bench {{args}}

# reformat and auto-fix what ruff can
fmt:
    ruff format .
    ruff check --fix .
