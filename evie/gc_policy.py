"""The garbage collector's policy: paused while evie starts, then frozen and tuned.

Its own module, with nothing but :mod:`gc` and :mod:`os` imported, so ``evie chat`` can
pause the collector before its first prompt (adr/0015) with the same policy ``evie run``
uses, without loading the runtime first.
"""

from __future__ import annotations

import gc
import os

#: gen0 threshold once start-up is over (CPython's default is 700); measured in adr/0016 §3
#: and by `bench telegram_latency` (its `evie_default_gc` and `evie_freeze_only` rows)
GEN0_THRESHOLD = 10_000


def pause_gc() -> bool:
    """Call first in ``evie run`` and ``evie chat``: no collections until :func:`settle_gc`
    (True if paused).

    Start-up allocates ~190,000 objects that live until exit (modules, aiogram's
    classes); the collector walked them again and again while they were being made
    (~200 collections, 0.1 s of CPU before the first poll; for ``evie chat`` ~70 of them,
    ~15 ms before its first prompt, adr/0015). ``settle_gc`` collects
    once, freezes them and turns the collector back on; ``EVIE_GC=default`` keeps
    CPython's policy from the start.
    """
    if os.environ.get("EVIE_GC", "tuned") == "default" or not gc.isenabled():
        return False
    gc.disable()
    return True


def settle_gc() -> None:
    """Call once start-up is done: freeze what start-up built, collect young objects less often.

    With aiogram imported the process tracks ~190,000 objects, and a full collection
    walks them all (150-600 ms on a busy 2-core machine): a pause in whatever reply is
    in flight. Everything alive after start-up (modules, pydantic models, aiogram's
    types) lives until exit anyway, so ``gc.freeze()`` moves it out of the collector's
    sight; later collections only walk what turns allocate. ``EVIE_GC=default`` keeps
    CPython's policy, ``EVIE_GC=freeze`` only freezes (the benchmarks compare all three).
    """
    policy = os.environ.get("EVIE_GC", "tuned")
    if policy == "default":
        return
    gc.collect()
    gc.freeze()
    gc.enable()  # paused by pause_gc() during start-up
    if policy != "freeze":  # "freeze": gc.freeze() alone, for the comparison
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
