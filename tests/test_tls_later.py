"""asyncio loaded without ssl (``evie chat``'s first prompt) makes TLS connections again once
``attach_tls`` has run: a fresh interpreter, a real loopback server, asyncio's own TLS path."""

from __future__ import annotations

import json
import subprocess
import sys

from evie.platforms.tls_later import ASYNCIO_TLS_MODULES, VERIFIED_PYTHONS
from tests.test_setup import _env

#: hides ssl from asyncio, optionally gives it back, then opens a TLS connection to a loopback
#: server that answers with plain text; prints what that connection raised and the state
_PROGRAM = """
import json, sys
from evie.platforms.tls_later import attach_tls, import_asyncio_without_tls

hidden = import_asyncio_without_tls()
import asyncio, asyncio.base_events
state = {"hidden": hidden, "ssl_loaded": "ssl" in sys.modules,
         "asyncio_ssl": asyncio.base_events.ssl is not None}
if sys.argv[1] == "attach":
    attach_tls()

async def main():
    async def plain(reader, writer):
        writer.write(b"HTTP/1.0 400 not TLS\\r\\n\\r\\n")
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(plain, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await asyncio.open_connection("127.0.0.1", port, ssl=True)
    except Exception as exc:
        import ssl
        return type(exc).__name__, isinstance(exc, (ssl.SSLError, ConnectionError))
    finally:
        server.close()
    return "connected", False

state["raised"], state["tls_error"] = asyncio.run(main())
print(json.dumps(state))
"""


def _run(mode: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM, mode],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_asyncio_speaks_tls_again_once_attached() -> None:
    state = _run("attach")
    assert state["hidden"] is True
    assert state["ssl_loaded"] is False  # asyncio loaded, ssl not
    assert state["asyncio_ssl"] is False
    assert state["tls_error"] is True, state  # a TLS handshake ran, and failed on plain text


def test_without_attaching_asyncio_has_no_tls() -> None:
    """What ``attach_tls`` is for: the same connection without it cannot even try."""
    state = _run("hidden")
    assert state["tls_error"] is False, state
    assert state["raised"] == "RuntimeError"  # "stdlib ssl module not available"


def test_the_modules_it_mends_are_all_that_hold_ssl_in_this_pythons_asyncio() -> None:
    """On the Python running the tests, asyncio (loaded as usual) keeps ``ssl`` in exactly
    the modules ``attach_tls`` mends: a Python that kept it elsewhere would fail here."""
    program = (
        "import asyncio, json, ssl, sys\n"
        "import asyncio.sslproto, asyncio.unix_events\n"
        "print(json.dumps(sorted(n for n, m in list(sys.modules.items())\n"
        "    if n.startswith('asyncio') and getattr(m, 'ssl', None) is ssl)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert sys.version_info[:2] in VERIFIED_PYTHONS
    assert json.loads(done.stdout) == sorted(ASYNCIO_TLS_MODULES)
