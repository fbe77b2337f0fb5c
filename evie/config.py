"""Configuration: ``config.toml`` read with tomllib, validated all at once.

Every problem is reported in one :class:`ConfigError`, each line naming the
key path and what was expected, so a user fixes the file in one go. Unknown
keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import attrs

from evie.config_file import (  # the checks `evie chat` applies before its prompt
    _Bad,
    _opt_path,
    _opt_str,
    _path,
    _str,
    default_state_dir,
    file_warnings,
    read_config_file,
)
from evie.errors import ConfigError

T = TypeVar("T")
Check = Callable[[Any], Any]  # returns the converted value or raises _Bad


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Bad("expected true or false")
    return v


def _pos_float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
        raise _Bad("expected a number >= 0")
    return float(v)


def _pos_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise _Bad("expected a whole number >= 1")
    return v


def _count(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _Bad("expected a whole number >= 0")
    return v


def _upload_mb(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 2000:
        raise _Bad(
            "expected a whole number of MB from 1 to 2000 (50 for api.telegram.org, "
            "up to 2000 with a local Bot API server in api_url)"
        )
    return v


#: most messages one reply is sent as: 50 Telegram messages are ~200 KB of text, and take
#: a minute or more to send under Telegram's and Discord's rate limits (about one message a
#: second in a chat, five per five seconds in a Discord channel) while they flood the chat;
#: a longer reply reads better as the file it is sent as anyway
MAX_CHUNKS_LIMIT = 50


def _max_chunks(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_CHUNKS_LIMIT:
        raise _Bad(
            f"expected a whole number from 1 to {MAX_CHUNKS_LIMIT} (a longer reply is sent "
            "as its first message plus a file; more messages flood the chat for minutes)"
        )
    return v


def _command(v: Any) -> tuple[str, ...]:
    if isinstance(v, str) and v.strip():
        return (v,)
    if isinstance(v, list) and v and all(isinstance(x, str) and x for x in v):
        return tuple(v)
    raise _Bad('expected a program name or a list such as ["node", "/path/to/pi"]')


def _user_ids(v: Any) -> frozenset[int]:
    if not isinstance(v, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in v
    ):
        raise _Bad("expected a list of numeric user ids, e.g. [123456789]")
    return frozenset(v)


def _env(v: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise _Bad("expected a table of string values")
    return tuple(sorted(v.items()))


def _choice(*options: str) -> Check:
    def check(v: Any) -> str:
        if v not in options:
            raise _Bad("expected one of " + ", ".join(repr(o) for o in options))
        return cast(str, v)

    return check


def _url(v: Any) -> str:
    s = _str(v).rstrip("/")
    if not s.startswith(("http://", "https://", "ws://", "wss://")):
        raise _Bad("expected a URL starting with http://, https://, ws:// or wss://")
    return s


def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8765"`` / ``"[::1]:8765"`` → host and port (validated by the config)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _listen(v: Any) -> str:
    s = _str(v)
    host, sep, port = s.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise _Bad('expected "host:port", e.g. "127.0.0.1:8765"')
    host = host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:  # the endpoint has no authentication
        raise _Bad(f"expected a loopback address such as 127.0.0.1, got host {host!r}")
    return s


def _opt(check: Check) -> Check:
    return lambda v: None if v == "" else check(v)


def setting(default: Any, check: Check, doc: str) -> Any:
    return attrs.field(default=default, metadata={"check": check, "doc": doc})


def default_work_root() -> Path:
    """Per-session work dirs: ``$XDG_DATA_HOME/evie/work`` (outside the state dir)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "evie" / "work"


def default_pi_command() -> tuple[str, ...]:
    """pi from this checkout's ``npm ci``, else ``pi`` on PATH."""
    local = Path(__file__).resolve().parent.parent / "node_modules" / ".bin" / "pi"
    if local.exists():
        return (str(local),)
    return (shutil.which("pi") or "pi",)


@attrs.frozen
class AgentConfig:
    command: tuple[str, ...] | None = setting(None, _command, "how to run pi")
    provider: str | None = setting(None, _opt_str, "pi --provider")
    model: str | None = setting(None, _opt_str, "pi --model")
    cwd: Path | None = setting(None, _opt_path, "working directory for every session")
    system_prompt: str | None = setting(None, _opt_str, "pi --system-prompt")
    agent_dir: Path | None = setting(None, _opt_path, "PI_CODING_AGENT_DIR")
    startup_timeout: float = setting(30.0, _pos_float, "seconds pi may take to start")
    env: tuple[tuple[str, str], ...] = setting((), _env, "extra environment for pi")
    sandbox: Literal["auto", "bwrap", "off"] = setting(
        "auto", _choice("auto", "bwrap", "off"), "hide evie's secrets from pi (bubblewrap)"
    )
    max_turn_seconds: float | None = setting(
        None, _opt(_pos_float), "a turn running longer is stopped (unset: no limit)"
    )
    stall_timeout: float | None = setting(
        None, _opt(_pos_float), "a turn in which pi is silent this long is stopped"
    )
    max_line_bytes: int = setting(
        32 * 1024 * 1024, _pos_int, "longest line kept from pi; longer ones are dropped"
    )
    warm_up: bool = setting(True, _bool, "load evie's warm-up extension into pi")


@attrs.frozen
class SessionsConfig:
    idle_timeout: float = setting(1800.0, _pos_float, "seconds before an idle pi is stopped")
    max_processes: int = setting(8, _pos_int, "most pi processes alive at once")
    mid_turn: Literal["follow_up", "steer"] = setting(
        "follow_up", _choice("follow_up", "steer"), "what a message sent mid-turn does"
    )
    shutdown_grace: float = setting(30.0, _pos_float, "seconds running turns get at shutdown")
    abort_grace: float = setting(
        10.0, _pos_float, "seconds an aborted turn gets before pi is killed"
    )
    warm_spares: int = setting(1, _count, "pi processes kept booted for new sessions")


@attrs.frozen
class StateConfig:
    dir: Path = setting(attrs.Factory(default_state_dir), _path, "where evie keeps its state")


@attrs.frozen
class TelegramConfig:
    token: str | None = setting(None, _opt_str, "bot token (or EVIE_TELEGRAM_TOKEN)")
    api_url: str = setting("https://api.telegram.org", _url, "Bot API server")
    max_upload_mb: int = setting(
        50, _upload_mb, "largest file sent, in MB (a local Bot API server takes up to 2000)"
    )
    allowed_user_ids: frozenset[int] = setting(frozenset(), _user_ids, "who may use the bot")
    edit_interval: float = setting(1.0, _pos_float, "seconds between edits of a streaming reply")
    polling_timeout: int = setting(25, _pos_int, "seconds a getUpdates long poll waits")
    request_grace: int = setting(
        15, _pos_int, "seconds past polling_timeout before a silent getUpdates counts as hung"
    )


@attrs.frozen
class DiscordConfig:
    token: str | None = setting(None, _opt_str, "bot token (or EVIE_DISCORD_TOKEN)")
    api_url: str | None = setting(None, _opt(_url), "REST base, e.g. .../api/v10")
    gateway_url: str | None = setting(None, _opt(_url), "gateway websocket URL")
    allowed_user_ids: frozenset[int] = setting(frozenset(), _user_ids, "who may use the bot")
    edit_interval: float = setting(1.0, _pos_float, "seconds between edits of a streaming reply")


@attrs.frozen
class HttpConfig:
    listen: str | None = setting(None, _opt(_listen), "loopback host:port for /healthz, /metrics")
    token: str | None = setting(None, _opt_str, "require Authorization: Bearer <token>")
    stall_after: float = setting(
        90.0, _pos_float, "/healthz fails when a platform had no good poll for this many seconds"
    )
    max_loop_lag: float = setting(
        5.0, _pos_float, "/healthz fails when the event loop lags more than this many seconds"
    )


@attrs.frozen
class PlatformsConfig:
    retry_base: float = setting(1.0, _pos_float, "first retry delay after a platform error (s)")
    retry_cap: float = setting(60.0, _pos_float, "longest retry delay after platform errors (s)")
    heartbeat_check: float = setting(
        10.0, _pos_float, "how often a connected gateway is confirmed alive (s)"
    )


@attrs.frozen
class DeliveryConfig:
    max_chunks: int = setting(
        8,
        _max_chunks,
        "replies longer than this many messages (at most 50) go as a file after the first part",
    )
    max_age: float = setting(86400.0, _pos_float, "seconds a reply is retried before it is dropped")
    late_after: float = setting(
        60.0, _pos_float, "a reply delivered later than this says when it was written"
    )
    max_per_chat: int = setting(1000, _pos_int, "undelivered replies kept per chat")
    retry_base: float = setting(1.0, _pos_float, "first retry delay after a failed delivery")
    retry_max: float = setting(60.0, _pos_float, "longest delay between delivery retries")


@attrs.frozen
class LogConfig:
    level: str = setting("info", _choice("debug", "info", "warning", "error"), "log level")
    format: str = setting("text", _choice("text", "json"), "log line format")


@attrs.frozen
class Config:
    agent: AgentConfig = attrs.Factory(AgentConfig)
    sessions: SessionsConfig = attrs.Factory(SessionsConfig)
    state: StateConfig = attrs.Factory(StateConfig)
    telegram: TelegramConfig = attrs.Factory(TelegramConfig)
    discord: DiscordConfig = attrs.Factory(DiscordConfig)
    delivery: DeliveryConfig = attrs.Factory(DeliveryConfig)
    http: HttpConfig = attrs.Factory(HttpConfig)
    platforms: PlatformsConfig = attrs.Factory(PlatformsConfig)
    log: LogConfig = attrs.Factory(LogConfig)
    source: Path | None = None
    warnings: tuple[str, ...] = ()

    @property
    def pi_command(self) -> tuple[str, ...]:
        return self.agent.command or default_pi_command()

    @property
    def agent_dir(self) -> Path:
        return self.agent.agent_dir or self.state.dir / "agent"


_SECTIONS: dict[str, type[Any]] = {
    "agent": AgentConfig,
    "sessions": SessionsConfig,
    "state": StateConfig,
    "telegram": TelegramConfig,
    "discord": DiscordConfig,
    "delivery": DeliveryConfig,
    "http": HttpConfig,
    "platforms": PlatformsConfig,
    "log": LogConfig,
}


def _build(cls: type[T], table: Mapping[str, Any], path: str, errors: list[str]) -> T:
    values: dict[str, Any] = {}
    known = {f.name: f for f in attrs.fields(cast(Any, cls))}
    for key, raw in table.items():
        field = known.get(key)
        if field is None:
            errors.append(f"{path}.{key}: unknown key (known: {', '.join(sorted(known))})")
            continue
        try:
            values[key] = field.metadata["check"](raw)
        except _Bad as exc:
            errors.append(f"{path}.{key}: {exc}, got {raw!r}")
    return cls(**values)


def parse_config(
    data: Mapping[str, Any],
    *,
    source: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate a parsed TOML document; raise one ConfigError listing every problem."""
    environ = os.environ if environ is None else environ
    errors: list[str] = []
    sections: dict[str, Any] = {}
    for name, table in data.items():
        cls = _SECTIONS.get(name)
        if cls is None:
            errors.append(f"{name}: unknown section (known: {', '.join(_SECTIONS)})")
        elif not isinstance(table, dict):
            errors.append(f"{name}: expected a [{name}] table")
        else:
            sections[name] = _build(cls, table, name, errors)
    if errors:
        where = f" in {source}" if source else ""
        raise ConfigError(f"invalid configuration{where}:\n  " + "\n  ".join(errors))
    config = Config(**sections, source=source)
    for name, var in (("telegram", "EVIE_TELEGRAM_TOKEN"), ("discord", "EVIE_DISCORD_TOKEN")):
        token = environ.get(var)
        if token:
            section = getattr(config, name)
            config = attrs.evolve(config, **{name: attrs.evolve(section, token=token)})
    return config


def load_config(path: Path | None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (or return the built-in defaults when it is None)."""
    if path is None:
        return parse_config({}, environ=environ)
    return config_from_file(read_config_file(path), path, environ=environ)


def config_from_file(
    data: dict[str, Any], path: Path, *, environ: Mapping[str, str] | None = None
) -> Config:
    """A config file's TOML document validated, with the file's warnings (``evie chat``
    reads the file before its first prompt and validates it beside it, adr/0015)."""
    config = parse_config(data, source=path, environ=environ)
    return attrs.evolve(config, warnings=file_warnings(path, data))


EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def example_config() -> str:
    """What ``evie init`` writes: the documented ``config.example.toml`` of this checkout,
    else (an installed wheel without it) the same keys generated from their declarations."""
    try:
        return EXAMPLE.read_text(encoding="utf-8")
    except OSError:
        return starter_config()


def _example_value(field: Any) -> Any:
    """A valid value to show, commented out, for a key whose default is "unset"."""
    check = field.metadata["check"]
    candidates: tuple[Any, ...] = ("", ["pi"], [], {})
    for candidate in candidates:
        try:
            check(candidate)
        except _Bad:
            continue
        return candidate
    return ""


def _inline(value: Any) -> str:
    """One-line TOML for the example values above (strings, lists of strings, empty tables)."""
    import json

    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return json.dumps(value)


def starter_config() -> str:
    """A commented starter ``config.toml``: each key with its doc and default.

    Every commented-out ``# key = value`` line is valid TOML and a valid value,
    so uncommenting any one of them gives a working file.
    """
    import tomli_w

    out = [
        "# evie configuration. Every key is optional; shown values are the defaults.",
        "# Secrets may come from EVIE_TELEGRAM_TOKEN / EVIE_DISCORD_TOKEN instead.",
        "",
    ]
    for name, cls in _SECTIONS.items():
        out.append(f"[{name}]")
        for field in attrs.fields(cls):
            out.append(f"# {field.name}: {field.metadata['doc']}")
            default = field.default
            computed = isinstance(default, attrs.Factory)  # type: ignore[arg-type]
            if computed:  # depends on this machine: shown, not pinned
                default = default.factory()
            if default is None or default == () or default == frozenset():
                out.append(f"# {field.name} = {_inline(_example_value(field))}")
                continue
            if isinstance(default, Path):
                default = str(default)
            line = tomli_w.dumps({field.name: default}).rstrip()
            out.append(f"# {line}" if computed else line)
        out.append("")
    return "\n".join(out)
