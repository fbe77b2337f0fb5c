"""The shutdown timeline of ``evie run``: one owner, every step bounded, none sleeps for nothing.

1. intake stops on every platform, and the manager starts no new turn;
2. running turns get up to ``shutdown_grace`` seconds to finish; the wait ends
   as soon as the last one has;
3. what is still running is aborted; each of those chats is told "Stopped."
   by its own turn;
4. up to ``abort_grace`` seconds for the aborts to land (again ending as soon
   as they have);
5. every pi process is stopped, with its tool children; a turn whose pi
   ignored the abort ends as interrupted, and its chat is told that;
6. the platforms get up to ``delivery_grace`` seconds to post those last lines
   and return (:class:`~evie.platforms.contract.Platform` ``run`` returns once
   its handlers are done and its courier has drained the outbox, for a bounded
   time of its own); whatever is still delivering then is cut short — what is
   left in the outbox stays on disk and goes out at the next start (adr/0012).

The runtime flushes state as it closes, right after. The SessionManager only
offers the primitives (``stop_accepting``, ``wait_for_turns``, ``abort_all``,
``close_all``); platforms only stop intake and return; the daemon decides when
the timeline starts (first SIGTERM/SIGINT, or a platform that ended, such as the
terminal at end of input).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
import attrs

from evie.platforms.contract import Platform
from evie.sessions.manager import SessionManager

log = logging.getLogger(__name__)


@attrs.frozen
class Grace:
    """How long each waiting step of the timeline may take at most.

    No defaults here: the first two are ``[sessions]`` settings, declared (with
    their defaults) once in :mod:`evie.config`.
    """

    shutdown: float  # [sessions] shutdown_grace: running turns finish
    abort: float  # [sessions] abort_grace: aborted turns wind down
    delivery: float  # platforms post the last lines and return


async def shut_down(
    manager: SessionManager,
    platforms: Sequence[Platform],
    grace: Grace,
    platforms_returned: anyio.Event,
) -> bool:
    """Run steps 1 to 6; True when every platform returned in time (False: cut them short)."""
    for platform in platforms:
        await platform.stop_intake()
    manager.stop_accepting()
    running = manager.running()
    if running:
        log.info(
            "waiting up to %gs for %d running turn(s): %s",
            grace.shutdown,
            len(running),
            ", ".join(running),
        )
    if not await manager.wait_for_turns(grace.shutdown):
        log.warning("grace period over: aborting %d running turn(s)", manager.abort_all())
        if not await manager.wait_for_turns(grace.abort):
            log.warning(
                "pi did not stop within %gs of the abort (%s); stopping it",
                grace.abort,
                ", ".join(manager.running()),
            )
    await manager.close_all()
    with anyio.move_on_after(grace.delivery):
        await platforms_returned.wait()
        return True
    log.warning("platforms still delivering after %gs; cutting them short", grace.delivery)
    return False
