"""config.example.toml against the schema, and each default declared once (in evie.config).

The example documents every key: a key that is set in it shows its default, a
commented ``# key = value`` line shows a valid example. Both are checked by
parsing: the file as it is, with every commented line uncommented at once, and
with each uncommented on its own.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import attrs
import pytest

from evie.agent.launcher import PiLauncher
from evie.config import _SECTIONS, AgentConfig, Config, SessionsConfig, parse_config
from evie.runtime import build_launcher
from evie.sessions.manager import SessionSettings

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"
SECTION = re.compile(r"^\[([a-z_.]+)\]\s*$")
ENTRY = re.compile(r"^(#\s?)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.+)$")


@attrs.frozen
class Entry:
    line: int  # index into the file's lines
    section: str
    key: str
    commented: bool


def entries(lines: list[str]) -> list[Entry]:
    """Every ``key = value`` line, set or commented; prose comments are skipped."""
    found = []
    section = ""
    for i, line in enumerate(lines):
        if m := SECTION.match(line):
            section = m.group(1)
        elif m := ENTRY.match(line):
            commented, key, value = m.groups()
            try:
                tomllib.loads(f"v = {value}")
            except tomllib.TOMLDecodeError:
                continue  # prose that happens to contain " = "
            found.append(Entry(i, section, key, bool(commented)))
    return found


def uncomment(lines: list[str], which: list[Entry]) -> str:
    out = list(lines)
    for entry in which:
        out[entry.line] = out[entry.line].lstrip("#").lstrip()
    return "\n".join(out) + "\n"


def parse(text: str) -> Config:
    return parse_config(tomllib.loads(text), environ={})


LINES = EXAMPLE.read_text(encoding="utf-8").splitlines()
ENTRIES = entries(LINES)
COMMENTED = [e for e in ENTRIES if e.commented]


def schema_keys() -> set[tuple[str, str]]:
    return {(name, f.name) for name, cls in _SECTIONS.items() for f in attrs.fields(cls)}


def documented_keys() -> set[tuple[str, str]]:
    keys = set()
    for entry in ENTRIES:
        if entry.section == "agent.env":  # the [agent] env table: any name is allowed
            keys.add(("agent", "env"))
        else:
            keys.add((entry.section, entry.key))
    return keys


def test_every_key_of_the_schema_is_documented_and_every_documented_key_exists() -> None:
    assert len(COMMENTED) >= 10  # the parser really found the commented examples
    assert documented_keys() == schema_keys()


def test_the_example_as_it_stands_shows_the_defaults() -> None:
    shown = parse("\n".join(LINES))
    defaults = parse_config({}, environ={})
    for entry in ENTRIES:
        if entry.commented or entry.section == "agent.env":
            continue
        section = entry.section
        assert getattr(getattr(shown, section), entry.key) == getattr(
            getattr(defaults, section), entry.key
        ), f"[{section}] {entry.key} in the example is not the default"


def test_every_commented_example_is_valid_together() -> None:
    config = parse(uncomment(LINES, COMMENTED))
    assert config.telegram.token is not None  # the commented lines really were read
    assert config.agent.env  # [agent.env] too


@pytest.mark.parametrize("entry", COMMENTED, ids=lambda e: f"{e.section}.{e.key}")
def test_every_commented_example_is_valid_alone(entry: Entry) -> None:
    config = parse(uncomment(LINES, [entry]))
    if entry.section == "agent.env":
        value: Any = dict(config.agent.env)[entry.key]
    else:
        value = getattr(getattr(config, entry.section), entry.key)
    assert value is not None  # the example was read, and it is a value, not "unset"


def test_the_lower_layers_take_their_defaults_from_the_config() -> None:
    sessions = SessionsConfig()
    # warm_spares: a bare manager (tests, tools) boots no spare pi unless asked; the
    # runtime takes [sessions] warm_spares (default 1) from the config like every other key
    for field in attrs.fields(SessionSettings):
        if hasattr(sessions, field.name) and field.name != "warm_spares":
            assert getattr(SessionSettings(), field.name) == getattr(sessions, field.name)
    assert PiLauncher((), Path("/s"), Path("/a")).startup_timeout == AgentConfig().startup_timeout


def test_the_runtime_builds_the_settings_from_the_config() -> None:
    config = parse_config(
        {
            "sessions": {"idle_timeout": 5, "max_processes": 3, "mid_turn": "steer"},
            "agent": {"startup_timeout": 7},
        },
        environ={},
    )
    settings = SessionSettings.from_config(config.sessions)
    assert (settings.idle_timeout, settings.max_processes, settings.mid_turn) == (5, 3, "steer")
    assert settings.abort_grace == SessionsConfig().abort_grace
    assert build_launcher(config).startup_timeout == 7
