"""Import aiogram with its types, methods and enums loaded (and built) on first use (adr/0016).

aiogram's ``aiogram/types/__init__.py`` imports all of its ~440 type modules
and then calls ``model_rebuild`` on every type with a namespace holding all of
them, which builds every schema at once: 6.2 s of CPU on a busy 2-core machine,
~90,000 more objects for the garbage collector to walk, and ~0.7 s of CPU even
with the builds deferred (pydantic still creates each class and collects its
fields), for the handful of types evie ever sees.

This module stands in for that ``__init__``: ``aiogram.types`` becomes a
package whose names are imported from their own modules when first asked for
(PEP 562 ``__getattr__``; evie's path to its first poll asks for a few dozen).
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

aiogram does not defer its ~190 API method classes; here they are created with
``defer_build=True``. ``aiogram.methods`` is made a package of the same
kind as ``aiogram.types``: a method's module is imported when its name is first
asked for. aiogram's ``Bot`` (``aiogram.client.bot``) names every method and
~150 types in ``from`` imports, but uses them only when one of its methods is
called (the types only in annotations, which are never evaluated): what that
one module asks for while aiogram is imported is a stand-in (:class:`_StandIn`)
that imports the real class the first time it is called or looked at and then
puts it in the stand-in's place. Everything else (aiogram's dispatcher, evie,
a type's shortcut method) gets the real class as before.

``aiogram.enums`` is one too, and ``aiogram`` itself: its ``__init__`` imports the
dispatcher, router, filters and FSM, which evie does not use (it polls on its
own, adr/0007); only ``aiogram.client.bot`` is imported now, and the rest of
aiogram's names (``Dispatcher``, ``F``, ``html``...) when first asked for.

If aiogram's ``__init__`` files do not look as expected (a future release), the
types are imported as aiogram does it, with only the builds deferred, and the
methods as aiogram does it, with their builds deferred.

Import this module before anything from aiogram.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel
from pydantic._internal import _model_construction
from pydantic._internal._model_construction import ModelMetaclass
from pydantic.errors import PydanticUndefinedAnnotation

from evie.platforms.deferred_tls import deferred_tls

PACKAGE = "aiogram.types"
METHODS = "aiogram.methods"
#: the one module that gets stand-ins: it names every method and ~150 types, and uses
#: them only when one of its methods is called
BOT_MODULE = "aiogram.client.bot"
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
    importing: ClassVar[bool] = False  # aiogram itself is being imported: stand-ins


def _read_exports(
    init: Path, *, rebuilt: bool = True
) -> tuple[dict[str, str], tuple[str, ...]] | None:
    """Which module each exported name comes from; None when the file is not as expected
    (``rebuilt``: it must end with aiogram's ``model_rebuild`` loop, as the types' does)."""
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
    if listed is None or (rebuilt and _REBUILD_LOOP not in source):
        return None
    names = tuple(re.findall(r'"(\w+)"', listed.group(1)))
    if not names or not set(names) <= exports.keys():
        return None
    return exports, names


def _install_package(name: str, exports: dict[str, str], names: tuple[str, ...],
                     folder: Path, load: Callable[[str], Any]) -> None:  # fmt: skip
    """``name`` as a package whose names are imported (``load``) when first asked for."""
    spec = importlib.util.spec_from_file_location(
        name, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    assert spec is not None  # a path with a .py suffix always has a spec
    package = importlib.util.module_from_spec(spec)

    def __getattr__(attr: str) -> Any:  # PEP 562
        module = exports.get(attr)
        if module is None:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        if _Lazy.importing and _asked_by() == BOT_MODULE:
            return _StandIn.of(name, attr)
        value = load(f"{name}.{module}")
        value = getattr(value, attr)
        setattr(package, attr, value)
        return value

    package.__getattr__ = __getattr__  # type: ignore[method-assign]
    package.__all__ = list(names)  # type: ignore[attr-defined]
    sys.modules[name] = package


def _asked_by() -> str:
    """The module whose code looked a name up in a lazy package (past importlib's frames)."""
    frame: FrameType | None = sys._getframe(2)  # past this and __getattr__: who looked it up
    while frame is not None and frame.f_globals.get("__name__", "").startswith("importlib"):
        frame = frame.f_back
    return "" if frame is None else str(frame.f_globals.get("__name__", ""))


class _StandIn:
    """A method or type as ``aiogram.client.bot`` holds it until first used.

    Calling it (``SendMessage(...)`` in a ``Bot`` method), looking at it, or an
    ``isinstance`` against it imports the real class, which then replaces the
    stand-in in that module, so later calls go straight to the class.
    """

    __slots__ = ("_name", "_package")
    _made: ClassVar[dict[tuple[str, str], _StandIn]] = {}

    def __init__(self, package: str, name: str) -> None:
        self._package, self._name = package, name

    @classmethod
    def of(cls, package: str, name: str) -> _StandIn:
        made = cls._made.get((package, name))
        if made is None:
            made = cls._made[package, name] = cls(package, name)
        return made

    def real(self) -> Any:
        value = getattr(sys.modules[self._package], self._name)
        bot = sys.modules.get(BOT_MODULE)
        if bot is not None and vars(bot).get(self._name) is self:
            setattr(bot, self._name, value)
        return value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.real()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real(), name)

    def __instancecheck__(self, instance: Any) -> bool:
        return isinstance(instance, self.real())

    def __subclasscheck__(self, subclass: type) -> bool:
        return issubclass(subclass, self.real())

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[Any, ...]:
        return (self.real(),)

    def __repr__(self) -> str:
        return f"<{self._package}.{self._name}, imported on first use>"


def _install_lazy(
    name: str, load: Callable[[str], Any], *, rebuilt: bool = False
) -> tuple[dict[str, str], tuple[str, ...]] | None:
    """aiogram's package ``name`` installed by :func:`_install_package`, from what its
    ``__init__`` exports; None (nothing installed) when that file is not as expected."""
    folder = _aiogram_folder(name.removeprefix("aiogram."))
    read = None if folder is None else _read_exports(folder / "__init__.py", rebuilt=rebuilt)
    if folder is None or read is None:
        return None
    _install_package(name, *read, folder, load)
    return read


def _install_types() -> bool:
    """``aiogram.types`` as a package that imports each name's module on first use."""
    read = _install_lazy(PACKAGE, importlib.import_module, rebuilt=True)
    if read is None:
        return False
    _Lazy.exports, _Lazy.names = read
    return True


def _install_methods() -> bool:
    """``aiogram.methods`` the same way; each module imported with its builds deferred."""
    return _install_lazy(METHODS, _import_method_module) is not None


#: what ``aiogram/__init__.py`` binds: name -> (module, its attribute; None: the module)
_TOP: dict[str, tuple[str, str | None]] = {
    "Bot": ("aiogram.client.bot", "Bot"),
    "Dispatcher": ("aiogram.dispatcher.dispatcher", "Dispatcher"),
    "BaseMiddleware": ("aiogram.dispatcher.middlewares.base", "BaseMiddleware"),
    "Router": ("aiogram.dispatcher.router", "Router"),
    "html": ("aiogram.utils.text_decorations", "html_decoration"),
    "md": ("aiogram.utils.text_decorations", "markdown_decoration"),
    "enums": ("aiogram.enums", None),
    "methods": (METHODS, None),
    "types": (PACKAGE, None),
    "session": ("aiogram.client.session", None),
}
#: and the two objects it makes: name -> (module, class called with no arguments)
_MADE: dict[str, tuple[str, str]] = {
    "F": ("aiogram.utils.magic_filter", "MagicFilter"),
    "flags": ("aiogram.dispatcher.flags", "FlagGenerator"),
}
#: every statement of that ``__init__`` but ``__all__`` (as ``ast.unparse`` writes it)
_TOP_STATEMENTS = frozenset((
    "from aiogram.dispatcher.flags import FlagGenerator",
    "from . import enums, methods, types",
    "from .__meta__ import __api_version__, __version__",
    "from .client import session",
    "from .client.bot import Bot",
    "from .dispatcher.dispatcher import Dispatcher",
    "from .dispatcher.middlewares.base import BaseMiddleware",
    "from .dispatcher.router import Router",
    "from .utils.magic_filter import MagicFilter",
    "from .utils.text_decorations import html_decoration as html",
    "from .utils.text_decorations import markdown_decoration as md",
    "F = MagicFilter()",
    "flags = FlagGenerator()",
))  # fmt: skip
_TOP_ALL = frozenset((*_TOP, *_MADE, "__api_version__", "__version__"))


def _top_as_expected(init: Path) -> bool:
    """Does ``aiogram/__init__.py`` bind exactly :data:`_TOP` and :data:`_MADE`, and do
    nothing else? (Any other release: aiogram's own ``__init__`` is run instead.)"""
    try:
        tree = ast.parse(init.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return False
    for statement in tree.body:
        if ast.unparse(statement) in _TOP_STATEMENTS:
            continue
        if not isinstance(statement, ast.Assign):
            return False
        if [ast.unparse(target) for target in statement.targets] != ["__all__"]:
            return False
        try:
            names = ast.literal_eval(statement.value)
        except ValueError:
            return False
        if set(names) != _TOP_ALL:
            return False
    return True


def _install_aiogram() -> bool:
    """``aiogram`` as a package whose names are imported (or made) when first asked for.

    aiogram's ``__init__`` imports its dispatcher, router, filters and FSM, which
    evie does not use (it runs its own polling loop, adr/0007); only the ``Bot`` is
    imported now, by the caller.
    """
    folder = _aiogram_folder(".")
    if folder is None or not _top_as_expected(folder / "__init__.py"):
        return False
    spec = importlib.util.spec_from_file_location(
        "aiogram", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    assert spec is not None  # a path with a .py suffix always has a spec
    package = importlib.util.module_from_spec(spec)
    sys.modules["aiogram"] = package
    meta = importlib.import_module("aiogram.__meta__")
    package.__version__ = meta.__version__  # type: ignore[attr-defined]
    package.__api_version__ = meta.__api_version__  # type: ignore[attr-defined]
    package.__all__ = sorted(_TOP_ALL)  # type: ignore[attr-defined]

    def __getattr__(attr: str) -> Any:  # PEP 562
        if attr in _TOP:
            module, name = _TOP[attr]
            value = importlib.import_module(module)
            if name is not None:
                value = getattr(value, name)
        elif attr in _MADE:
            module, name = _MADE[attr]
            value = getattr(importlib.import_module(module), name)()
        else:
            raise AttributeError(f"module 'aiogram' has no attribute {attr!r}")
        setattr(package, attr, value)
        return value

    package.__getattr__ = __getattr__  # type: ignore[method-assign]
    return True


def _install_enums() -> bool:
    """``aiogram.enums`` the same way (~40 enum modules; evie's path uses a few)."""
    return _install_lazy("aiogram.enums", importlib.import_module) is not None


def _aiogram_folder(package: str) -> Path | None:
    spec = importlib.util.find_spec("aiogram")  # finds it without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / package


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


def _create_deferred(
    mcs: type[ModelMetaclass],
    cls_name: str,
    bases: tuple[type[Any], ...],
    namespace: dict[str, Any],
    *args: Any,
    **kwargs: Any,
) -> type:
    """pydantic's model metaclass, with ``defer_build`` for aiogram's method classes."""
    if str(namespace.get("__module__", "")).startswith(METHODS + "."):
        namespace["model_config"] = {
            **(namespace.get("model_config") or {}),
            "defer_build": True,
        }
    return _CREATE(mcs, cls_name, bases, namespace, *args, **kwargs)


_CREATE = ModelMetaclass.__new__


def _import_method_module(name: str) -> Any:
    before = ModelMetaclass.__new__
    ModelMetaclass.__new__ = _create_deferred  # type: ignore[method-assign]
    try:
        return importlib.import_module(name)
    finally:
        ModelMetaclass.__new__ = before  # type: ignore[method-assign]


def _import_aiogram_types_lazily() -> None:
    if "aiogram" in sys.modules or PACKAGE in sys.modules:
        return
    with deferred_tls():  # aiohttp's two default TLS contexts: read on first use
        importlib.import_module("aiohttp")
    ModelMetaclass.__new__ = _create_deferred  # type: ignore[method-assign]
    try:
        if _install_types():
            _wrap_complete_model_class()
            _install_methods()  # if it cannot, aiogram imports them (deferred, as here)
            _install_enums()
            _Lazy.importing = True
            try:
                if _install_aiogram():
                    importlib.import_module(BOT_MODULE)  # what evie uses: stand-ins in it
                else:
                    importlib.import_module("aiogram")
            finally:
                _Lazy.importing = False
        else:
            _import_with_builds_deferred()
    finally:
        ModelMetaclass.__new__ = _CREATE  # type: ignore[method-assign]


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
