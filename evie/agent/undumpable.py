"""``prctl(PR_SET_DUMPABLE, 0)``: the first of the two layers of adr/0014 (see
:mod:`evie.agent.sandbox`). Its own module because every command calls it first, before
anything else is imported: the sandbox module brings attrs, subprocess and shutil with it.
"""

from __future__ import annotations

PR_SET_DUMPABLE = 4


def make_undumpable() -> bool:
    """Make this process non-dumpable (its /proc files become root-only); True on success.

    glibc's libc is opened by its soname, already loaded into the process: looking it up
    with ``ctypes.util.find_library`` imports ~30 ms of modules and runs ``ldconfig -p``
    at every start (adr/0015, start-up); it remains the way when that name is missing.
    """
    import ctypes

    try:
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
        except OSError:  # not glibc (musl…): ask the system where its libc is
            import ctypes.util

            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so", use_errno=True)
        return bool(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False
