"""Import aiogram with its Telegram types loaded and built on first use (adr/0016).

aiogram's ``aiogram/types/__init__.py`` imports all of its ~440 type modules
and then calls ``model_rebuild`` on every type with a namespace holding all of
them, which builds every schema at once: 6.2 s of CPU on a busy 2-core machine,
~90,000 more objects for the garbage collector to walk, and ~0.7 s of CPU even
with the builds deferred (pydantic still creates each class and collects its
fields), for the handful of types evie ever sees.

This module stands in for that ``__init__``: ``aiogram.types`` becomes a
package whose names are imported from their own modules when first asked for
(PEP 562 ``__getattr__``; aiogram's ``Bot`` and methods ask for ~160 of them).
What the ``model_rebuild`` loop was for, the names a type's annotations refer
to (aiogram imports them only for type checkers), :func:`load_all_types` does
later: it imports the rest and adds those names to every type module, where
pydantic resolves forward references when it builds a type, alone or inside
another's schema. evie calls it beside the first ``getUpdates``; until then any
aiogram model whose schema needs a name not loaded yet gets it first: while
this module is active, pydantic's ``complete_model_class`` is wrapped so that
an aiogram model failing on an undefined name calls :func:`load_all_types` and
is built again (the retry pydantic itself makes when a model is used later).
Once everything is loaded the wrapper is removed.

aiogram's ~170 API method classes are not deferred at all; during the import
they are created with ``defer_build=True``. If aiogram's ``__init__`` does not
look as expected (a future release), the types are imported as aiogram does it,
with only the builds deferred.

Import this module before anything from aiogram.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel
from pydantic._internal import _model_construction
from pydantic._internal._model_construction import ModelMetaclass
from pydantic.errors import PydanticUndefinedAnnotation

PACKAGE = "aiogram.types"
#: ``from .module import A, B`` (or parenthesised over several lines) in aiogram/types/__init__.py
_EXPORT = re.compile(r"^from \.(\w+) import \(?([\w\s,]+?)\)?$", re.MULTILINE)
_ALL = re.compile(r"^__all__ = \(([^)]*)\)", re.MULTILINE)
_REBUILD_LOOP = "_entity.model_rebuild(_types_namespace=_types_namespace)"


class _Lazy:
    """What :func:`load_all_types` needs: the exports, and the pydantic hook to remove."""

    exports: ClassVar[dict[str, str]] = {}  # name -> module in aiogram.types
    names: ClassVar[tuple[str, ...]] = ()  # aiogram.types.__all__
    complete: ClassVar[Callable[..., bool] | None] = None  # pydantic's, while wrapped
    loading: ClassVar[bool] = False


def _read_exports(init: Path) -> tuple[dict[str, str], tuple[str, ...]] | None:
    """Which module each exported name comes from; None when the file is not as expected."""
    try:
        source = init.read_text(encoding="utf-8")
    except OSError:
        return None
    exports: dict[str, str] = {}
    for found in _EXPORT.finditer(source):
        for name in re.split(r"[\s,]+", found.group(2)):
            if name:
                exports[name] = found.group(1)
    listed = _ALL.search(source)
    if listed is None or _REBUILD_LOOP not in source:
        return None
    names = tuple(re.findall(r'"(\w+)"', listed.group(1)))
    if not names or not set(names) <= exports.keys():
        return None
    return exports, names


def _install_package() -> bool:
    """``aiogram.types`` as a package that imports each name's module on first use."""
    spec = importlib.util.find_spec("aiogram")  # finds it without importing it
    if spec is None or not spec.submodule_search_locations:
        return False
    folder = Path(next(iter(spec.submodule_search_locations))) / "types"
    read = _read_exports(folder / "__init__.py")
    if read is None:
        return False
    _Lazy.exports, _Lazy.names = read
    package_spec = importlib.util.spec_from_file_location(
        PACKAGE, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    if package_spec is None:
        return False
    package = importlib.util.module_from_spec(package_spec)

    def __getattr__(name: str) -> Any:  # PEP 562
        module = _Lazy.exports.get(name)
        if module is None:
            raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{PACKAGE}.{module}"), name)
        setattr(package, name, value)
        return value

    package.__getattr__ = __getattr__  # type: ignore[method-assign]
    package.__all__ = list(_Lazy.names)  # type: ignore[attr-defined]
    sys.modules[PACKAGE] = package
    return True


def missing_types() -> list[str]:
    """The names of ``aiogram.types`` not imported yet (none once :func:`load_all_types` ran)."""
    package = vars(sys.modules[PACKAGE])
    return [name for name in _Lazy.names if name not in package]


def load_types(limit: int) -> bool:
    """Import up to ``limit`` more types; True once all are in (then :func:`load_all_types`)."""
    missing = missing_types()
    package = sys.modules[PACKAGE]
    for name in missing[:limit]:
        getattr(package, name)
    if len(missing) > limit:
        return False
    load_all_types()
    return True


def load_all_types() -> None:
    """Import every type and give each type module the names its annotations use.

    What aiogram's own ``__init__`` did with its ``model_rebuild`` loop, without the
    builds; afterwards pydantic runs unwrapped. Safe to call any number of times.
    """
    if _Lazy.complete is None or _Lazy.loading:
        return
    _Lazy.loading = True
    try:
        from aiogram.client.default import Default

        package = sys.modules[PACKAGE]
        namespace = {
            "List": list,
            "Optional": Optional,
            "Union": Union,
            "Literal": Literal,
            "Default": Default,
            **{name: getattr(package, name) for name in _Lazy.names},
        }
        for name, module in list(sys.modules.items()):
            if name.startswith(PACKAGE + ".") and module is not None:
                own = vars(module)
                own.update(namespace | own)  # adds the names; the module's own win
        _model_construction.complete_model_class = _Lazy.complete
        _Lazy.complete = None
    finally:
        _Lazy.loading = False


def _wrap_complete_model_class() -> None:
    """Until :func:`load_all_types`: an aiogram model needing a type not loaded loads them."""
    original = _model_construction.complete_model_class
    _Lazy.complete = original

    def complete_model_class(cls: type[BaseModel], *args: Any, **kwargs: Any) -> bool:
        if _Lazy.complete is not None and not _Lazy.loading and _is_aiogram(cls):
            try:
                return original(cls, *args, **{**kwargs, "raise_errors": True})
            except PydanticUndefinedAnnotation:
                load_all_types()  # then build it again, as pydantic would on next use
        return original(cls, *args, **kwargs)

    _model_construction.complete_model_class = complete_model_class


def _is_aiogram(cls: type[Any]) -> bool:
    return str(getattr(cls, "__module__", "")).startswith("aiogram.")


def _import_aiogram_types_lazily() -> None:
    if "aiogram" in sys.modules or PACKAGE in sys.modules:
        return
    create = ModelMetaclass.__new__

    def create_deferred(
        mcs: type[ModelMetaclass],
        cls_name: str,
        bases: tuple[type[Any], ...],
        namespace: dict[str, Any],
        *args: Any,
        **kwargs: Any,
    ) -> type:
        if str(namespace.get("__module__", "")).startswith("aiogram.methods."):
            namespace["model_config"] = {
                **(namespace.get("model_config") or {}),
                "defer_build": True,
            }
        return create(mcs, cls_name, bases, namespace, *args, **kwargs)

    ModelMetaclass.__new__ = create_deferred  # type: ignore[method-assign]
    try:
        if _install_package():
            _wrap_complete_model_class()
            importlib.import_module("aiogram")
        else:
            _import_with_builds_deferred()
    finally:
        ModelMetaclass.__new__ = create  # type: ignore[method-assign]


def _import_with_builds_deferred() -> None:
    """The fallback: aiogram's own ``__init__``, its ``model_rebuild`` calls made lazy."""
    eager = BaseModel.__dict__["model_rebuild"]

    def deferred(
        cls: type[BaseModel],
        *,
        force: bool = False,
        raise_errors: bool = True,
        _parent_namespace_depth: int = 2,
        _types_namespace: Any = None,
    ) -> bool | None:
        if _types_namespace is not None and not force and _is_aiogram(cls):
            # a type built later, or inside another's schema, resolves its forward
            # references in its module: give the module the names aiogram passed here
            module = vars(sys.modules[cls.__module__])
            module.update(_types_namespace | module)  # `setdefault` for each, in C
            return None
        result: bool | None = eager.__func__(
            cls,
            force=force,
            raise_errors=raise_errors,
            _parent_namespace_depth=_parent_namespace_depth + 1,
            _types_namespace=_types_namespace,
        )
        return result

    BaseModel.model_rebuild = classmethod(deferred)  # type: ignore[method-assign,assignment]
    try:
        importlib.import_module(PACKAGE)
    finally:
        BaseModel.model_rebuild = eager  # type: ignore[method-assign]


_import_aiogram_types_lazily()
