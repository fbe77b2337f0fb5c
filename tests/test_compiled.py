"""The renderer runs compiled (adr/0018), from its current source, and as its source does.

mypyc compiles the modules ``evie.chat.render.compiled`` lists (setup.py reads them
there); a compiled module shadows its ``.py``, so a stale build would test and run old
code (``./dev`` rebuilds when a source changes).
The compiled code must also render exactly what the plain Python source renders: a
machine without a compiler runs that source.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bench.render import KINDS
from evie.chat.render import render
from evie.chat.render.compiled import COMPILED, GROUP, source_path
from evie.chat.render.discord import DiscordFlavor
from evie.chat.render.split import Flavor
from evie.chat.render.telegram import TelegramFlavor
from tests.test_render import markdown_text

ROOT = Path(__file__).resolve().parent.parent

#: the extension that holds the compiled code (mypyc's ``group_name`` + "__mypyc")
SHARED = GROUP + "__mypyc"


@pytest.mark.skipif(bool(os.environ.get("EVIE_PURE")), reason="EVIE_PURE: installed uncompiled")
@pytest.mark.parametrize("name", COMPILED)
def test_each_listed_module_runs_compiled_from_its_current_source(name: str) -> None:
    source = source_path(name)
    module = importlib.import_module(name)
    assert module.__file__ is not None
    assert not module.__file__.endswith(".py"), (
        f"{source} runs uncompiled: ./dev builds it (with a C compiler; EVIE_PURE=1 skips this)"
    )
    # the module's own extension only hands over to the shared library that holds the
    # code of all of them (``evie/compiled__mypyc``), which is relinked on every change
    shared = importlib.import_module(SHARED)
    assert shared.__file__ is not None
    built = Path(shared.__file__).stat().st_mtime
    written = (ROOT / source).stat().st_mtime
    assert built >= written, f"{shared.__file__} is older than {source}: run ./dev to rebuild"


#: loads the modules named in its arguments from their ``.py`` source, whatever is
#: compiled beside them (a program's start, followed by what it does)
_FROM_SOURCE = """
import importlib.abc, importlib.util, json, os, sys
names = set(sys.argv[1:])
class Source(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in names:
            return None
        for entry in path or []:
            file = os.path.join(entry, name.rpartition(".")[2] + ".py")
            if os.path.exists(file):
                return importlib.util.spec_from_file_location(name, file)
        return None
sys.meta_path.insert(0, Source())
"""

#: renders the documents read from stdin
_RENDER = """
from evie.chat.render import render
from evie.chat.render.discord import DiscordFlavor
from evie.chat.render.telegram import TelegramFlavor
for name in names:
    assert sys.modules[name].__file__.endswith(".py"), name
out = []
for text, platform, limit, most in json.load(sys.stdin):
    flavor = (TelegramFlavor if platform == "telegram" else DiscordFlavor)(limit)
    out.append([[c.markup, c.plain] for c in render(text, flavor, most=most)])
json.dump(out, sys.stdout)
"""

#: prints what ``evie doctor`` says of the renderer
_DOCTOR = """
from evie.setup.doctor import renderer
print(json.dumps(renderer()))
"""


def from_source(program: str, stdin: str = "") -> str:
    """What ``program`` prints, run with the compiled modules loaded from their source."""
    done = subprocess.run(
        [sys.executable, "-c", _FROM_SOURCE + program, *COMPILED],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    return done.stdout


Case = tuple[str, str, int, int | None]


def rendered_as_source(cases: list[Case]) -> list[list[list[str]]]:
    result: list[list[list[str]]] = json.loads(from_source(_RENDER, json.dumps(cases)))
    return result


def rendered_here(cases: list[Case]) -> list[list[list[str]]]:
    out = []
    for text, platform, limit, most in cases:
        flavor: Flavor = (TelegramFlavor if platform == "telegram" else DiscordFlavor)(limit)
        out.append([[c.markup, c.plain] for c in render(text, flavor, most=most)])
    return out


case = st.tuples(
    markdown_text,
    st.sampled_from(["telegram", "discord"]),
    st.integers(min_value=8, max_value=600),
    st.one_of(st.none(), st.integers(min_value=0, max_value=6)),
)


def assert_alike(cases: list[Case]) -> None:
    here, source = rendered_here(cases), rendered_as_source(cases)
    for one, compiled, plain in zip(cases, here, source, strict=True):
        assert compiled == plain, one


# each example is a batch (one interpreter started per batch): not shrunk, the first
# case that differs is named instead
@settings(
    max_examples=4,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(cases=st.lists(case, min_size=150, max_size=150))
def test_compiled_and_source_render_random_markdown_alike(cases: list[Case]) -> None:
    assert_alike(cases)


def test_compiled_and_source_render_every_bench_input_alike() -> None:
    cases: list[Case] = [
        (make(20_000), platform, limit, None)
        for make in KINDS.values()
        for platform, limit in (("telegram", 4096), ("discord", 2000), ("telegram", 300))
    ]
    assert_alike(cases)


def test_the_doctor_tells_a_plain_python_renderer_apart_with_its_fix() -> None:
    mark, text = json.loads(from_source(_DOCTOR))
    assert mark == "!"
    assert "plain Python" in text
    assert "C compiler" in text
