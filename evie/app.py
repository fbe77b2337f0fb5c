"""Wiring: from a validated Config to a running SessionManager."""

from __future__ import annotations

from evie.agent.launcher import PiLauncher
from evie.config import Config
from evie.sessions.manager import SessionSettings


def build_launcher(config: Config) -> PiLauncher:
    return PiLauncher(
        command=config.pi_command,
        state_dir=config.state.dir,
        agent_dir=config.agent_dir,
        provider=config.agent.provider,
        model=config.agent.model,
        system_prompt=config.agent.system_prompt,
        cwd=config.agent.cwd,
        extra_env=config.agent.env,
        startup_timeout=config.agent.startup_timeout,
    )


def session_settings(config: Config) -> SessionSettings:
    s = config.sessions
    return SessionSettings(
        idle_timeout=s.idle_timeout,
        max_processes=s.max_processes,
        mid_turn=s.mid_turn,
        shutdown_grace=s.shutdown_grace,
    )
