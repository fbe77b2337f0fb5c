"""TLS contexts made inside ``deferred_tls`` read their certificates before their first
handshake, not when made (adr/0016 §7): real aiohttp client and server over loopback TLS,
with a certificate authority made for the test by the ``openssl`` command."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import aiohttp
import anyio
import pytest
from aiohttp import web

from evie.platforms import deferred_tls
from evie.platforms.telegram import LeanSession

pytestmark = pytest.mark.anyio


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own authority) and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


async def _get(context: ssl.SSLContext, server: ssl.SSLContext) -> str:
    async def hello(_request: web.Request) -> web.Response:
        return web.Response(text="hello over TLS")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server)
    await site.start()
    try:
        port = int(runner.addresses[0][1])
        connector = aiohttp.TCPConnector(ssl=context)
        async with (
            aiohttp.ClientSession(connector=connector) as client,
            client.get(f"https://127.0.0.1:{port}/") as response,
        ):
            return await response.text()
    finally:
        await runner.cleanup()


async def test_a_deferred_context_reads_its_authorities_before_its_first_handshake(
    tmp_path: Path,
) -> None:
    cert, key = _certificate(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    with deferred_tls.deferred_tls():
        context = ssl.create_default_context(cafile=cert)  # as aiogram makes its own
    assert deferred_tls.pending(context)
    assert context.cert_store_stats()["x509_ca"] == 0  # nothing read yet
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert await _get(context, server) == "hello over TLS"  # verified against the authority
    assert not deferred_tls.pending(context)
    assert type(context) is ssl.SSLContext
    assert context.cert_store_stats()["x509_ca"] == 1
    # outside the block the standard library is untouched
    assert "load_verify_locations" not in vars(ssl.SSLContext)
    plain = ssl.create_default_context(cafile=cert)
    assert not deferred_tls.pending(plain)
    assert plain.cert_store_stats()["x509_ca"] == 1


async def test_a_deferred_context_still_refuses_an_unknown_authority(tmp_path: Path) -> None:
    """Deferring the reads does not skip verification: with the system's authorities only,
    the test's own certificate is refused, as it would be without deferring."""
    cert, key = _certificate(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    with deferred_tls.deferred_tls():
        context = ssl.create_default_context()  # aiohttp's default one, made the same way
    assert deferred_tls.pending(context)
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await _get(context, server)
    assert not deferred_tls.pending(context)
    assert context.cert_store_stats()["x509_ca"] > 0  # the system's, read at the handshake


async def test_aiograms_session_context_is_read_off_the_loop_when_asked() -> None:
    """evie's Telegram session: certifi's authorities are read by ``load_tls`` (a worker
    thread, for an https Bot API) or at the first handshake, never when it is made."""
    session = LeanSession()
    context = session._connector_init["ssl"]
    assert deferred_tls.pending(context)
    await anyio.to_thread.run_sync(session.load_tls)
    assert not deferred_tls.pending(context)
    assert context.cert_store_stats()["x509_ca"] > 100  # certifi's bundle
    await session.close()
