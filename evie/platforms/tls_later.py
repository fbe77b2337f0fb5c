"""asyncio loaded without ``ssl`` for ``evie chat``'s first prompt; ``ssl`` given back beside it.

asyncio's ``base_events``, ``selector_events`` and ``sslproto`` import ``ssl`` when they load
(and keep ``None`` where it is missing): ~15 ms of CPU on a small machine, a twentieth of the
way to the first prompt, for a chat that makes no TLS connection before it (adr/0015,
start-up). :func:`import_asyncio_without_tls` loads asyncio with ``ssl`` hidden for that one
import; :func:`attach_tls`, called in a worker thread once the prompt is drawn, imports
``ssl`` and sets it (and what ``sslproto`` derives from it) in those modules, so from then on
asyncio is exactly as if it had loaded ``ssl`` itself.
"""

from __future__ import annotations

import sys

#: asyncio's modules that hold the ``ssl`` module (``None`` when it could not be imported)
ASYNCIO_TLS_MODULES = ("asyncio.base_events", "asyncio.selector_events", "asyncio.sslproto")

#: the Pythons whose asyncio is known to hold ``ssl`` only where :func:`attach_tls` sets it
#: (read in their sources); any other loads asyncio as usual
VERIFIED_PYTHONS = ((3, 11), (3, 12), (3, 13))


def import_asyncio_without_tls() -> bool:
    """Import asyncio with ``ssl`` hidden (True if it was; not when either is loaded
    already, nor on a Python not verified for it). Whoever calls it calls
    :func:`attach_tls` before anything may use TLS."""
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        return False
    if sys.version_info[:2] not in VERIFIED_PYTHONS:
        return False
    sys.modules["ssl"] = None  # type: ignore[assignment]  # `import ssl` raises ImportError
    try:
        import asyncio  # noqa: F401
    finally:
        if sys.modules.get("ssl", 0) is None:
            del sys.modules["ssl"]
    return True


def attach_tls() -> None:
    """Give asyncio the ``ssl`` module where it has ``None`` (blocking: a worker thread)."""
    try:
        import ssl
    except ImportError:  # a Python built without it: asyncio keeps None, as it would have
        return

    for name in ASYNCIO_TLS_MODULES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "ssl", ssl) is None:
            if name == "asyncio.sslproto":  # what it computes from ssl when it loads
                again = (ssl.SSLWantReadError, ssl.SSLSyscallError)
                setattr(module, "SSLAgainErrors", again)  # noqa: B010
            setattr(module, "ssl", ssl)  # noqa: B010
