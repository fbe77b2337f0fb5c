"""TLS contexts whose certificates are read when first used, not when made (adr/0016 §7).

Reading a certificate store is ~40-50 ms of CPU per context on a small machine,
and ``evie run`` used to do it three times before its first poll: aiohttp builds
two default contexts when ``aiohttp.connector`` is imported (a verifying and a
non-verifying one, used only by a connector without a context of its own, as
discord.py's is) and aiogram's session one from ``certifi`` when it is made.

Inside :func:`deferred_tls` a context made by the standard library's
``ssl.SSLContext`` records its ``load_verify_locations`` /
``set_default_verify_paths`` calls instead of making them and becomes a
:class:`_LoadedOnUse`: the recorded calls are made, once, by :func:`load` or
right before the context's first ``wrap_bio`` / ``wrap_socket`` (asyncio calls
``wrap_bio`` for every TLS connection), so no handshake ever runs without them.
Nothing is dropped: a context that is used has exactly the certificates it had;
one that is never used (aiohttp's, for Telegram alone; aiogram's, for an
``http://`` Bot API) never reads them.
"""

from __future__ import annotations

import ssl
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: the certificate-reading methods of ``ssl.SSLContext`` (inherited from ``_ssl``)
_READS = ("load_verify_locations", "set_default_verify_paths")
_lock = threading.RLock()
#: every context made inside :func:`deferred_tls` whose reads are still to make
_deferred: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()


class _LoadedOnUse(ssl.SSLContext):
    """A context with recorded certificate reads still to make (see :func:`load`)."""

    _evie_reads: list[tuple[str, tuple[Any, ...], dict[str, Any]]]

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        load(self)  # an ssl.SSLContext from here on
        return ssl.SSLContext.wrap_bio(self, *args, **kwargs)

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        load(self)
        return ssl.SSLContext.wrap_socket(self, *args, **kwargs)


def load(context: ssl.SSLContext) -> None:
    """Make the certificate reads recorded for ``context`` (at most once; thread-safe)."""
    if type(context) is not _LoadedOnUse:
        return
    with _lock:
        if type(context) is not _LoadedOnUse:
            return  # another thread loaded it meanwhile
        for name, args, kwargs in context._evie_reads:  # the ssl module's own methods
            getattr(super(ssl.SSLContext, context), name)(*args, **kwargs)
        del context._evie_reads
        context.__class__ = ssl.SSLContext  # type: ignore[assignment]
        _deferred.discard(context)


def load_all() -> None:
    """Make every recorded read now (blocking: from a worker thread)."""
    for context in list(_deferred):
        load(context)


def pending(context: object) -> bool:
    """Whether ``context`` still has certificate reads to make."""
    return type(context) is _LoadedOnUse


def _recorder(name: str) -> Any:
    def record(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        if type(self) is ssl.SSLContext:
            self.__class__ = _LoadedOnUse
            self._evie_reads = []  # type: ignore[attr-defined]
            _deferred.add(self)
        if type(self) is not _LoadedOnUse:  # someone's own subclass: as it was
            getattr(super(ssl.SSLContext, self), name)(*args, **kwargs)
            return
        self._evie_reads.append((name, args, kwargs))

    return record


@contextmanager
def deferred_tls() -> Iterator[None]:
    """Contexts made by ``ssl`` inside this block read their certificates on first use.

    Meant for one import or one constructor on the thread that starts evie; a
    context another thread makes meanwhile is deferred too, which is harmless
    (it loads before its first handshake).
    """
    with _lock:
        own = {name: ssl.SSLContext.__dict__.get(name) for name in _READS}
        for name in _READS:
            setattr(ssl.SSLContext, name, _recorder(name))
    try:
        yield
    finally:
        with _lock:
            for name, previous in own.items():
                if previous is None:
                    delattr(ssl.SSLContext, name)
                else:
                    setattr(ssl.SSLContext, name, previous)
