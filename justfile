# evie's tasks. Run through ./dev (which installs everything first): ./dev just check

# lint, format check, strict typing and the test suite: what CI runs
check: lint typecheck test

lint:
    ruff check .
    ruff format --check .

typecheck:
    mypy

test *args:
    pytest {{args}}

# benchmarks (not part of check): prints figures and writes bench/results/*.json
bench *args:
    python -m bench {{args}}

# reformat and auto-fix what ruff can
fmt:
    ruff format .
    ruff check --fix .
