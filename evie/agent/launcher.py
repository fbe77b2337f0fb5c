"""How evie starts pi for a session: flags, environment and working directory.

The flags follow shared/docs/pi-rpc.md: ``--session <absolute path>`` (never
``--resume``/``--continue``, which prompt on stdin in RPC mode), every
``--no-*`` discovery flag so a stray project file cannot change behaviour, and
``PI_CODING_AGENT_DIR`` so nothing is written under the user's HOME.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from evie.agent.process import LaunchSpec
from evie.agent.reaper import MARKER
from evie.errors import AgentStartError

ISOLATION_FLAGS = (
    "--no-extensions",
    "--no-skills",
    "--no-prompt-templates",
    "--no-themes",
    "--no-context-files",
)


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
    cwd: Path | None = None  # None: a private work dir per session
    extra_env: tuple[tuple[str, str], ...] = ()
    startup_timeout: float = 30.0
    stop_timeout: float = 3.0

    @property
    def owner(self) -> str:
        """The marker value inherited by pi and its children (see evie.agent.reaper)."""
        return str(self.state_dir.resolve())

    def session_file(self, session_id: str) -> Path:
        return (self.state_dir / "sessions" / f"{session_id}.jsonl").resolve()

    def spec_for(self, session_id: str) -> LaunchSpec:
        session_file = self.session_file(session_id)
        session_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.agent_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        argv = [*self.command, "--mode", "rpc", "--session", str(session_file), *ISOLATION_FLAGS]
        if self.provider:
            argv += ["--provider", self.provider]
        if self.model:
            argv += ["--model", self.model]
        if self.system_prompt:
            argv += ["--system-prompt", self.system_prompt]
        if self.cwd is None:
            cwd = self.state_dir / "work" / session_id
            cwd.mkdir(parents=True, exist_ok=True, mode=0o700)
        elif not self.cwd.is_dir():  # a typo must not become a fresh empty project
            raise AgentStartError(missing_cwd(self.cwd))
        else:
            cwd = self.cwd
        env = {
            "PI_CODING_AGENT_DIR": str(self.agent_dir.resolve()),
            "PI_OFFLINE": "1",
            "PI_TELEMETRY": "0",
            MARKER: self.owner,
            **dict(self.extra_env),
        }
        return LaunchSpec(
            argv=tuple(argv),
            cwd=cwd.resolve(),
            env=env,
            startup_timeout=self.startup_timeout,
            stop_timeout=self.stop_timeout,
        )
