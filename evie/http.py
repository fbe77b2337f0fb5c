"""Optional loopback HTTP endpoint: /healthz, /metrics (Prometheus text), /status (JSON).

The same figures feed ``/status`` in chats; this only renders them. The config
accepts only loopback addresses for it. A request whose ``Host`` is not the
listen address is refused, so a web page cannot read it through DNS rebinding
(a browser sends the attacker's host name); with ``[http] token`` every request
must also carry ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio.lowlevel
import msgspec
from aiohttp import web

from evie import __version__
from evie.config import split_listen
from evie.metrics import Histogram, Metrics
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


def render_metrics(manager: SessionManager, metrics: Metrics) -> str:
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
    listen: str, manager: SessionManager, metrics: Metrics, *, token: str | None = None
) -> AsyncIterator[int]:
    """Serve until the block exits; yields the bound port (useful with port 0)."""
    host, port = split_listen(listen)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True, "version": __version__})

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(
            text=render_metrics(manager, metrics), content_type="text/plain", charset="utf-8"
        )

    async def status_view(_: web.Request) -> web.Response:
        return web.Response(body=await status_body(manager), content_type="application/json")

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
