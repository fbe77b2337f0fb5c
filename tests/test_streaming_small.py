"""A short plain reply skips the renderer only where the renderer would give the same.

:func:`evie.chat.streaming.render_reply` answers a short line of words and plain
punctuation without parsing it (adr/0016 §9). For lines of that alphabet (which is
where the shortcut can apply) and for arbitrary text, its chunks equal the
renderer's on every platform.
"""

from __future__ import annotations

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from evie.chat.render import Flavor, render
from evie.chat.render.discord import DiscordFlavor
from evie.chat.render.telegram import TelegramFlavor
from evie.chat.streaming import _PLAIN_LINE, render_reply

FLAVORS: list[Flavor] = [TelegramFlavor(), DiscordFlavor(), TelegramFlavor(40)]
near_plain = st.text(alphabet="abcXYZ019 ,.:;'?!()-w*_`[]<>&#@/\\~|\n", max_size=220)
shortcut_shaped = st.from_regex(_PLAIN_LINE, fullmatch=True)
words = st.lists(st.from_regex(r"[A-Za-z0-9,.:;'?!()-]{1,12}", fullmatch=True), max_size=40)
long_lines = words.map(" ".join)  # up to the shortcut's length and past it


def _check(text: str) -> None:
    for flavor in FLAVORS:
        ours = anyio.run(render_reply, text, flavor)
        assert ours == render(text, flavor), (text, type(flavor).__name__)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(shortcut_shaped, long_lines, near_plain, st.text(max_size=60)))
def test_render_reply_equals_the_renderer(text: str) -> None:
    _check(text)


def test_the_shortcut_is_taken_for_typical_small_replies() -> None:
    too_long_for_40 = "abc def " * 12 + "x"
    for text in ("echo: ping 12", "Done. I'm on it (two files changed).", "www.x", too_long_for_40):
        _check(text)
    assert _PLAIN_LINE.fullmatch("Sure, here it is: three lines changed.")
