"""Properties of what the terminal prints: sanitising and block-wise Markdown."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from evie.platforms.terminal_render import (
    MarkdownBlocks,
    PlainStyle,
    RichStyle,
    StreamSanitizer,
    sanitize,
)

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# text with a high share of escape-sequence material
nasty = st.text(
    alphabet=st.sampled_from([*list("ab \n\t[]0;7m?~\\"), "\x1b", "\x07", "\x9b", "\x9d", "\r"]),
    max_size=200,
)


@given(nasty | st.text(max_size=200))
def test_sanitized_text_has_no_control_characters_but_newlines_and_tabs(text: str) -> None:
    clean = sanitize(text)
    assert CONTROL.search(clean) is None
    assert clean.count("\n") <= text.count("\n")
    assert sanitize(clean) == clean  # idempotent


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=200))
def test_ordinary_text_is_untouched(text: str) -> None:
    assert sanitize(text) == text


def pieces(text: str, sizes: list[int]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(text):
        size = sizes[len(out) % len(sizes)]
        out.append(text[i : i + size])
        i += size
    return out


@example("\x9b[", [1])
@example("\x1b[12m ok", [3, 1])
@example("\x1b]0;a\x9b1b\x07 ok", [6, 1])
@given(nasty | st.text(max_size=200), st.lists(st.integers(1, 9), min_size=1, max_size=20))
@settings(max_examples=500)
def test_a_stream_is_made_safe_as_if_it_had_come_whole(text: str, sizes: list[int]) -> None:
    """A sequence cut between two deltas is removed whole: its tail is never printed."""
    stream = StreamSanitizer()
    got = "".join(stream.feed(p) for p in pieces(text, sizes)) + stream.finish()
    assert got == sanitize(text)


def test_an_escape_cut_between_deltas_leaves_nothing_behind() -> None:
    style = PlainStyle()
    out = style.delta("**bold** and \x1b]0") + style.delta(";pwned\x07 safe") + style.flush()
    assert out == "**bold** and  safe"
    rich = RichStyle(80, color=False)
    out = rich.delta("**bold** and \x1b]0") + rich.delta(";pwned\x07 safe") + rich.flush()
    assert "pwned" not in out
    assert "bold and  safe" in out


markdown = st.lists(
    st.sampled_from(["para one", "", "```", "code line", "- item", "  ", "# head", "x ```"]),
    max_size=30,
).map("\n".join)


@given(markdown, st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=20))
def test_blocks_do_not_depend_on_how_the_stream_was_chunked(text: str, sizes: list[int]) -> None:
    whole = MarkdownBlocks()
    expected = whole.feed(text) + whole.finish()
    chunked = MarkdownBlocks()
    got: list[str] = []
    i = 0
    while i < len(text):
        size = sizes[i % len(sizes)]
        got += chunked.feed(text[i : i + size])
        i += size
    got += chunked.finish()
    assert got == expected
    # nothing is lost: every non-blank line is in exactly one block, in order
    lines = [ln for ln in text.split("\n") if ln.strip()]
    assert [ln for b in got for ln in b.split("\n") if ln.strip()] == lines


def test_a_code_block_with_blank_lines_stays_one_block() -> None:
    blocks = MarkdownBlocks()
    out = blocks.feed("intro\n\n```py\na = 1\n\nb = 2\n```\n\nafter")
    assert out == ["intro", "```py\na = 1\n\nb = 2\n```"]
    assert blocks.finish() == ["after"]


def test_code_is_highlighted_and_tool_lines_dimmed() -> None:
    style = RichStyle(60)
    out = style.delta("Here:\n\n```python\ndef f():\n    return 1\n```\n\n") + style.flush()
    assert "def" in out
    assert out.count("\x1b[") > 4  # pygments colours
    assert style.dim("[bash] ls") == "\x1b[2m[bash] ls\x1b[0m"
    plain = RichStyle(60, color=False)
    assert "\x1b" not in plain.delta("**bold** text\n\n") + plain.flush()
