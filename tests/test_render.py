"""Markdown → Telegram HTML and Discord Markdown, split into messages: properties and examples.

The properties hold for any input (hypothesis draws Markdown from the constructs LLMs use and
the ones that break renderers): every chunk is valid markup for its platform, within the
platform's limit in the platform's own units, and the visible text of all chunks together is
the visible text of the unsplit rendering.

"Visible text" is what a reader sees: the chunk with its markup removed, read by an oracle
independent of the renderer (html.parser for Telegram; a Discord-Markdown reader below).
Chunks are cut between blocks or at line ends, where the separating whitespace is dropped,
so texts are compared without whitespace.
"""

from __future__ import annotations

import contextlib
import html.parser
import re
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from evie.chat.render import Chunk, Flavor, render
from evie.chat.render.discord import DiscordFlavor
from evie.chat.render.telegram import TelegramFlavor, utf16_units

# -- oracles ------------------------------------------------------------------------

TELEGRAM_TAGS = {"b", "i", "s", "u", "code", "pre", "a", "blockquote"}


class TelegramReader(html.parser.HTMLParser):
    """Telegram's HTML rules: known tags, properly nested, nothing inside code, no nested quotes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in TELEGRAM_TAGS:
            self.errors.append(f"unsupported tag {tag}")
        inside_pre = self.stack[-1:] == ["pre"] and tag == "code"
        if ("code" in self.stack or "pre" in self.stack) and not inside_pre:
            self.errors.append(f"{tag} inside code")
        if tag == "blockquote" and "blockquote" in self.stack:
            self.errors.append("nested blockquote")
        if tag == "a" and not dict(attrs).get("href"):
            self.errors.append("link without href")
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}>")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def telegram_visible(markup: str) -> str:
    reader = TelegramReader()
    reader.feed(markup)
    reader.close()
    assert "&" not in markup.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "").replace(
        "&quot;", ""
    ), f"unescaped & in {markup!r}"
    assert not reader.errors, (reader.errors, markup)
    assert not reader.stack, (f"unclosed {reader.stack}", markup)
    return "".join(reader.text)


_ESCAPABLE = set("\\*_~`|<>#[]-+.)")


def discord_visible(markup: str) -> str:
    """Read Discord Markdown as Discord does for what evie writes; check markers balance."""
    out: list[str] = []
    in_fence = False
    stars = tildes = 0
    fence_quoted = False
    for line in markup.split("\n"):
        if line.startswith("> ") and (not in_fence or fence_quoted):
            line = line[2:]
            quoted = True
        else:
            quoted = False
        if line.startswith("```"):
            in_fence = not in_fence
            fence_quoted = quoted
            continue
        if in_fence:
            out.append(line + "\n")
            continue
        i = 0
        while i < len(line):
            c = line[i]
            if line.startswith(("<http://", "<https://"), i):  # a URL, literal to Discord
                end = line.index(">", i)
                out.append(line[i + 1 : end])
                i = end + 1
            elif c == "\\" and i + 1 < len(line) and line[i + 1] in _ESCAPABLE:
                out.append(line[i + 1])
                i += 2
            elif c == "`":
                fence = "``" if line.startswith("`` ", i) else "`"
                end = line.find(f" {fence}" if fence == "``" else "`", i + len(fence))
                assert end >= 0, f"unclosed code span in {line!r}"
                start = i + len(fence) + (1 if fence == "``" else 0)
                out.append(line[start:end])
                i = end + len(fence) + (1 if fence == "``" else 0)
            elif c == "*":
                stars += 1
                i += 1
            elif c == "~":
                tildes += 1
                i += 1
            elif c == "[":
                close = line.find("](", i)
                assert close >= 0, f"unclosed link in {line!r}"
                i += 1
            elif c == "]" and line.startswith("](", i):
                i = line.index(")", i) + 1
            else:
                assert c not in "<>]", f"unescaped {c!r} in {line!r}"
                assert not line.startswith("||", i), f"unescaped spoiler in {line!r}"
                assert c != "#" or line[:i].strip(), f"unescaped heading in {line!r}"
                out.append(c)
                i += 1
        out.append("\n")
    assert not in_fence, f"unclosed fence in {markup!r}"
    assert stars % 2 == 0, f"unbalanced * in {markup!r}"
    assert tildes % 4 == 0, f"unbalanced ~~ in {markup!r}"
    return "".join(out)


def solid(text: str) -> str:
    """Text without whitespace: cuts drop the whitespace they fall on.

    Zero-width spaces count as whitespace: Discord code gets one between backticks that
    would otherwise end it (a reader sees the same backticks).
    """
    return re.sub(r"[\s\u200b]+", "", text)


def check_chunks(markdown: str, platform: str, limit: int) -> list[Chunk]:
    flavor: Flavor
    whole: Flavor
    if platform == "telegram":
        flavor, whole, visible = TelegramFlavor(limit), TelegramFlavor(10**9), telegram_visible
    else:
        flavor, whole, visible = DiscordFlavor(limit), DiscordFlavor(10**9), discord_visible
    chunks = render(markdown, flavor)
    reference = render(markdown, whole)
    assert len(reference) <= 1
    expected = solid(visible(reference[0].markup)) if reference else ""
    seen = []
    for chunk in chunks:
        if platform == "telegram":
            assert utf16_units(telegram_visible(chunk.markup)) <= limit, chunk
        else:
            assert len(chunk.markup) <= limit, chunk
        shown = visible(chunk.markup)
        assert solid(shown) == solid(chunk.plain), chunk  # the fallback says the same
        assert shown.strip(), "an empty message"
        seen.append(solid(shown))
    assert "".join(seen) == expected
    return chunks


# -- properties ----------------------------------------------------------------------

FRAGMENTS = [
    "**", "*", "_", "__", "~~", "~", "`", "``", "```py\n", "```\n", "~~~\n", "\n", "\n\n",
    "> ", "> > ", "- ", "1. ", "  - ", "# ", "### ", "[a link](http://x.y/a_b?c=1&d=2)",
    "![pic](http://x.y/p.png)", "<div>", "</b>", "&amp;", "&", "<", ">", '"', "\\",
    "|a|b|\n|-|-|\n|1|2|\n", "| a | b |\n|---|:--:|\n| 1 |\n", "~x~", "http://x.y/a_b*c*",
    "  \n", "\\\n", '[t](http://x.y "ti")', "[e]()", "[](http://x.y)", "**",
    "🔥", "é", "日本", "👨‍👩‍👧", "https://example.com/x_y",
    "word", "words and more words", " ", "    ", "\t", "---\n", "1)", "\ue000",
]  # fmt: skip
markdown_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=12)), max_size=60
).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(markdown=markdown_text, limit=st.integers(min_value=8, max_value=400))
def test_telegram_chunks_are_valid_within_limit_and_lose_nothing(markdown: str, limit: int) -> None:
    check_chunks(markdown, "telegram", limit)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    markdown=markdown_text,
    platform=st.sampled_from(["telegram", "discord"]),
    limit=st.integers(min_value=8, max_value=60),
    most=st.integers(min_value=0, max_value=6),
)
def test_a_bounded_render_is_the_start_of_the_whole_one(
    markdown: str, platform: str, limit: int, most: int
) -> None:
    """A reply longer than ``max_chunks`` messages is sent as its first message and a
    file, so the streamer stops rendering it there: what it gets must be the whole
    render's first messages, and "longer than most" must be decided the same way."""
    flavor = TelegramFlavor(limit) if platform == "telegram" else DiscordFlavor(limit * 10)
    whole = render(markdown, flavor)
    bounded = render(markdown, flavor, most=most)
    assert bounded == whole[: len(bounded)]
    assert (len(bounded) > most) == (len(whole) > most)
    if len(whole) <= most:
        assert bounded == whole


#: what a table cell holds: characters to escape on either platform, markup md4c removes,
#: wide characters (UTF-16 pairs for Telegram), a cell wider than a column may be (40)
CELL = [
    "<", ">", "&", "&amp;", '"', "'", "*", "**b**", "_", "_i_", "`c`", "`a<b`", "~", "~~s~~",
    "\\|", "\\", "#", "- ", "1.", "[", "]", "[l](http://e/x)", "http://e.com/y", "🔥",
    "👨‍👩‍👧", "日本", "é", " ", "x", "word", "\ue001", "z" * 45,
]  # fmt: skip
table_cell = st.lists(st.sampled_from(CELL), max_size=5).map("".join)


@st.composite
def long_tables(draw: st.DrawFn) -> str:
    """A table of 100 to 250 rows (laid out lazily above blocks.LAZY_TABLE_ROWS), maybe with
    text around it; every row is numbered so that a row lost or repeated shows, and at
    least 15 characters long, so the table takes more than two messages."""
    columns = draw(st.integers(min_value=1, max_value=4))
    aligns = draw(st.lists(st.sampled_from(["---", ":--", ":-:", "--:"]), min_size=columns,
                           max_size=columns))  # fmt: skip
    head = "| " + " | ".join(f"h{i}" for i in range(columns)) + " |\n|" + "|".join(aligns) + "|\n"
    rows = draw(st.integers(min_value=100, max_value=250))
    cells = draw(st.lists(table_cell, min_size=columns, max_size=3 * columns))
    lines = [
        f"| row {r} of the table {cells[r % len(cells)]} | "
        + " | ".join(cells[(r * 7 + c) % len(cells)] for c in range(1, columns))
        + " |\n"
        for r in range(rows)
    ]
    before = draw(st.sampled_from(["", "intro *text*\n\n", "# title\n\n"]))
    after = draw(st.sampled_from(["", "\nafter the table\n", "\n| x |\n|---|\n| y |\n"]))
    return before + head + "".join(lines) + after


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    markdown=long_tables(),
    platform=st.sampled_from(["telegram", "discord"]),
    limit=st.integers(min_value=100, max_value=600),
    most=st.integers(min_value=0, max_value=8),
)
def test_a_table_far_longer_than_the_bound_renders_as_far_as_asked_exactly(
    markdown: str, platform: str, limit: int, most: int
) -> None:
    """A long table is laid out, escaped and split only as far as the messages asked for
    (issue 12: a huge reply is its first message and a file): its bounded render is the
    start of its whole render, that whole render is the one the table laid out at once
    gives (the token walk, ``whole=False``), and every message is valid and within the
    limit with nothing lost (UTF-16 units for Telegram: the emoji count two)."""
    from evie.chat.render.blocks import parse
    from evie.chat.render.split import pack

    flavor = TelegramFlavor(limit) if platform == "telegram" else DiscordFlavor(limit + 100)
    assert any(block.table is not None for block in parse(markdown)), "not laid out lazily"
    whole = check_chunks(markdown, platform, flavor.limit)
    assert len(whole) > 2, "the table must take several messages"
    assert whole == pack(parse(markdown), flavor, whole=False)
    bounded = render(markdown, flavor, most=most)
    assert bounded == whole[: len(bounded)]
    assert (len(bounded) > most) == (len(whole) > most)
    if len(whole) <= most:
        assert bounded == whole


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# a batch ends exactly a message ahead of a cut, where a line end is to be cut at
@example(cells=["ab"] * 40, columns=1, widths=[0, 0, 0], platform="telegram", limit=8, most=None)
@given(
    cells=st.lists(st.text(st.sampled_from("ab <&`*\\🔥é"), max_size=12), min_size=1, max_size=400),
    columns=st.integers(min_value=1, max_value=3),
    widths=st.lists(st.integers(min_value=0, max_value=12), min_size=3, max_size=3),
    platform=st.sampled_from(["telegram", "discord"]),
    limit=st.integers(min_value=8, max_value=80),
    most=st.sampled_from([None, 0, 1, 5]),
)
def test_a_table_laid_out_in_pieces_is_cut_as_the_whole_text_is(
    cells: list[str], columns: int, widths: list[int], platform: str, limit: int, most: int | None
) -> None:
    """Any table (any cells, any widths) laid out lazily, batch by batch, is cut into exactly
    the messages its text laid out at once is cut into: the cuts read the batches only
    as far as they can look (a message ahead), wherever a batch happens to end."""
    from evie.chat.render.blocks import Block, Table
    from evie.chat.render.split import pack

    cells += [""] * (-len(cells) % columns)
    flavor = TelegramFlavor(limit) if platform == "telegram" else DiscordFlavor(limit + 8)
    lazy = pack([Block([], table=Table(cells, widths[:columns]))], flavor, most=most)
    whole = pack([Block([], table=Table(cells, widths[:columns]))], flavor, whole=False)
    assert lazy == (whole if most is None else whole[: len(lazy)])


@pytest.mark.parametrize("platform", ["telegram", "discord"])
def test_a_huge_table_renders_its_first_messages_as_its_whole_render_does(platform: str) -> None:
    """3,000 rows with escapes and emoji, at the platforms' own limits, bounded as the
    streamer bounds it (``max_chunks`` 8): the same first messages, and more after them."""
    from evie.chat.render.blocks import parse
    from evie.chat.render.split import pack

    row = "| `k<{0}>` | {0} & 🔥 | **b** *i* ~~s~~ \\| _x_ 👨‍👩‍👧 [l](http://e/x) {1} |\n"
    markdown = "| key | value | notes |\n|---|--:|:-:|\n" + "".join(
        row.format(r, "日本" * (r % 30)) for r in range(3000)
    )
    flavor = TelegramFlavor() if platform == "telegram" else DiscordFlavor()
    whole = render(markdown, flavor)
    assert len(whole) > 20
    assert whole == pack(parse(markdown), flavor, whole=False)
    bounded = render(markdown, flavor, most=8)
    assert bounded == whole[:9]
    assert "🔥" in bounded[-1].plain
    assert "k<" in bounded[-1].plain


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(markdown=markdown_text, limit=st.integers(min_value=200, max_value=2000))
def test_discord_chunks_are_valid_within_limit_and_lose_nothing(markdown: str, limit: int) -> None:
    check_chunks(markdown, "discord", limit)


# -- examples ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markdown", "html"),
    [
        ("a < b & c > d", "a &lt; b &amp; c &gt; d"),
        ("**bold** and __bold__", "<b>bold</b> and <b>bold</b>"),
        ("*it* and _it_ but snake_case_name", "<i>it</i> and <i>it</i> but snake_case_name"),
        ("~~gone~~ but ~5 min", "<s>gone</s> but ~5 min"),
        ("~one~ tilde and ~~~ three ~~~", "~one~ tilde and ~~~ three ~~~"),
        ("`a~b~c` and [l](http://e/~u)", '<code>a~b~c</code> and <a href="http://e/~u">l</a>'),
        ("*see http://e.com/a_b*c*", '<i>see <a href="http://e.com/a_b*c">http://e.com/a_b*c</a>*</i>'),
        ("x http://e.com/a_b*c* y", 'x <a href="http://e.com/a_b*c">http://e.com/a_b*c</a> y'),
        ("`a<b>`", "<code>a&lt;b&gt;</code>"),
        ("[x](https://e.com/?a=1&b=2)", '<a href="https://e.com/?a=1&amp;b=2">x</a>'),
        ("## Heading", "<b>Heading</b>"),
        ("> quoted\n> more", "<blockquote>quoted\nmore</blockquote>"),
        ("```\n**not bold** <tag>\n```", "<pre>**not bold** &lt;tag&gt;</pre>"),
        ("```py\nif a < b:\n    pass\n```",
         '<pre><code class="language-py">if a &lt; b:\n    pass</code></pre>'),
        ("2 * 3 * 4", "2 * 3 * 4"),
        ("use <br> and <div>", "use &lt;br&gt; and &lt;div&gt;"),
        ("- a\n- b\n\n1. x", "• a\n• b\n\n1. x"),
        ("**unclosed bold", "**unclosed bold"),
    ],
)  # fmt: skip
def test_telegram_html(markdown: str, html: str) -> None:
    [chunk] = render(markdown, TelegramFlavor())
    assert chunk.markup == html


@pytest.mark.parametrize(
    ("markdown", "discord"),
    [
        ("**bold** and __bold__ *it*", "**bold** and **bold** *it*"),
        ("a_b*c `x*y`", "a\\_b\\*c `x*y`"),
        ("```py\nx = 1\n```", "```py\nx = 1\n```"),
        ("> q\n> r", "> q\n> r"),
        ("see https://e.com/a_b", "see <https://e.com/a_b>"),
        ("\\- not a list", "\\- not a list"),
        ("see https://e.com/~me", "see <https://e.com/~me>"),
    ],
)
def test_discord_markdown(markdown: str, discord: str) -> None:
    [chunk] = render(markdown, DiscordFlavor())
    assert chunk.markup == discord


@pytest.mark.parametrize("platform", ["telegram", "discord"])
def test_a_split_code_block_is_closed_and_reopened_with_its_language(platform: str) -> None:
    code = "```python\n" + "\n".join(f"line_{i} = {i}" for i in range(300)) + "\n```"
    chunks = check_chunks("Intro\n\n" + code, platform, 500)
    code_chunks = [c.markup for c in chunks if "line_" in c.markup]
    assert len(code_chunks) > 3
    opener = '<pre><code class="language-python">' if platform == "telegram" else "```python\n"
    closer = "</code></pre>" if platform == "telegram" else "\n```"
    for markup in code_chunks:
        assert markup.startswith(opener)
        assert markup.endswith(closer)
    lines = "\n".join(m.removeprefix(opener).removesuffix(closer) for m in code_chunks)
    assert lines.split("\n") == [f"line_{i} = {i}" for i in range(300)]  # cut at line ends


def test_telegram_counts_utf16_units_after_entity_parsing() -> None:
    fire = "🔥" * 3000  # 6000 UTF-16 units, 3000 code points
    chunks = render(f"**{fire}**", TelegramFlavor())
    assert len(chunks) == 2
    assert [utf16_units(c.plain) for c in chunks] == [4096, 6000 - 4096]
    tags = "<&>" * 1500  # 4500 visible characters, 15000 characters of HTML
    assert len(render(tags, TelegramFlavor())) == 2


def test_paragraphs_are_kept_whole_when_possible() -> None:
    paras = [f"p{i} " + "x" * 40 for i in range(10)]
    chunks = check_chunks("\n\n".join(paras), "telegram", 100)
    assert [c.plain for c in chunks] == [f"{paras[i]}\n\n{paras[i + 1]}" for i in range(0, 10, 2)]


def test_deeply_nested_lists_render_in_linear_size() -> None:
    """md4c nests lists as deep as the text does: an item opened right after its parent's
    marker shares its line ("- - x" reads "• • x"), and indentation stops growing, so the
    output stays proportional to the input (5,000 levels indented in full: 25 M spaces)."""
    markdown = "- " * 5000 + "deep\n\n- a\n  - b\n" + "  " * 30 + "- c\n"
    chunks = check_chunks(markdown, "telegram", 4096)
    plain = "".join(c.plain for c in chunks)
    assert plain.startswith("• " * 5000 + "deep")
    assert len(plain) < 3 * len(markdown)
    assert check_chunks("- a\n  - b\n    - c\n- d", "discord", 2000)[0].plain == (
        "• a\n  • b\n    • c\n• d"
    )


def test_pathological_inputs_render_whole() -> None:
    for markdown in ("**a " * 5000, "- " * 3000 + "x", "> " * 3000 + "x", "x" * 50_000):
        check_chunks(markdown, "telegram", 4096)
        check_chunks(markdown, "discord", 2000)


@pytest.mark.anyio
async def test_a_very_big_reply_renders_in_the_worker_process_the_same_and_it_ends() -> None:
    """Above PROCESS_MIN the render runs in the spawned worker (bytes back and forth, emoji
    and a lone surrogate included): the chunks are exactly the in-process ones, a reply
    too small for the process still renders, and leaving the pool ends its process."""
    import multiprocessing

    from evie.chat.render import PROCESS_MIN, render_off_loop, render_process

    unit = (
        "## T 🔥\n\nsome **bold** <b>x</b> & `c` \ud800 [l](http://e/?a=1&b=2)\n\n"
        "| a | b |\n|---|---|\n| 1 | é |\n\n"
    )
    text = unit * (PROCESS_MIN // len(unit) + 1)
    flavor = TelegramFlavor()
    async with render_process():
        assert len(multiprocessing.active_children()) == 1
        whole = render(text, flavor)
        assert await render_off_loop(text, flavor) == whole
        bounded = await render_off_loop(text, flavor, most=8)  # as the streamer asks
        assert len(bounded) == 9
        assert bounded == whole[:9]
        small = unit * 100
        assert await render_off_loop(small, DiscordFlavor()) == render(small, DiscordFlavor())
    assert multiprocessing.active_children() == []


@pytest.mark.anyio
async def test_a_render_nobody_waits_for_ends_its_worker_and_the_next_one_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller cancelled mid-render (a cancelled turn) kills the busy worker, so its CPU is free
    at once, and the next big reply renders in a new one, the same as in-process. Text and
    chunks go over a socket: no temporary file, ever. The worker runs at a lower priority
    than the daemon (its loop is scheduled first)."""
    import multiprocessing
    import os
    import tempfile

    from evie.chat.render import PROCESS_MIN, render_off_loop, render_process
    from evie.chat.render.process import WORKER_NICE

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the spawned worker reads it at start
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    unit = "para **b** `c` 🔥\n\n- item\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
    text = unit * (1_000_000 // len(unit))  # long enough to be cancelled mid-render
    flavor = DiscordFlavor()
    async with render_process() as worker:
        first = worker.pid
        assert first is not None
        own = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, first) == min(19, own + WORKER_NICE)
        assert await render_off_loop(text, flavor) == render(text, flavor)
        assert worker.pid == first  # one worker for every render while it lives
        with anyio.move_on_after(0.05) as scope:
            await render_off_loop(text, flavor)
        assert scope.cancelled_caught
        assert worker.pid is None
        with anyio.fail_after(10):
            while any(p.pid == first for p in multiprocessing.active_children()):
                await anyio.sleep(0.01)  # killed, not left rendering what nobody reads
        small = unit * (PROCESS_MIN // len(unit) + 1)
        assert await render_off_loop(small, flavor) == render(small, flavor)
        assert worker.pid not in (None, first)
        assert worker.starts == 2
        assert list(tmp_path.iterdir()) == []
    assert multiprocessing.active_children() == []


@pytest.mark.anyio
async def test_a_killed_worker_is_replaced_and_no_reply_is_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The OOM killer or a stray ``kill -9`` may end the worker, idle or mid-render: the
    render in progress falls back to a thread (the same chunks), and the next big reply
    has a new worker — a daemon that runs for months keeps its stall-free renders."""
    import os
    import signal

    from evie.chat.render import PROCESS_MIN, render_off_loop, render_process

    unit = (
        "## T 🔥\n\nsome **bold** & `c` [l](http://e/?a=1&b=2)\n\n| a | b |\n|---|---|\n| é |\n\n"
    )
    small = unit * (PROCESS_MIN // len(unit) + 1)
    big = unit * (2_000_000 // len(unit))
    flavor = TelegramFlavor()
    async with render_process() as worker:
        idle = worker.pid
        assert idle is not None
        os.kill(idle, signal.SIGINT)  # Ctrl-C in the daemon's terminal: the daemon's to handle
        assert await render_off_loop(small, flavor) == render(small, flavor)
        assert worker.pid == idle
        os.kill(idle, signal.SIGKILL)  # killed while idle
        assert await render_off_loop(small, flavor) == render(small, flavor)
        busy = worker.pid
        assert busy not in (None, idle)

        async def kill_soon() -> None:
            await anyio.sleep(0.05)
            assert busy is not None
            os.kill(busy, signal.SIGKILL)

        caplog.clear()
        async with anyio.create_task_group() as tg:  # killed while rendering (~0.5 s)
            tg.start_soon(kill_soon)
            assert await render_off_loop(big, flavor) == render(big, flavor)
        assert "render worker died" in caplog.text  # mid-render: retried in a new worker
        assert await render_off_loop(small, flavor) == render(small, flavor)
        assert worker.pid not in (None, idle, busy)
        assert worker.starts == 3


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_chaos_every_render_is_whole_whatever_happens_to_the_worker() -> None:
    """A randomized loop: big renders of random sizes while the worker is killed at random
    moments (idle, mid-send, mid-render, mid-answer) and callers give up at random. Every
    render that is waited for returns exactly the in-process chunks, and a worker is
    running after each kill (no render falls to a thread for good)."""
    import os
    import random
    import signal

    from evie.chat.render import PROCESS_MIN, render_off_loop, render_process

    rng = random.Random(20261126)
    units = (
        "## T 🔥\n\nsome **bold** & `c` [l](http://e/?a=1&b=2) \ud800\n\n",
        "- item *x*\n  - nested `y`\n\n| a | b |\n|---|---|\n| 1 | é |\n\n",
        "```py\nx = a < b\n```\n\n> quote **q**\n\n",
    )
    async with render_process() as worker:
        for round_ in range(14):
            unit = rng.choice(units)
            text = unit * (rng.randint(PROCESS_MIN, 6 * PROCESS_MIN) // len(unit))
            flavor = rng.choice((TelegramFlavor(), DiscordFlavor()))
            most = rng.choice((None, 8))
            expected = render(text, flavor, most=most)
            fate = rng.choice(("none", "kill", "kill", "give up"))
            delay = rng.uniform(0, 0.06)
            pid = worker.pid

            async def kill_later(pid: int | None = pid, delay: float = delay) -> None:
                await anyio.sleep(delay)
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

            if fate == "give up":
                with anyio.move_on_after(delay):
                    chunks = await render_off_loop(text, flavor, most=most)
                    assert chunks == expected, round_
                continue
            async with anyio.create_task_group() as tg:
                if fate == "kill":
                    tg.start_soon(kill_later)
                assert await render_off_loop(text, flavor, most=most) == expected, round_
        small = units[0] * (PROCESS_MIN // len(units[0]) + 1)
        assert await render_off_loop(small, TelegramFlavor()) == render(small, TelegramFlavor())
        assert worker.pid is not None


@pytest.mark.anyio
async def test_a_render_under_way_at_shutdown_finishes_in_a_thread_and_no_worker_is_left() -> None:
    """The daemon stops its worker while a reply still renders there: that reply is rendered
    in a thread (whole), no new worker is started for it, and none is left running."""
    import multiprocessing

    from evie.chat.render import render_off_loop, render_process

    unit = "para **b** `c` 🔥\n\n- item\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
    text = unit * (1_500_000 // len(unit))
    flavor = DiscordFlavor()
    expected = render(text, flavor)
    results: list[list[Chunk]] = []
    async with anyio.create_task_group() as tg:
        async with render_process() as worker:

            async def one() -> None:
                results.append(await render_off_loop(text, flavor))

            tg.start_soon(one)
            await anyio.sleep(0.1)  # sent, and rendering
        assert worker.pid is None
    assert results == [expected]
    assert worker.starts == 1
    assert multiprocessing.active_children() == []


@pytest.mark.anyio
async def test_without_a_worker_big_replies_render_in_a_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker that cannot start (here its interpreter exits at once) costs one warning,
    not a reply: big replies render in a thread, and no start is tried again for a while
    (not one failed spawn per reply)."""
    import multiprocessing.spawn

    from evie.chat.render import PROCESS_MIN, render_off_loop, render_process

    text = "some **bold** words 🔥\n\n" * (PROCESS_MIN // 20)
    flavor = TelegramFlavor()
    executable = multiprocessing.spawn.get_executable()
    multiprocessing.spawn.set_executable("/bin/false")
    try:
        async with render_process() as worker:
            assert worker.pid is None
            assert await render_off_loop(text, flavor) == render(text, flavor)
            assert await render_off_loop(text, flavor, most=2) == render(text, flavor, most=2)
            assert worker.starts == 0
    finally:
        multiprocessing.spawn.set_executable(executable)
    assert caplog.text.count("render worker did not start") == 1


def test_the_worker_process_leaves_when_its_daemon_is_killed(tmp_path: Path) -> None:
    """A daemon killed outright cannot shut its pool down: its idle render worker notices
    it was orphaned and exits instead of living on."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import anyio, multiprocessing, sys, time\n"
        "from evie.chat.render import render_process\n"
        "async def main():\n"
        "    async with render_process():\n"
        "        print(multiprocessing.active_children()[0].pid, flush=True)\n"
        "        await anyio.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    anyio.run(main)\n"
    )
    path = tmp_path / "daemon.py"
    path.write_text(script)
    daemon = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert daemon.stdout is not None
        worker = int(daemon.stdout.readline())
        daemon.kill()
        daemon.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:  # gone, or a zombie waiting for whoever adopted it to reap it
                state = Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError):
                break
            if state == "Z":
                break
            time.sleep(0.05)
        else:
            os.kill(worker, signal.SIGKILL)
            pytest.fail("the orphaned render worker is still running")
    finally:
        daemon.kill()
        daemon.wait()


@given(st.text(alphabet=st.sampled_from("\\*_~`|<>#[] a\n🔥"), max_size=80))
def test_discord_escaping_backslashes_each_special_character_exactly_once(text: str) -> None:
    """Escaping runs one str.replace per special character (adr/0013): the result is still
    every special character behind exactly one backslash, as a character-by-character
    definition says (no list markers here: those get theirs from a line-start regex)."""
    from evie.chat.render.discord import escape

    specials = "\\*_~`|<>#[]"
    assert escape(text) == "".join("\\" + c if c in specials else c for c in text)


@given(st.text(alphabet=st.sampled_from("-+1.)2 \t\n\x00a*"), max_size=60))
def test_discord_list_markers_are_escaped_at_each_line_and_text_start(text: str) -> None:
    """The line-start escapes scan for a newline or NUL (adr/0017) instead of trying ``^``
    at every position: the same result as the multiline definition."""
    from evie.chat.render.discord import escape

    expected = text.replace("*", "\\*")
    expected = re.sub(r"(?m)(^|\x00)([ \t]*)([-+])(?=[ \t\x00]|$)", r"\1\2\\\3", expected)
    expected = re.sub(r"(?m)(^|\x00)([ \t]*)(\d+)([.)])", r"\1\2\3\\\4", expected)
    assert escape(text) == expected


#: what paragraphs are made of, densely: the whole conversion's cases (escapes at the
#: start and end of each text between tags, code spans with backticks, bare and long links)
INLINE = [
    "**", "*", "_", "`", "``", "~~", "~", "-", "+", "- ", "1.", "2)", " ", "\n", "a", "🔥",
    "[l](http://e/x)", "[l *i*](http://e/(x) 'ti')", "https://e.com/y", "<", ">", "&", '"',
    "\\", "  \n", "# ", "|", "[", "]", "www.x.com", "a@b.co", "`` ` ``", "&amp;", "\ue001",
    "[x](http://e/" + "z" * 120 + ")",
]  # fmt: skip
inline_text = st.lists(st.sampled_from(INLINE), max_size=40).map("".join)


#: consecutive blocks of every kind converted whole: headings, paragraphs, one-paragraph
#: quotes and code blocks, with escapes at their edges, link titles, labels holding tags,
#: bare URLs, between list items, an empty heading and code block, a two-paragraph quote
RUN_EXAMPLE = (
    "# h *i* -\n\n- x\n\npara `c` [l](http://e/x 'ti') 1.\n\n> q - x\n> y 1. `a\nb`\n\n"
    '```py\na "q" title="t" <b>\n```\n\n## **b**\n\n[**b** x](http://e/y) https://e.com/y\n\n'
    "~x~ ~~y~~ [z](http://e/" + "z" * 120 + ")\n\n- y\n\n```\n```\n\n#\n\n> a\n>\n> b"
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(markdown="**a**- b *c*+\n`x`1. y [l](http://e/x)2) z", limit=400, platform="discord")
@example(markdown="a `` ` `` b ``` c `` d `x`-", limit=400, platform="discord")
@example(markdown="# **h** - 1. <x> &amp; \\ \ue001", limit=400, platform="discord")
@example(markdown="> q *i*\nlazy `c`  \nx\n\n```py\na ``` b\n```", limit=400, platform="discord")
@example(markdown="> q *i*\nlazy `c`\n\n```py\na < b\n```", limit=400, platform="telegram")
@example(markdown=RUN_EXAMPLE, limit=400, platform="telegram")
@example(markdown=RUN_EXAMPLE, limit=400, platform="discord")
@example(markdown=RUN_EXAMPLE, limit=100, platform="discord")
@given(
    markdown=st.one_of(markdown_text, inline_text),
    # blocks over 4× the limit skip the whole conversion (split anyway): limits that keep
    # most generated blocks under it, and small enough to split some
    limit=st.integers(min_value=100, max_value=600),
    platform=st.sampled_from(["telegram", "discord"]),
)
def test_blocks_converted_whole_equal_their_token_rendering(
    markdown: str, limit: int, platform: str
) -> None:
    """Top-level paragraphs, headings and code blocks are converted from md4c's HTML in a
    few whole-string passes (adr/0017); the chunks are exactly those the token walk makes."""
    from evie.chat.render.blocks import parse
    from evie.chat.render.split import pack

    flavor = TelegramFlavor(limit) if platform == "telegram" else DiscordFlavor(limit)
    assert render(markdown, flavor) == pack(parse(markdown), flavor, whole=False)


@pytest.mark.parametrize("platform", ["telegram", "discord"])
def test_bench_inputs_convert_whole_as_the_token_walk_does(platform: str) -> None:
    from bench.render import KINDS
    from evie.chat.render.blocks import parse
    from evie.chat.render.split import pack

    flavor = TelegramFlavor() if platform == "telegram" else DiscordFlavor()
    for make in KINDS.values():
        markdown = make(30_000)
        assert render(markdown, flavor) == pack(parse(markdown), flavor, whole=False)


# The rule the flavours' one-pass checks (``read_tags``, Telegram's loop over the tags)
# implement, written as it was before they folded it into those loops (adr/0017, seventh
# and ninth follow-ups): the reference the property tests below compare them with.

#: a paragraph split into texts and tags, alternating, as the flavours split it before
#: ``split_tags``
TAG_SPLIT = re.compile(r"(<[^>]*>)")


def convertible(html: str, tilde: str) -> bool:
    """Whether a paragraph's HTML converts whole to the same markup as its tokens: no
    image (it becomes a link), no link without address, no empty element (the token walk
    opens elements lazily, so it writes none), no "~" stand-in percent-encoded in a URL,
    and every inline tag closed in order (md4c can leave one open, adr/0017)."""
    from evie.chat.render.blocks import balanced

    if "<" not in html:
        return True
    return plain_tags(html) and balanced(html)


def plain_tags(html: str) -> bool:
    """The first checks of :func:`convertible`: no image, no link without address, no
    empty element, no stand-in percent-encoded in a URL."""
    if "<img" in html or 'href=""' in html or "></" in html:
        return False
    return "%EE%80" not in html  # the stand-ins are U+E000…U+E007


def flat_split(parts: list[str]) -> bool:
    """Whether a paragraph split into texts and tags (alternating) is what ``_FLAT`` takes,
    read tag by tag with the flavours' ``flat_step``; with :func:`plain_tags`, it implies
    :func:`convertible` (a flat paragraph is balanced)."""
    from evie.chat.render.blocks import fixed_tag, flat_step

    opened = ""
    for i in range(1, len(parts), 2):
        tag = parts[i]
        step = flat_step(tag, fixed_tag(tag), opened)
        if step is None:
            return False
        opened = step
    return not opened and "<" not in parts[-1]  # (a "<" no tag starts: only in the last)


INLINE_HTML = [
    "<strong>", "</strong>", "<em>", "</em>", "<del>", "</del>", "<code>", "</code>",
    '<a href="u">', '<a href="u" title="t">', "</a>", "<br>\n", "x", "&lt;", "<abbr>", "</abbr>",
    # what convertible refuses besides unbalanced tags
    '<a href="">', '<a href="%EE%80%80">', '<img src="u" alt="a">', "<br>", ">", '"', "%",
    "EE%80",
]  # fmt: skip


@settings(max_examples=500)
@given(st.lists(st.sampled_from(INLINE_HTML), max_size=16).map("".join))
def test_a_paragraph_converts_whole_only_when_its_inline_tags_are_balanced(html: str) -> None:
    """``convertible`` takes a flat paragraph (each element closed right after its text) in
    one regex; anything else by the stack of open tags. Either way: no empty element, and
    every inline tag closed in order (md4c can leave one open, adr/0017)."""
    stack: list[str] = []
    balanced = True
    for closing, tag in re.findall(r"<(/?)(strong|em|del|code|a)\b", html):
        if not closing:
            stack.append(tag)
        elif not stack or stack.pop() != tag:
            balanced = False
            break
    refused = any(mark in html for mark in ("<img", 'href=""', "></", "%EE%80"))
    expected = "<" not in html or (not refused and balanced and not stack)
    assert convertible(html, "\ue000") == expected


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(markdown="- \n> **")  # an empty list item used to leave "after a bullet" set
@example(markdown=RUN_EXAMPLE)
@given(markdown=st.one_of(markdown_text, inline_text))
def test_a_block_kept_whole_walks_to_the_tokens_the_whole_walk_gives_it(markdown: str) -> None:
    """A block kept as HTML is walked on its own when it must be split (``tokens_of``): what
    came before it in the reply must not change its tokens, so its tokens and separator
    are those the walk over the whole reply gives it."""
    from evie.chat.render.blocks import _PUA, _Builder, parse, tokens_of
    from evie.chat.render.parser import to_html

    if "~" in markdown or any(c in markdown for c in _PUA):
        return  # parse swaps lone tildes before md4c sees the text; the rest is the same
    blocks = list(parse(markdown))
    walked = list(_Builder(_PUA[0], whole=False).feed(to_html([markdown])))
    assert [(tokens_of(b), b.sep) for b in blocks] == [(b.tokens, b.sep) for b in walked]


@settings(max_examples=500)
@given(st.text(alphabet=st.sampled_from('<>/ap1Z ="-\n&'), max_size=30), st.integers(0, 30))
def test_the_walk_finds_each_tag_as_its_regex_does(html: str, pos: int) -> None:
    """The walk reads md4c's tags with ``str.find`` and a loop over the name (adr/0017,
    fourth follow-up) instead of ``_TAG.search``: the same tags, anywhere in any text."""
    from evie.chat.render.blocks import _TAG, _next_tag

    found = _TAG.search(html, pos)
    expected = (found.start(), found.end(), *found.groups()) if found else (-1, -1, "", "", "")
    assert _next_tag(html, pos) == expected


def _known_or_near(known: list[str], letters: str, most: int) -> st.SearchStrategy[str]:
    """Names a classifier must know, and strings of their letters that it must not."""
    return st.one_of(
        st.sampled_from(known), st.text(alphabet=st.sampled_from(letters), max_size=most)
    )


@settings(max_examples=500)
@given(
    _known_or_near(
        [
            *("<strong>", "</strong>", "<em>", "</em>", "<del>", "</del>", "<br>"),
            *("<code>", "</code>", "</a>", "<a>", "<br/>", "<em >", "<EM>", "</stron>"),
        ],
        "<>/emstrongdlb ",
        10,
    )
)
def test_fixed_tags_are_told_apart_as_a_lookup_does(tag: str) -> None:
    """The flavours map md4c's fixed inline tags by ``fixed_tag`` (lengths and compares,
    adr/0017, sixth follow-up) instead of a dict lookup: the same answer for any text."""
    from evie.chat.render.blocks import FIXED_TAGS, fixed_tag

    assert fixed_tag(tag) == (FIXED_TAGS.index(tag) if tag in FIXED_TAGS else -1)


def _tables(most_rows: int) -> st.SearchStrategy[tuple[list[str], list[int]]]:
    """Cells (whitespace of every kind at their ends) and widths of up to ``most_rows`` rows."""
    return st.integers(1, 4).flatmap(
        lambda columns: st.tuples(
            st.lists(
                st.text(alphabet=" \t\x0b\x85\u3000ab🔥|", max_size=6),
                max_size=most_rows * columns,
            ).map(lambda cells: cells[: len(cells) // columns * columns]),
            st.lists(st.integers(0, 8), min_size=columns, max_size=columns),
        )
    )


def _laid_out_by_format_and_regex(cells: list[str], widths: list[int]) -> str:
    """A table laid out as before: every column padded by one format string, then a regex
    strips each line's trailing whitespace; the rule under the header."""
    rows = len(cells) // len(widths)
    line = " | ".join(f"{{:<{w}}}" for w in widths)
    text = re.sub(r"[^\S\n]+$", "", "\n".join([line] * rows).format(*cells), flags=re.M)
    if rows > 1:
        first = text.find("\n")
        text = text[:first] + "\n" + "-+-".join("-" * w for w in widths) + text[first:]
    return text


@settings(max_examples=300)
@given(_tables(8))
def test_a_small_table_is_laid_out_as_the_format_string_does(
    table: tuple[list[str], list[int]],
) -> None:
    """A table of few rows is laid out by a compiled loop (``ljust``, ``rstrip``) instead of
    one format string and a regex: the same text, trailing whitespace of any kind too."""
    from evie.chat.render.blocks import _few_table_lines

    cells, widths = table
    assert _few_table_lines(cells, widths) == _laid_out_by_format_and_regex(cells, widths)


@settings(max_examples=300)
@given(_tables(80))
def test_a_table_is_laid_out_as_the_padded_format_string_and_regex_do(
    table: tuple[list[str], list[int]],
) -> None:
    """Rows are laid out with the last column unpadded and only the lines whose last cell
    is empty or ends in whitespace stripped (adr/0017, seventh follow-up), instead of every
    column padded and a regex over the whole text: the same text, at once and in pieces."""
    from evie.chat.render.blocks import Table, _table_lines

    cells, widths = table
    text = _laid_out_by_format_and_regex(cells, widths)
    assert _table_lines(cells, widths) == text
    if len(cells) // len(widths):
        assert "".join(Table(cells, widths).pieces()) == text


TABLE_LINES = [
    "<table>", "<thead>", "</thead>", "<tbody>", "</tbody>", "<tr>", "</tr>", "<td>", "</td>",
    "<th>", "</th>", '<td align="right">', '<th align="left">', "<td >", "<td", "<thx>",
    "a", "b c", "<code>", ">", "<", "\n", "\n", "\n", "\n",
]  # fmt: skip


@settings(max_examples=1000)
@given(st.lists(st.sampled_from(TABLE_LINES), max_size=40).map("".join), st.integers(0, 8))
def test_table_cells_are_read_as_their_regex_reads_them(html: str, pos: int) -> None:
    """A table's cells are read line by line (adr/0017, seventh follow-up) instead of by
    ``_CELL.findall``: the same cells wherever the loop answers (it leaves any line it does
    not expect to the regex)."""
    from evie.chat.render.blocks import _CELL, _cells

    end = len(html)
    cells = _cells(html, pos, end)
    assert cells is None or cells == _CELL.findall(html, pos, end)
    md4c = (
        "\n<thead>\n<tr>\n<th>a</th>\n</tr>\n</thead>\n<tbody>\n<tr>\n<td>b</td>\n</tr>\n</tbody>\n"
    )
    assert _cells(md4c, 0, len(md4c)) == ["a", "b"]


@settings(max_examples=1000)
@given(st.lists(st.sampled_from([*INLINE_HTML, "<", "<a>", "<em >", "</a >"]), max_size=16))
def test_a_flat_paragraph_is_told_from_its_split_as_the_regex_tells_it(pieces: list[str]) -> None:
    """The flavours tell a flat paragraph from the tags they split anyway (``flat_split``,
    adr/0017, seventh follow-up) instead of ``_FLAT``'s pass: the same answer on md4c's
    tags, never flat where the regex is not, and with ``plain_tags`` exactly the decision
    of ``convertible``."""
    from evie.chat.render.blocks import _FLAT

    html = "".join(pieces)
    flat = flat_split(TAG_SPLIT.split(html))
    if "<em >" in pieces:  # not md4c's: the regex takes attributes on any tag, the split not
        assert not flat or _FLAT.fullmatch(html)
    else:
        assert flat == (_FLAT.fullmatch(html) is not None)
    if "<" in html and plain_tags(html):
        assert (flat or convertible(html, "\ue000")) == convertible(html, "\ue000")


@settings(max_examples=1000)
@given(
    st.lists(st.sampled_from([*INLINE_HTML, "<", ">", "<a>", "</", "<>", "a"]), max_size=16).map(
        "".join
    )
    | st.text(alphabet='<>/a "&\n\ue000')
)
def test_a_paragraph_is_split_into_texts_and_tags_as_the_regex_splits_it(html: str) -> None:
    """The flavours split a paragraph with finds (``split_tags``, adr/0017, ninth
    follow-up) instead of ``TAG_SPLIT.split``: the same pieces on any text."""
    from evie.chat.render.blocks import split_tags

    assert split_tags(html) == TAG_SPLIT.split(html)


def _telegram_whole_before(html: str, tilde: str) -> tuple[str, str] | None:
    """``TelegramFlavor.whole`` of a paragraph before its checks were made in its loop over
    the tags (adr/0017, ninth follow-up): the reference it is tested against."""
    from evie.chat.render.blocks import balanced, unescape

    if "<" not in html or not plain_tags(html):
        return None
    parts = TAG_SPLIT.split(html)
    if not flat_split(parts) and not balanced(html):
        return None
    plain = unescape("".join(parts[0::2]), tilde)
    if not plain:
        return None
    marks = {"<strong>": "<b>", "</strong>": "</b>", "<em>": "<i>", "</em>": "</i>"}
    marks |= {"<del>": "<s>", "</del>": "</s>", "<br>": ""}
    markup = "".join(marks.get(part, part) if i % 2 else part for i, part in enumerate(parts))
    markup = re.sub(r' title="[^"]*"', "", markup).replace("&quot;", '"')
    return markup.replace(tilde, "~"), plain


@settings(max_examples=1000)
@given(
    st.lists(
        st.sampled_from([p for p in INLINE_HTML if p not in (">", '"')] + ["\ue000", "&quot;"]),
        max_size=16,
    ).map("".join)
)
def test_telegram_converts_a_paragraph_as_it_did_before_its_checks_moved_into_its_loop(
    html: str,
) -> None:
    """Telegram reads a paragraph's tags once, checking there what ``plain_tags`` and
    ``flat_split`` checked in passes of their own: the same conversion, and the same
    refusals, on any paragraph of md4c's shape (its text never holds a raw ">" or '"')."""
    if "<" in html:
        assert TelegramFlavor().whole(html, "p", "\ue000") == _telegram_whole_before(html, "\ue000")


@settings(max_examples=1000)
@given(
    st.lists(
        st.sampled_from([p for p in INLINE_HTML if p not in (">", '"')] + ["<a>", "</a >"]),
        max_size=16,
    ).map("".join)
)
def test_a_paragraphs_tags_are_read_in_one_look_as_the_passes_read_them(html: str) -> None:
    """``read_tags`` (adr/0017, ninth follow-up) answers what ``plain_tags`` (but its
    percent-encoded stand-in) and ``flat_split`` answer, on any paragraph of md4c's shape
    (its text never holds a raw ">" or '"')."""
    from evie.chat.render.blocks import read_tags, split_tags

    if "%EE%80" not in html:  # (the flavours look for it in the whole paragraph first)
        parts = split_tags(html)
        expected = -1 if not plain_tags(html) else 1 if flat_split(parts) else 0
        assert read_tags(parts) == expected


CODE_HTML = [
    "<code>", '<code class="language-', "py", '">', '"', "</code>", "\n", "x", "&amp;", "&lt;",
    ">", "<", "\ue000", "c++", " ",
]  # fmt: skip


@settings(max_examples=1000)
@given(st.lists(st.sampled_from(CODE_HTML), max_size=12).map("".join))
def test_a_code_block_is_read_as_its_regex_reads_it(html: str) -> None:
    """A code block's language and text are read with finds and compares (adr/0017,
    seventh follow-up) instead of ``PRE_CODE``'s match: the same on any text."""
    from evie.chat.render.blocks import _LANG, PRE_CODE, code_block, unescape

    found = PRE_CODE.fullmatch(html)
    expected = None
    if found is not None:
        lang = unescape(found.group(1) or "", "\ue000")
        text = unescape(found.group(2), "\ue000").removesuffix("\n")
        expected = (lang if _LANG.fullmatch(lang) else ""), text
    assert code_block(html, "\ue000") == expected


@settings(max_examples=1000)
@given(
    _known_or_near(
        [
            *("p", "h1", "h6", "h7", "h0", "hr", "pre", "ul", "ol", "li", "blockquote", "tr"),
            *("table", "thead", "tbody", "th", "td", "strong", "em", "del", "code", "a"),
            *("img", "br", "ta", "ub", "o", "tablex", "strongx"),
        ],
        "abcdehilmnoqprstuy0169",
        11,
    )
)
def test_tag_names_are_told_apart_as_the_sets_do(name: str) -> None:
    """The walk tells block tags and strong/em/del by ``tag_kind`` (lengths and compares,
    adr/0017, seventh follow-up) instead of looking the fresh name up: the same answer."""
    from evie.chat.render.blocks import _BLOCK_TAGS, tag_kind

    expected = 1 if name in _BLOCK_TAGS else {"strong": 2, "em": 3, "del": 4}.get(name, 0)
    assert tag_kind(name) == expected
