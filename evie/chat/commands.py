"""Commands and their wording, once for every platform and the terminal.

Chat platforms and the terminal parse a ``/word`` themselves (each has its own
syntax: ``/status@ThisBot`` in groups, Discord slash commands, a bare line in
the terminal) and then call :func:`run_command`, so what a command does and
how its answer reads is written in one place.
"""

from __future__ import annotations

import attrs

from evie.agent.answers import SessionStats
from evie.chat.status import render_status
from evie.sessions.manager import SessionManager


@attrs.frozen
class Command:
    name: str
    summary: str
    #: offered in chat menus (Telegram's setMyCommands, Discord slash commands)
    in_chat: bool = True
    #: offered in the terminal
    in_terminal: bool = True


COMMANDS: tuple[Command, ...] = (
    Command("status", "What the agent is doing right now"),
    Command("stop", "Abort the running turn"),
    Command("new", "Start a fresh session"),
    Command("help", "How to use this bot"),
    Command("quit", "Leave (also Ctrl-D)", in_chat=False),
)

CHAT_COMMANDS: tuple[Command, ...] = tuple(c for c in COMMANDS if c.in_chat)
TERMINAL_COMMANDS: tuple[Command, ...] = tuple(c for c in COMMANDS if c.in_terminal)

INTRO = (
    "Send me a message and I pass it to your pi coding agent; its answer streams back here.\n"
    "Messages sent while it works are queued and answered in turn."
)

REFUSAL = "Sorry, this is a private assistant."
NO_SESSION = "No session yet: send a message to start one."


def help_text(commands: tuple[Command, ...] = CHAT_COMMANDS) -> str:
    return INTRO + "\n\n" + "\n".join(f"/{c.name} — {c.summary}" for c in commands)


def parse_command(text: str, bot_username: str | None = None) -> str | None:
    """``/status`` or ``/status@ThisBot`` → ``status``; anything else → None."""
    if not text.startswith("/"):
        return None
    word = text[1:].split(maxsplit=1)[0] if len(text) > 1 else ""
    name, _, target = word.partition("@")
    if target and bot_username and target.lower() != bot_username.lower():
        return None  # addressed to another bot in the group
    return name.lower() or None


def for_another_bot(text: str, bot_username: str | None) -> bool:
    """``/cmd@OtherBot``: a command addressed to some other bot in the group."""
    if not text.startswith("/"):
        return False
    word = text[1:].split(maxsplit=1)[0] if len(text) > 1 else ""
    _, _, target = word.partition("@")
    return bool(target) and (bot_username is None or target.lower() != bot_username.lower())


def format_stats(stats: SessionStats | None) -> str:
    if stats is None:
        return ""
    parts = [f"tokens in {stats.tokens.input}, out {stats.tokens.output}"]
    if stats.cost:
        parts.append(f"cost ${stats.cost:.4f}")
    usage = stats.contextUsage
    if usage is not None and usage.percent is not None:
        parts.append(f"context {usage.percent:.0f}%")
    return "Usage: " + ", ".join(parts)


async def run_command(
    manager: SessionManager,
    key: str,
    command: str,
    *,
    commands: tuple[Command, ...] = CHAT_COMMANDS,
) -> str:
    """Carry out a command for the session ``key``; the answer, for the platform to post."""
    if command in ("help", "start"):
        return help_text(commands)
    if command == "status":
        status = manager.get_status(key)
        if status is None:
            return NO_SESSION
        text = render_status(status, retiring=manager.retiring_processes())
        usage = format_stats(await manager.session_stats(key, seconds=1.0))
        return f"{text}\n{usage}" if usage else text
    if command == "stop":
        stopped = await manager.abort(key)
        return "Stopping…" if stopped else "Nothing is running."
    if command == "new":
        slot = await manager.new_session(key)
        return f"Started a new session ({slot.session_id})."
    return f"Unknown command /{command}. /help lists what I understand."
