"""The config file read and looked at without attrs: what ``evie chat`` needs before its prompt.

:mod:`evie.config` validates every key into attrs classes; importing attrs and building
those classes is ~30-45 ms of CPU on a small machine, a sixth of the way to ``evie chat``'s
first prompt (adr/0015, start-up). The greeting and the line editor need four values of it:
the model and provider it names, the working directory, the state dir (the editor's
history lives there). :func:`first_look` reads exactly those, with the same checks
:mod:`evie.config` applies to them (they live here and it imports them), and says when it
cannot (then the whole config is validated before the prompt, as before); the rest is
validated beside the prompt. File errors and warnings stay before it: :func:`read_config_file`
and :func:`file_warnings` are what :func:`evie.config.load_config` uses too.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any, NamedTuple

from evie.errors import ConfigError


class _Bad(Exception):
    """A value of the wrong shape; the message says what was expected."""


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise _Bad("expected a string")
    return v


def _opt_str(v: Any) -> str | None:
    return None if v == "" else _str(v)


def _path(v: Any) -> Path:
    return Path(os.path.expanduser(_str(v)))


def _opt_path(v: Any) -> Path | None:
    return None if v == "" else _path(v)


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "evie"


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's TOML document; a :class:`ConfigError` with the fix when it cannot be read."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist; create one with `evie init`"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def file_warnings(path: Path, data: dict[str, Any]) -> tuple[str, ...]:
    """What is wrong with the file without making it invalid: tokens readable by others."""
    has_token = any(
        isinstance(data.get(s), dict) and data[s].get("token")
        for s in ("telegram", "discord", "http")
    )
    mode = stat.S_IMODE(path.stat().st_mode)
    if has_token and mode & 0o077:
        return (
            f"{path} holds bot tokens but is readable by other users "
            f"(mode {mode:o}); run: chmod 600 {path}",
        )
    return ()


class FirstLook(NamedTuple):
    """The values ``evie chat`` shows and uses before its first prompt, as the full config
    has them (``[agent] provider``, ``model``, ``cwd``; ``[state] dir``)."""

    provider: str | None
    model: str | None
    cwd: Path | None
    state_dir: Path


def first_look(data: dict[str, Any]) -> FirstLook | None:
    """Those values from a parsed config, or None when one of them (or its table) is not of
    a shape :mod:`evie.config` accepts: the full validation then reports it."""
    agent, state = data.get("agent", {}), data.get("state", {})
    if not isinstance(agent, dict) or not isinstance(state, dict):
        return None
    try:
        return FirstLook(
            provider=_opt_str(agent.get("provider", "")),
            model=_opt_str(agent.get("model", "")),
            cwd=_opt_path(agent.get("cwd", "")),
            state_dir=_path(state["dir"]) if "dir" in state else default_state_dir(),
        )
    except _Bad:
        return None
