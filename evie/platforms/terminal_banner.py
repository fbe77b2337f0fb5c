"""The lines ``evie chat`` greets with: its own module, printed before the first prompt.

:mod:`evie.platforms.terminal_render` (sanitising regular expressions, the Markdown
blocks) loads beside the prompt, with the chat (adr/0015, start-up).
"""

from __future__ import annotations


def banner(*, model: str, workdir: str) -> str:
    """The first lines of ``evie chat``: what answers, where it works, which keys do what.

    The conversation's own line (:func:`describe_session`) follows once the session
    manager knows it: ``evie chat`` draws its prompt before that (adr/0015)."""
    return (
        f"evie · model {model} · working in {workdir}\n"
        "/help for commands; Alt-Enter for a new line; Ctrl-C stops a reply; Ctrl-D leaves."
    )


def describe_session(session_id: str | None, turns: int | None) -> str:
    """The session's line: "session: new" or "session: resumed, 8 turns (<id>)"."""
    if session_id is None or not turns:
        return "session: new"
    return f"session: resumed, {turns} turn{'s' if turns != 1 else ''} ({session_id})"
