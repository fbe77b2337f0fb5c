"""Serving a fake's aiohttp app on 127.0.0.1 with a port chosen by the OS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web


@asynccontextmanager
async def serve_on_loopback(app: web.Application, port: int = 0) -> AsyncIterator[int]:
    """Start ``app`` on 127.0.0.1 (``port``, or one the OS picks) and yield the bound port."""
    runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def closed_port() -> int:
    """A loopback port nothing listens on (yet): connections to it are refused."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
