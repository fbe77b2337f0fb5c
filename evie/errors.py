"""A small error hierarchy whose messages tell the user what to do next.

Interfaces show ``str(error)`` to the person in the chat, so every message is a
sentence a user can act on, never a traceback fragment.
"""

from __future__ import annotations


class EvieError(Exception):
    """Base of every error evie raises on purpose."""


class ConfigError(EvieError):
    """The configuration is invalid; the message lists every problem found."""


class StateError(EvieError):
    """Persistent state could not be read or written."""


class AgentError(EvieError):
    """Something went wrong talking to the pi agent."""


class AgentStartError(AgentError):
    """pi could not be started or did not answer its first probe."""


class AgentCrashed(AgentError):
    """The pi process exited while evie still needed it."""

    def __init__(
        self, message: str, *, returncode: int | None = None, stderr_tail: str = ""
    ) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class AgentRequestError(AgentError):
    """pi answered a command with ``success: false``; the message is pi's own."""


class AgentProtocolError(AgentError):
    """pi answered with a shape evie does not know (a field of the wrong type)."""


class SessionReplaced(EvieError):
    """The session was replaced (``/new``) or closed while this request waited."""


class ShuttingDown(SessionReplaced):
    """evie is stopping and starts no new turn; the message never reached pi."""
