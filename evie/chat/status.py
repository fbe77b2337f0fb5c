"""The words of ``/status``: one rendering shared by every platform and the terminal.

The sessions layer keeps plain facts (:class:`SlotStatus`); how they read to a
person is a chat concern, so it lives here and not beside the slot.
"""

from __future__ import annotations

from evie.sessions.slot import SlotStatus


def render_status(status: SlotStatus, *, retiring: int = 0) -> str:
    """Plain-text status, shared by every interface."""
    lines = [f"Session {status.session_id}: {status.state.value}"]
    if status.turn_elapsed is not None:
        doing = f", running {status.current_tool}" if status.current_tool else ""
        lines.append(f"Turn running for {status.turn_elapsed:.1f}s{doing}")
    if status.retry_attempt is not None:
        attempt, most = status.retry_attempt
        lines.append(f"Retrying after an error (attempt {attempt}/{most}): {status.retry_error}")
    if status.queued:
        lines.append(f"Queued messages: {len(status.queued)}")
    lines.append(
        f"Agent: {'pid ' + str(status.pid) if status.pid else 'not running'}"
        + (f", model {status.model}" if status.model else "")
        + (
            f", last heard from {status.last_event_ago:.0f}s ago"
            if status.last_event_ago is not None
            else ""
        )
    )
    if retiring:
        lines.append(f"Stopping {retiring} earlier pi process{'es' if retiring > 1 else ''}")
    if status.last_outcome is not None:
        tail = f" ({status.last_error})" if status.last_error else ""
        lines.append(f"Last turn: {status.last_outcome.value}{tail}")
    lines.append(f"Turns: {status.turns}; last activity {status.idle_for:.0f}s ago")
    return "\n".join(lines)


def unanswered_line(count: int) -> str:
    if not count:
        return ""
    if count == 1:
        return "📥 Your queued message was not answered; pi sends it along with your next one."
    return (
        f"📥 Your {count} queued messages were not answered; "
        "pi sends them along with your next one."
    )
