"""Optional loopback HTTP endpoint: /healthz, /metrics (Prometheus text), /status (JSON).

The same figures feed ``/status`` in chats; this only renders them. The config
accepts only loopback addresses for it. A request whose ``Host`` is not the
listen address is refused, so a web page cannot read it through DNS rebinding
(a browser sends the attacker's host name); with ``[http] token`` every request
must also carry ``Authorization: Bearer <token>``.

``/healthz`` is a liveness probe (adr/0011): 503 when a configured platform has
had no good poll or heartbeat for ``[http] stall_after`` seconds, or when the
event loop lags more than ``[http] max_loop_lag``; the body says which.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import get_args

import anyio.lowlevel
import msgspec
from aiohttp import web

from evie import __version__
from evie.config import split_listen
from evie.metrics import Histogram, Metrics
from evie.platforms.contract import PlatformHealth, PlatformState
from evie.sessions.manager import SessionManager
from evie.sessions.slot import SlotState, SlotStatus

#: sessions rendered between two yields to the event loop in ``/status``
STATUS_CHUNK = 50


def _histogram(name: str, help_text: str, h: Histogram) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    cumulative = 0
    for bound, count in zip(h.buckets, h.counts, strict=False):
        cumulative += count
        lines.append(f'{name}_bucket{{le="{bound:g}"}} {cumulative}')
    lines.append(f'{name}_bucket{{le="+Inf"}} {h.count}')
    lines.append(f"{name}_sum {h.total:.9f}")
    lines.append(f"{name}_count {h.count}")
    return lines


Platforms = Callable[[], Sequence[PlatformHealth]]


def _no_platforms() -> Sequence[PlatformHealth]:
    return ()


def _platform_metrics(platforms: Sequence[PlatformHealth], metrics: Metrics) -> list[str]:
    lines = [
        "# HELP evie_platform_state Each platform's state (1 for the current one).",
        "# TYPE evie_platform_state gauge",
    ]
    for h in platforms:
        lines += [
            f'evie_platform_state{{platform="{h.name}",state="{st}"}} {int(h.state == st)}'
            for st in get_args(PlatformState)
        ]
    lines += [
        "# HELP evie_platform_silent_seconds Seconds since the last good poll or heartbeat.",
        "# TYPE evie_platform_silent_seconds gauge",
    ]
    lines += [
        f'evie_platform_silent_seconds{{platform="{h.name}"}} {h.silent_for:.3f}' for h in platforms
    ]
    lines += [
        "# HELP evie_platform_failures Consecutive failed attempts.",
        "# TYPE evie_platform_failures gauge",
    ]
    lines += [
        f'evie_platform_failures{{platform="{h.name}"}} {h.consecutive_failures}' for h in platforms
    ]
    lines += [
        "# HELP evie_platform_skipped_updates_total Unreadable updates skipped.",
        "# TYPE evie_platform_skipped_updates_total counter",
    ]
    lines += [
        f'evie_platform_skipped_updates_total{{platform="{h.name}"}} {h.skipped_updates}'
        for h in platforms
    ]
    lag = metrics.loop_lag
    lines += [
        "# HELP evie_event_loop_lag_seconds How late the event loop woke its ticker.",
        "# TYPE evie_event_loop_lag_seconds gauge",
        f"evie_event_loop_lag_seconds {lag.current():.6f}",
        "# HELP evie_event_loop_lag_max_seconds Worst event-loop lag seen.",
        "# TYPE evie_event_loop_lag_max_seconds gauge",
        f"evie_event_loop_lag_max_seconds {lag.worst:.6f}",
    ]
    return lines


def health_problems(
    platforms: Sequence[PlatformHealth],
    metrics: Metrics,
    *,
    stall_after: float,
    max_loop_lag: float,
) -> list[str]:
    """Why evie is not healthy, one line each; empty when it is."""
    problems = [
        f"{h.name}: no good poll or heartbeat for {h.silent_for:.0f}s ({h.summary()})"
        for h in platforms
        if h.silent_for > stall_after
    ]
    lag = metrics.loop_lag.current()
    if lag > max_loop_lag:
        problems.append(f"event loop lags {lag:.1f}s: something is blocking it")
    return problems


def platform_json(h: PlatformHealth) -> dict[str, object]:
    return {
        "name": h.name,
        "state": h.state,
        "seconds_since_ok": None if h.seconds_since_ok is None else round(h.seconds_since_ok, 3),
        "silent_for": round(h.silent_for, 3),
        "consecutive_failures": h.consecutive_failures,
        "detail": h.detail,
        "gave_up": h.gave_up,
        "skipped_updates": h.skipped_updates,
        "summary": h.summary(),
    }


def render_metrics(
    manager: SessionManager, metrics: Metrics, platforms: Sequence[PlatformHealth] = ()
) -> str:
    """Prometheus text from counters kept current on slot transitions: no walk over sessions."""
    tally = metrics.sessions
    lines = ["# HELP evie_sessions Sessions by state.", "# TYPE evie_sessions gauge"]
    lines += [
        f'evie_sessions{{state="{st.value}"}} {tally.by_state.get(st.value, 0)}' for st in SlotState
    ]
    spares = manager.spares
    lines += [
        "# HELP evie_pi_processes Live pi processes, retiring ones included.",
        "# TYPE evie_pi_processes gauge",
        f"evie_pi_processes {manager.live_processes()}",
        "# HELP evie_pi_processes_retiring pi processes no chat uses any more, being stopped.",
        "# TYPE evie_pi_processes_retiring gauge",
        f"evie_pi_processes_retiring {manager.retiring_processes()}",
        "# HELP evie_spare_processes Warm spare pi processes (booted or booting).",
        "# TYPE evie_spare_processes gauge",
        f"evie_spare_processes {spares.size if spares is not None else 0}",
        "# HELP evie_spares_taken_total Sessions that started on a warm spare.",
        "# TYPE evie_spares_taken_total counter",
        f"evie_spares_taken_total {metrics.spares_taken}",
        "# HELP evie_spares_missed_total Sessions that had to start pi cold.",
        "# TYPE evie_spares_missed_total counter",
        f"evie_spares_missed_total {metrics.spares_missed}",
        "# HELP evie_queue_depth Messages queued into running turns, not yet started.",
        "# TYPE evie_queue_depth gauge",
        f"evie_queue_depth {manager.queue_depth()}",
        "# HELP evie_turns_total Finished turns by outcome.",
        "# TYPE evie_turns_total counter",
    ]
    lines += [f'evie_turns_total{{outcome="{k}"}} {v}' for k, v in sorted(metrics.turns.items())]
    lines += [
        "# HELP evie_queued_messages_total Messages queued mid-turn.",
        "# TYPE evie_queued_messages_total counter",
        f"evie_queued_messages_total {metrics.queued_messages}",
        "# HELP evie_spawn_failures_total pi processes that failed to start.",
        "# TYPE evie_spawn_failures_total counter",
        f"evie_spawn_failures_total {metrics.spawn_failures}",
        "# HELP evie_pi_lines_dropped_total pi output lines over [agent] max_line_bytes.",
        "# TYPE evie_pi_lines_dropped_total counter",
        f"evie_pi_lines_dropped_total {metrics.lines_dropped}",
    ]
    lines += _histogram("evie_turn_duration_seconds", "Turn wall time.", metrics.turn_seconds)
    lines += _histogram(
        "evie_guard_wait_seconds", "Wait for the session-map guard.", metrics.guard_wait
    )
    lines += _histogram(
        "evie_guard_hold_seconds", "Hold of the session-map guard.", metrics.guard_hold
    )
    lines += _histogram(
        "evie_spawn_seconds", "pi start-up until first answer.", metrics.spawn_seconds
    )
    lines += _histogram(
        "evie_persist_serialise_seconds", "State snapshot serialisation.", metrics.persist_serialise
    )
    lines += _histogram("evie_persist_write_seconds", "State file write.", metrics.persist_write)
    lines += _platform_metrics(platforms, metrics)
    return "\n".join(lines) + "\n"


def _status_record(s: SlotStatus) -> dict[str, object]:
    return {
        "key": s.key,
        "session_id": s.session_id,
        "state": s.state.value,
        "pid": s.pid,
        "model": s.model,
        "turn_elapsed": s.turn_elapsed,
        "current_tool": s.current_tool,
        "queued": len(s.queued),
        "last_outcome": s.last_outcome.value if s.last_outcome else None,
        "last_error": s.last_error,
        "turns": s.turns,
        "idle_for": round(s.idle_for, 3),
        "last_event_ago": round(s.last_event_ago, 3) if s.last_event_ago is not None else None,
    }


async def status_body(manager: SessionManager) -> bytes:
    """``/status`` as JSON, built and encoded ``STATUS_CHUNK`` sessions at a time.

    Each chunk is a short stretch on the loop; a thread would not help, since
    encoding holds the GIL (a 10,000-session ``json.dumps`` in a thread blocked
    the loop for as long as it ran on the loop).
    """
    parts: list[bytes] = []
    chunk: list[dict[str, object]] = []
    for slot in manager.slots():
        chunk.append(_status_record(slot.snapshot()))
        if len(chunk) == STATUS_CHUNK:
            parts.append(msgspec.json.encode(chunk)[1:-1])
            chunk = []
            await anyio.lowlevel.checkpoint()
    if chunk:
        parts.append(msgspec.json.encode(chunk)[1:-1])
    return b"[" + b",".join(p for p in parts if p) + b"]"


async def status_document(
    manager: SessionManager, metrics: Metrics, platforms: Sequence[PlatformHealth]
) -> bytes:
    """``/status``: ``{sessions, platforms, event_loop_lag}``; sessions from :func:`status_body`."""
    rest = {
        "platforms": [platform_json(h) for h in platforms],
        "event_loop_lag": round(metrics.loop_lag.current(), 6),
    }
    return b'{"sessions":' + await status_body(manager) + b"," + msgspec.json.encode(rest)[1:]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _allowed_hosts(host: str, port: int) -> frozenset[str]:
    names = {host, "localhost"} if host in ("127.0.0.1", "::1", "localhost") else {host}
    out = set()
    for name in names:
        shown = f"[{name}]" if ":" in name else name
        out |= {shown.lower(), f"{shown}:{port}".lower()}
    return frozenset(out)


def refusal(
    request: web.Request, allowed_hosts: frozenset[str], token: str | None
) -> web.Response | None:
    """Why this request is refused (DNS rebinding, missing token), or None to serve it."""
    if (request.headers.get("Host") or "").lower() not in allowed_hosts:
        return web.json_response({"error": "unexpected Host header"}, status=421)
    if token:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {token}".encode()):
            return web.json_response(
                {"error": "missing or wrong bearer token ([http] token)"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
    return None


@asynccontextmanager
async def serve_http(
    listen: str,
    manager: SessionManager,
    metrics: Metrics,
    *,
    token: str | None = None,
    platforms: Platforms = _no_platforms,
    stall_after: float = 90.0,
    max_loop_lag: float = 5.0,
) -> AsyncIterator[int]:
    """Serve until the block exits; yields the bound port (useful with port 0)."""
    host, port = split_listen(listen)

    async def healthz(_: web.Request) -> web.Response:
        problems = health_problems(
            platforms(), metrics, stall_after=stall_after, max_loop_lag=max_loop_lag
        )
        body = {"ok": not problems, "version": __version__, "problems": problems}
        return web.json_response(body, status=503 if problems else 200)

    async def metrics_view(_: web.Request) -> web.Response:
        text = render_metrics(manager, metrics, platforms())
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def status_view(_: web.Request) -> web.Response:
        body = await status_document(manager, metrics, platforms())
        return web.Response(body=body, content_type="application/json")

    allowed = [_allowed_hosts(host, port)]  # set again once the port is bound

    @web.middleware
    async def checked(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = refusal(request, allowed[0], token)
        return refused if refused is not None else await handler(request)

    app = web.Application(middlewares=[checked])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/status", status_view)
    runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = int(runner.addresses[0][1]) if runner.addresses else port
    allowed[0] = _allowed_hosts(host, bound)
    try:
        yield bound
    finally:
        await runner.cleanup()
