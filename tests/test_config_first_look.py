"""`evie chat` reads four values of its config before its first prompt without attrs
(:func:`evie.config_file.first_look`) and validates the whole config beside the prompt
(adr/0015, start-up): the first look must read exactly what the full validation reads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evie.config import parse_config
from evie.config_file import first_look
from evie.errors import ConfigError

#: values of every shape TOML gives, the ones the checks accept among them
VALUES = st.one_of(
    st.just(""),
    st.sampled_from(["~/x", "~", "/abs/dir", "rel/dir", "anthropic", "gpt-5", " "]),
    st.text(max_size=8),
    st.integers(-2, 2),
    st.booleans(),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
)
#: tables that also hold other keys, good and bad: the first look ignores them
OTHER = st.dictionaries(
    st.sampled_from(["startup_timeout", "warm_up", "modle"]),
    st.one_of(st.floats(0, 10), st.booleans(), st.text(max_size=3)),
    max_size=2,
)


def _table(keys: list[str]) -> st.SearchStrategy[Any]:
    looked_at = st.fixed_dictionaries({}, optional={k: VALUES for k in keys})
    table = st.builds(lambda ours, other: {**other, **ours}, looked_at, OTHER)
    return st.one_of(table, VALUES)  # sometimes not a table at all


DOCS = st.fixed_dictionaries(
    {},
    optional={
        "agent": _table(["provider", "model", "cwd"]),
        "state": _table(["dir"]),
        "sessions": st.fixed_dictionaries({}, optional={"warm_spares": VALUES}),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCS)
def test_the_first_look_reads_what_the_config_reads(data: dict[str, Any]) -> None:
    look = first_look(data)
    try:
        config = parse_config(data, environ={})
    except ConfigError as exc:
        problems = str(exc).splitlines()[1:]
        looked_at = ("agent.provider", "agent.model", "agent.cwd", "state.dir", "agent:", "state:")
        ours = [p for p in problems if p.strip().startswith(looked_at)]
        # None exactly when one of its own values (or their table) is what is wrong
        assert (look is None) == bool(ours), problems
        return
    assert look is not None
    assert look.provider == config.agent.provider
    assert look.model == config.agent.model
    assert look.cwd == config.agent.cwd
    assert look.state_dir == config.state.dir


def test_the_default_state_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/xdg/state")
    look = first_look({})
    assert look is not None
    assert look.state_dir == Path("/xdg/state/evie") == parse_config({}, environ={}).state.dir
    monkeypatch.delenv("XDG_STATE_HOME")
    look = first_look({"state": {"dir": "~/s"}})
    assert look is not None
    assert look.state_dir == Path(os.path.expanduser("~/s"))
