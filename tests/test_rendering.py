"""Chunking and Markdown → Telegram HTML, checked against Telegram's own rules (the fake's)."""

from __future__ import annotations

import pytest

from evie.chat.chunking import split_message
from evie.chat.telegram_html import markdown_to_html
from tests.fake_telegram import html_error


def test_short_text_is_one_chunk() -> None:
    assert split_message("hello\n\nworld", 100) == ["hello\n\nworld"]
    assert split_message("\n\n", 100) == []


def test_paragraphs_are_kept_whole_when_possible() -> None:
    paras = [f"p{i} " + "x" * 40 for i in range(10)]
    chunks = split_message("\n\n".join(paras), 100)
    assert all(len(c) <= 100 for c in chunks)
    assert "\n\n".join(chunks) == "\n\n".join(paras)


def test_code_blocks_are_reopened_in_each_piece() -> None:
    code = "```python\n" + "\n".join(f"line_{i} = {i}" for i in range(100)) + "\n```"
    chunks = split_message("Intro\n\n" + code, 300)
    assert all(len(c) <= 300 for c in chunks)
    code_chunks = [c for c in chunks if "line_" in c]
    assert len(code_chunks) > 1
    for chunk in code_chunks:
        assert chunk.startswith("```python\n")
        assert chunk.endswith("\n```")
    body = "".join(c.removeprefix("```python\n").removesuffix("\n```") + "\n" for c in code_chunks)
    assert body == "".join(f"line_{i} = {i}\n" for i in range(100))


def test_a_line_longer_than_a_message_is_cut() -> None:
    chunks = split_message("y" * 1000, 300)
    assert [len(c) for c in chunks] == [300, 300, 300, 100]


def test_limits_apply_to_the_rendered_text() -> None:
    text = "\n".join("<&>" * 20 for _ in range(50))  # each char escapes to 4-5 characters
    chunks = split_message(text, 500, markdown_to_html)
    assert all(len(markdown_to_html(c)) <= 500 for c in chunks)
    assert "\n".join(chunks) == text


@pytest.mark.parametrize(
    ("markdown", "html"),
    [
        ("a < b & c > d", "a &lt; b &amp; c &gt; d"),
        ("**bold** and __bold__", "<b>bold</b> and <b>bold</b>"),
        ("*it* and _it_ but snake_case_name", "<i>it</i> and <i>it</i> but snake_case_name"),
        ("~~gone~~", "<s>gone</s>"),
        ("`a<b>`", "<code>a&lt;b&gt;</code>"),
        ("[x](https://e.com/?a=1&b=2)", '<a href="https://e.com/?a=1&amp;b=2">x</a>'),
        ("## Heading", "<b>Heading</b>"),
        ("> quoted\n> more", "<blockquote>quoted\nmore</blockquote>"),
        ("```\n**not bold** <tag>\n```", "<pre>**not bold** &lt;tag&gt;</pre>"),
        ("2 * 3 * 4", "2 * 3 * 4"),
    ],
)
def test_markdown_to_html(markdown: str, html: str) -> None:
    assert markdown_to_html(markdown) == html
    assert html_error(markdown_to_html(markdown)) is None
