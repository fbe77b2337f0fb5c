"""Keeping evie's secrets out of reach of pi's tools (adr/0014).

pi's tools run model-written shell commands as evie's user. Without a sandbox
they can read whatever that user can: evie's config file (bot tokens), its
state and every other session, and ``/proc/<evie>/environ``. Two layers:

* :func:`evie.agent.undumpable.make_undumpable` — ``prctl(PR_SET_DUMPABLE, 0)``, as ssh-agent does:
  same-user processes can no longer read evie's ``/proc/<pid>/environ`` or
  memory. Always on; it does nothing against root.
* bubblewrap — pi runs in its own mount and PID namespace: the whole file
  system as before (read-write, network kept) except that evie's state dir is
  an empty tmpfs with only this session's file, the agent dir and the work dir
  bound back in, the config file reads as empty, and ``/proc`` shows only the
  sandbox's own processes. All capabilities are dropped, so even root inside
  cannot unmount what hides the secrets.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import attrs

log = logging.getLogger(__name__)

SandboxMode = Literal["auto", "bwrap", "off"]


@attrs.frozen
class Bubblewrap:
    """How to wrap pi's argv in ``bwrap``."""

    path: str

    def wrap(
        self,
        argv: Iterable[str],
        *,
        cwd: Path,
        hide_dirs: Iterable[Path] = (),
        hide_files: Iterable[Path] = (),
        keep: Iterable[Path] = (),
    ) -> tuple[str, ...]:
        """``bwrap … -- argv``: ``hide_dirs`` become empty, ``hide_files`` read as empty,
        then each of ``keep`` (inside a hidden dir, existing) is bound back in."""
        args = [self.path, *BASE_ARGS]
        for directory in hide_dirs:
            args += ["--tmpfs", str(directory)]
        for file in hide_files:
            if file.exists():
                args += ["--ro-bind", "/dev/null", str(file)]
        for path in keep:
            args += ["--bind", str(path), str(path)]
        args += ["--chdir", str(cwd), "--", *argv]
        return tuple(args)


BASE_ARGS = (
    "--bind", "/", "/",  # the file system as before: the agent works on the user's files
    "--dev", "/dev",
    "--unshare-pid",
    "--proc", "/proc",  # only the sandbox's processes: not evie's environ
    "--die-with-parent",
    "--new-session",  # no TIOCSTI into evie's terminal
    "--cap-drop", "ALL",  # root inside cannot unmount what hides the secrets
)  # fmt: skip


@attrs.frozen
class SandboxChoice:
    """The sandbox in force, and why (for logs and ``evie doctor``)."""

    bwrap: Bubblewrap | None
    note: str

    @property
    def mode(self) -> str:
        return "bwrap" if self.bwrap is not None else "off"


def probe(path: str, timeout: float = 10.0) -> str | None:
    """Run ``true`` in a sandbox like pi's; None when it works, else why not."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="evie-probe-") as tmp:
        hidden = Path(tmp) / "hidden"
        hidden.mkdir()
        (hidden / "secret").write_text("x")
        kept = hidden / "kept"
        kept.mkdir()
        argv = Bubblewrap(path).wrap(
            ["/bin/sh", "-c", f"test ! -e {hidden / 'secret'} && test -d {kept}"],
            cwd=Path(tmp),
            hide_dirs=[hidden],
            keep=[kept],
        )
        try:
            done = subprocess.run(
                argv, capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bwrap could not run: {exc}"
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip().splitlines()
        return f"bwrap failed (exit {done.returncode}): {detail[-1] if detail else 'no output'}"
    return None


def choose(mode: SandboxMode) -> SandboxChoice:
    """Resolve ``[agent] sandbox``: ``auto`` falls back to off (with a note) when
    bubblewrap is missing or does not work here; ``bwrap`` insists (None + note)."""
    if mode == "off":
        return SandboxChoice(None, 'off ([agent] sandbox = "off")')
    path = shutil.which("bwrap")
    if path is None:
        return SandboxChoice(None, "off: bubblewrap is not installed (apt-get install bubblewrap)")
    problem = probe(path)
    if problem is not None:
        return SandboxChoice(None, f"off: {problem}")
    return SandboxChoice(Bubblewrap(path), f"bwrap ({path})")
