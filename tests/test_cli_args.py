"""The CLI reads a plain ``evie chat`` without building its argparse parser (start-up,
adr/0015): whatever that shortcut accepts, argparse reads the same way; the rest goes to
argparse."""

from __future__ import annotations

import argparse
import contextlib
import io

from hypothesis import example, given, settings
from hypothesis import strategies as st

from evie.cli import _parser, _plain_chat

#: words a command line is made of: sub-commands, --config in its forms, values (some
#: looking like options or sub-commands), flags of other commands, help
WORDS = st.sampled_from(
    [
        "chat",
        "run",
        "doctor",
        "--config",
        "--config=",
        "--config=a.toml",
        "--config=-x",
        "--conf",
        "a.toml",
        "-x",
        "--",
        "--help",
        "-h",
        "--terminal",
        "",
        "chat=1",
        "--config=chat",
    ]
)


def _argparse(argv: list[str]) -> argparse.Namespace | None:
    """What argparse makes of ``argv``, or None when it rejects it (or prints help)."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            return _parser().parse_args(argv)
        except SystemExit:
            return None


@settings(max_examples=500)
@given(st.lists(WORDS, max_size=5))
@example(["--config", "-x"])
@example(["chat", "chat"])
@example(["--config", "chat"])
def test_the_shortcut_reads_what_argparse_reads(argv: list[str]) -> None:
    plain = _plain_chat(argv)
    if plain is not None:
        assert _argparse(argv) == plain


def test_the_shortcut_takes_the_plain_chat_command_lines() -> None:
    for argv in (
        [],
        ["chat"],
        ["--config", "c.toml"],
        ["--config", "c.toml", "chat"],
        ["chat", "--config", "c.toml"],
        ["--config=c.toml", "chat"],
        ["chat", "--config=c.toml"],
    ):
        plain = _plain_chat(argv)
        assert plain is not None, argv
        assert plain == _argparse(argv)
    for argv in (["run"], ["chat", "--help"], ["--config", "a", "--config", "b"], ["chat", "x"]):
        assert _plain_chat(argv) is None, argv
