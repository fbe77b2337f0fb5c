"""How evie starts pi for a session: flags, environment and working directory.

The flags follow docs/pi-rpc.md: ``--session <absolute path>`` (never
``--resume``/``--continue``, which prompt on stdin in RPC mode), every
``--no-*`` discovery flag so a stray project file cannot change behaviour, and
``PI_CODING_AGENT_DIR`` so nothing is written under the user's HOME.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import attrs

from evie.agent.process import DEFAULT_MAX_LINE_BYTES, WARMUP_FILE, LaunchSpec
from evie.agent.reaper import MARKER
from evie.agent.sandbox import Bubblewrap
from evie.config import AgentConfig, default_work_root
from evie.errors import AgentStartError

#: what evie mints (``20261125-201259-1a2b3c4d``) and any plain file-name-safe id: never a
#: path, never ``..``, so a session file and work dir stay where evie puts them.
_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")


def is_valid_session_id(session_id: str) -> bool:
    return _SESSION_ID.fullmatch(session_id) is not None


ISOLATION_FLAGS = (
    "--no-extensions",
    "--no-skills",
    "--no-prompt-templates",
    "--no-themes",
    "--no-context-files",
)


#: a pi extension shipped with evie that does pi's first-prompt work (loading the model
#: provider's module, Node's fetch) while pi waits for its first prompt (adr/0016)
WARMUP_EXTENSION = Path(__file__).with_name(WARMUP_FILE)

_AGENT = AgentConfig()  # the defaults of [agent], declared once in evie.config


def missing_cwd(cwd: Path) -> str:
    return (
        f"working directory {cwd} does not exist: create it (mkdir -p {cwd}) or change [agent] cwd"
    )


@attrs.frozen
class PiLauncher:
    command: tuple[str, ...]
    state_dir: Path
    agent_dir: Path
    provider: str | None = None
    model: str | None = None
    system_prompt: str | None = None
    cwd: Path | None = None  # None: a private work dir per session, under work_root
    extra_env: tuple[tuple[str, str], ...] = ()
    startup_timeout: float = _AGENT.startup_timeout
    stop_timeout: float = 3.0  # SIGTERM to SIGKILL (pi itself exits in ~30 ms)
    #: per-session work dirs live outside the state dir, so ``../..`` is not evie's state
    work_root: Path = attrs.field(factory=default_work_root)
    sandbox: Bubblewrap | None = None  # see evie.agent.sandbox
    secret_files: tuple[Path, ...] = ()  # read as empty inside the sandbox (the config file)
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    warm_up: bool = _AGENT.warm_up  # load WARMUP_EXTENSION ([agent] warm_up)

    @property
    def owner(self) -> str:
        """The marker value inherited by pi and its children (see evie.agent.reaper)."""
        return str(self.state_dir.resolve())

    def session_file(self, session_id: str) -> Path:
        return (self.state_dir / "sessions" / f"{session_id}.jsonl").resolve()

    def spec_for(self, session_id: str) -> LaunchSpec:
        if not is_valid_session_id(session_id):
            raise AgentStartError(f"invalid session id {session_id!r}; send /new to start afresh")
        session_file = self.session_file(session_id)
        session_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.agent_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        argv = [*self.command, "--mode", "rpc", "--session", str(session_file), *ISOLATION_FLAGS]
        if self.warm_up:
            argv += ["--extension", str(WARMUP_EXTENSION.resolve())]
        if self.provider:
            argv += ["--provider", self.provider]
        if self.model:
            argv += ["--model", self.model]
        if self.system_prompt:
            argv += ["--system-prompt", self.system_prompt]
        if self.cwd is not None and not self.cwd.is_dir():
            # a typo must not become a fresh empty project
            raise AgentStartError(missing_cwd(self.cwd))
        cwd = self.work_dir(session_id)
        if self.cwd is None:
            cwd.mkdir(parents=True, exist_ok=True, mode=0o700)
        env = {
            "PI_CODING_AGENT_DIR": str(self.agent_dir.resolve()),
            "PI_OFFLINE": "1",
            "PI_TELEMETRY": "0",
            MARKER: self.owner,
            **dict(self.extra_env),
        }
        if self.sandbox is not None:
            argv = list(self._sandboxed(argv, session_file, cwd))
        return LaunchSpec(
            argv=tuple(argv),
            cwd=cwd.resolve(),
            env=env,
            startup_timeout=self.startup_timeout,
            stop_timeout=self.stop_timeout,
            max_line_bytes=self.max_line_bytes,
        )

    def work_dir(self, session_id: str) -> Path:
        """``[agent] cwd``, else the session's own dir under ``work_root``.

        Sessions started before work dirs moved out of the state dir keep their
        old one: pi resumes a session in the directory stored in its file.
        """
        if self.cwd is not None:
            return self.cwd.resolve()
        legacy = self.state_dir / "work" / session_id
        if legacy.is_dir():
            return legacy.resolve()
        return (self.work_root / session_id).resolve()

    def _sandboxed(self, argv: list[str], session_file: Path, cwd: Path) -> tuple[str, ...]:
        """pi inside bubblewrap: evie's state dir is empty but for this session's file,
        the agent dir and a work dir inside it; the config file reads as empty."""
        assert self.sandbox is not None
        if shutil.which(argv[0]) is None:  # inside bwrap it would fail less legibly
            raise AgentStartError(
                f"could not start pi with {argv[0]!r}: not found or not executable. "
                "Check [agent] command in the config (is pi installed? run `npm ci`)."
            )
        state = self.state_dir.resolve()
        session_file.touch(mode=0o600)  # a bind needs its source (pi accepts an empty file)
        cwd.mkdir(parents=True, exist_ok=True, mode=0o700)
        keep = [session_file]
        for path in (self.agent_dir.resolve(), cwd, WARMUP_EXTENSION.resolve()):
            if path.is_relative_to(state):
                keep.append(path)
        return self.sandbox.wrap(
            argv,
            cwd=cwd,
            hide_dirs=[state],
            hide_files=[f.resolve() for f in self.secret_files],
            keep=keep,
        )
