"""evie's build: the renderer's hot modules compiled with mypyc (adr/0018).

Everything else is in ``pyproject.toml``. The renderer walks every block of a reply
in Python; compiled, the same source runs about twice as fast. Without a C compiler
(or with ``EVIE_PURE=1``) evie installs as plain Python and works the same, slower.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

#: the modules compiled and their group, named once in the package (``evie doctor`` and
#: the tests read them there too); run alone, as evie's dependencies may not be installed
_LIST = runpy.run_path(str(Path(__file__).parent / "evie/chat/render/compiled.py"))
COMPILED: list[str] = [_LIST["source_path"](module) for module in _LIST["COMPILED"]]
GROUP: str = _LIST["GROUP"]


class BuildOrFallBack(build_ext):
    """Compiles the modules; a machine without a working compiler gets plain Python."""

    def run(self) -> None:
        try:
            super().run()
            # built from the sources as they are now, even when mypyc's C came out the
            # same and nothing was relinked: the test of a current build reads this time
            for extension in self.extensions:
                built = Path(self.get_ext_fullpath(extension.name))
                if built.exists():
                    os.utime(built)
        except Exception as error:  # any build failure falls back to plain Python
            print(
                f"evie: renderer not compiled ({error}); it runs as plain Python", file=sys.stderr
            )
            # an earlier build left in place would shadow the sources it was built from
            for path in COMPILED:
                for built in Path(path).parent.glob(Path(path).stem + ".*.so"):
                    built.unlink()


def extensions() -> list[Extension]:
    if os.environ.get("EVIE_PURE"):
        return []
    try:
        from mypyc.build import mypycify

        # the shared part beside the package (evie/compiled__mypyc.*.so), not at the top
        return mypycify(COMPILED, opt_level="3", debug_level="0", group_name=GROUP)
    except (Exception, SystemExit) as error:  # no mypy, or it refused the sources
        print(f"evie: renderer not compiled ({error!r}); it runs as plain Python", file=sys.stderr)
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildOrFallBack})
