"""A reply over the platform's upload limit goes as numbered files that add up to it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evie.chat.reply_file import REPLY_FILE, reply_files, reply_files_off_loop

replies = st.text(alphabet=st.sampled_from("ab \n\n#*é€🔥"), max_size=400)


@settings(max_examples=500, deadline=None)
@given(markdown=replies, limit=st.integers(min_value=4, max_value=120))
def test_the_parts_are_the_reply_each_within_the_limit(markdown: str, limit: int) -> None:
    files = reply_files(markdown, limit, "the reply")
    data = markdown.encode()
    assert b"".join(f.data for f in files) == data
    assert all(f.text.encode() == f.data for f in files)  # the same part, as text
    if len(data) <= limit:
        assert [(f.name, f.caption) for f in files] == [(REPLY_FILE, "the reply")]
        return
    n = len(files)
    assert [f.name for f in files] == [f"reply-{i}-of-{n}.md" for i in range(1, n + 1)]
    assert [f.caption for f in files] == [f"the reply (part {i} of {n})" for i in range(1, n + 1)]
    for f, following in zip(files, [*files[1:], None], strict=True):
        assert 0 < len(f.data) <= limit
        f.data.decode()  # whole characters in every part
        if following is not None and not f.data.endswith(b"\n"):
            # cut inside a line only when no line end was within reach
            assert b"\n" not in f.data
            assert b"\n" not in following.data[: limit - len(f.data)]


def test_a_long_line_is_cut_between_characters_never_inside_one() -> None:
    files = reply_files("🔥" * 10, 6, "c")  # 4 bytes each: 6 bytes hold one
    assert [f.data.decode() for f in files] == ["🔥"] * 10


@pytest.mark.anyio
async def test_off_the_loop_gives_the_same_parts() -> None:
    big = ("line of a long reply\n" * 20_000) + "end"
    assert await reply_files_off_loop(big, 100_000, "c") == reply_files(big, 100_000, "c")
