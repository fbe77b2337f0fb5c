"""Import aiogram with its Telegram types built on first use, not all at import (adr/0016).

aiogram declares its ~300 types with pydantic's ``defer_build=True`` and then,
at the end of ``aiogram/types/__init__.py``, calls ``model_rebuild`` on every
one of them with a namespace holding all the types, which builds every schema
at once: 6.2 s of CPU on a busy 2-core machine and ~90,000 more objects for the
garbage collector to walk, for the handful of types evie ever sees. During that
one import this module turns those calls into what ``defer_build`` meant: the
names in that namespace are added to each type's module (where pydantic looks
up forward references when it builds a type, alone or inside another's schema;
aiogram imports them there only for type checkers), and pydantic builds each
type the first time it is used. aiogram's ~170 API method classes, which are
not deferred at all, get ``defer_build=True`` as they are created. Nothing else
changes, and only while aiogram is being imported; if aiogram was imported
already, this does nothing.

Import this module before anything from aiogram.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from pydantic import BaseModel
from pydantic._internal._model_construction import ModelMetaclass


def _import_aiogram_types_lazily() -> None:
    if "aiogram.types" in sys.modules:
        return
    eager = BaseModel.__dict__["model_rebuild"]

    def deferred(
        cls: type[BaseModel],
        *,
        force: bool = False,
        raise_errors: bool = True,
        _parent_namespace_depth: int = 2,
        _types_namespace: Any = None,
    ) -> bool | None:
        if _types_namespace is not None and not force and cls.__module__.startswith("aiogram."):
            # a type built later, or inside another's schema, resolves its forward
            # references in its module: give the module the names aiogram passed here
            # (`setdefault` for each name, in C: the module's own names win)
            module = vars(sys.modules[cls.__module__])
            module.update(_types_namespace | module)
            return None
        result: bool | None = eager.__func__(
            cls,
            force=force,
            raise_errors=raise_errors,
            _parent_namespace_depth=_parent_namespace_depth + 1,
            _types_namespace=_types_namespace,
        )
        return result

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

    BaseModel.model_rebuild = classmethod(deferred)  # type: ignore[method-assign,assignment]
    ModelMetaclass.__new__ = create_deferred  # type: ignore[method-assign]
    try:
        importlib.import_module("aiogram.types")
    finally:
        BaseModel.model_rebuild = eager  # type: ignore[method-assign]
        ModelMetaclass.__new__ = create  # type: ignore[method-assign]


_import_aiogram_types_lazily()
