"""The renderer's modules that mypyc compiles (adr/0018), named once.

``setup.py`` reads this file on its own (with :mod:`runpy`, before evie's dependencies
may be importable), ``evie doctor`` checks that these modules run compiled, and
``tests/test_compiled.py`` that they run from a current build and render as their
source does. It imports nothing, so that setup.py can run it alone.
"""

#: the compiled modules, in the order mypyc is given them
COMPILED = (
    "evie.chat.render.blocks",
    "evie.chat.render.split",
    "evie.chat.render.telegram",
    "evie.chat.render.discord",
)

#: mypyc's ``group_name``: the code of all of them sits in one shared extension beside
#: the package, ``evie/compiled__mypyc.*.so``, which each module's own extension loads
GROUP = "evie.compiled"


def source_path(module: str) -> str:
    """The ``.py`` file of ``module``, relative to the project's root."""
    return module.replace(".", "/") + ".py"
