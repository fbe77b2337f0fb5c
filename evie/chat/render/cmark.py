"""cmark-gfm, the C reference CommonMark parser, called without leaking (adr/0013).

The ``cmarkgfm`` wheel ships cmark-gfm compiled into one shared library but
its Python helpers never free the document tree nor the rendered string. We
load the same library with ctypes and call the handful of functions we need,
freeing both. ctypes releases the GIL during each call, so a parse running in
a worker thread never holds up the event loop.
"""

from __future__ import annotations

import codecs
import ctypes
import threading
from typing import Any

from cmarkgfm import _cmark
from cmarkgfm.cmark import Options

_lib = ctypes.CDLL(_cmark.__file__)


class _Mem(ctypes.Structure):
    _fields_ = (
        ("calloc", ctypes.c_void_p),
        ("realloc", ctypes.c_void_p),
        ("free", ctypes.CFUNCTYPE(None, ctypes.c_void_p)),
    )


def _fn(name: str, restype: object, *argtypes: object) -> Any:
    f = getattr(_lib, name)
    f.restype = restype
    f.argtypes = argtypes
    return f


_vp = ctypes.c_void_p
_ensure_registered = _fn("cmark_gfm_core_extensions_ensure_registered", None)
_find_extension = _fn("cmark_find_syntax_extension", _vp, ctypes.c_char_p)
_parser_new = _fn("cmark_parser_new", _vp, ctypes.c_int)
_attach = _fn("cmark_parser_attach_syntax_extension", ctypes.c_int, _vp, _vp)
_feed = _fn("cmark_parser_feed", None, _vp, ctypes.c_char_p, ctypes.c_size_t)
_finish = _fn("cmark_parser_finish", _vp, _vp)
_extensions_of = _fn("cmark_parser_get_syntax_extensions", _vp, _vp)
_render_html = _fn("cmark_render_html", _vp, _vp, ctypes.c_int, _vp)
_node_free = _fn("cmark_node_free", None, _vp)
_parser_free = _fn("cmark_parser_free", None, _vp)
_default_mem = _fn("cmark_get_default_mem_allocator", ctypes.POINTER(_Mem))
_strlen = ctypes.CDLL(None).strlen
_strlen.restype = ctypes.c_size_t
_strlen.argtypes = (_vp,)
_SLICE = 1 << 18

#: GFM tables, ~~strikethrough~~ (two tildes only: "~5 min" stays text) and bare URLs as links
EXTENSIONS = ("table", "strikethrough", "autolink")
OPTIONS = Options.CMARK_OPT_VALIDATE_UTF8 | Options.CMARK_OPT_STRIKETHROUGH_DOUBLE_TILDE

_lock = threading.Lock()
_extensions: list[int] = []


def _loaded_extensions() -> list[int]:
    with _lock:  # the extension registry is global in cmark-gfm: fill it once
        if not _extensions:
            _ensure_registered()
            for name in EXTENSIONS:
                found = _find_extension(name.encode())
                if not found:
                    raise RuntimeError(f"cmark-gfm has no {name} extension")
                _extensions.append(found)
        return _extensions


def to_html(markdown: list[str]) -> str:
    """CommonMark + GFM tables/strikethrough/autolinks → HTML, in linear time.

    The text comes in slices and the HTML is decoded in slices, so a worker thread
    running this never holds the GIL for long (the parse itself releases it).
    """
    # lone surrogates (from JSON) become "?"
    data = b"".join(piece.encode("utf-8", "replace") for piece in markdown)
    extensions = _loaded_extensions()
    parser = _parser_new(OPTIONS)
    if not parser:
        raise MemoryError("cmark-gfm could not allocate a parser")
    root = None
    try:
        for extension in extensions:
            _attach(parser, extension)
        _feed(parser, data, len(data))
        root = _finish(parser)
        if not root:
            raise MemoryError("cmark-gfm could not parse the text")
        raw = _render_html(root, OPTIONS, _extensions_of(parser))
        try:
            size = _strlen(raw)
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            pieces = [
                decoder.decode(ctypes.string_at(raw + start, min(_SLICE, size - start)))
                for start in range(0, size, _SLICE)
            ]
            pieces.append(decoder.decode(b"", final=True))
            return "".join(pieces)
        finally:
            _default_mem().contents.free(raw)
    finally:
        if root:
            _node_free(root)
        _parser_free(parser)
