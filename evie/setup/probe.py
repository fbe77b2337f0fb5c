"""Probes of pi itself: its version, and one real turn through the configured model.

The test turn runs pi exactly as evie would (same command, agent dir, provider,
model), but with a throw-away state dir, so it never touches a running evie's
sessions or state lock.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import anyio
import anyio.to_thread
import attrs

from evie.agent.events import AssistantMessage, Outcome, TextDelta, TurnFinished
from evie.agent.process import PiProcess
from evie.config import Config
from evie.errors import AgentError
from evie.runtime import build_launcher

TEST_PROMPT = "This is a connection test. Reply with one short sentence."


@attrs.frozen
class TurnResult:
    ok: bool
    model: str | None  # provider/id as pi reports it
    answer: str  # what the model said (ok) or the error (not ok)
    seconds: float


def pi_version(config: Config, timeout: float = 20.0) -> str:
    """``pi --version``; raises OSError / CalledProcessError / TimeoutExpired."""
    out = subprocess.run(
        [*config.pi_command, "--version"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return (
        (out.stdout or out.stderr).strip().splitlines()[-1] if (out.stdout or out.stderr) else "?"
    )


def _model_name(process: PiProcess) -> str | None:
    model = process.state.model
    if model is None or model.id == "unknown":
        return None
    return model.name


async def probe_turn(config: Config, *, seconds: float = 120.0, turn: bool = True) -> TurnResult:
    """Start pi and (unless ``turn`` is False) run one real turn; never raises AgentError."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="evie-probe-") as tmp:
        launcher = attrs.evolve(build_launcher(config), state_dir=Path(tmp))
        if launcher.cwd is None or not launcher.cwd.is_dir():  # (a missing cwd has its own check)
            launcher = attrs.evolve(launcher, cwd=Path(tmp))
        try:
            spec = await anyio.to_thread.run_sync(launcher.spec_for, "evie-probe")
        except (AgentError, OSError) as exc:
            return TurnResult(False, None, str(exc), time.monotonic() - started)
        async with anyio.create_task_group() as tg:
            try:
                process = await PiProcess.spawn(spec, tg)
            except AgentError as exc:
                return TurnResult(False, None, str(exc), time.monotonic() - started)
            try:
                result = await _use(process, turn, seconds, started)
            finally:
                with anyio.CancelScope(shield=True):
                    await process.close()
        return result


async def _use(process: PiProcess, turn: bool, seconds: float, started: float) -> TurnResult:
    model = _model_name(process)
    if not turn:
        return TurnResult(model is not None, model, "", time.monotonic() - started)
    if model is None:
        return TurnResult(False, None, "pi has no model", time.monotonic() - started)
    return await _one_turn(process, model, seconds, started)


async def _one_turn(process: PiProcess, model: str, seconds: float, started: float) -> TurnResult:
    parts: list[str] = []
    finished: TurnFinished | None = None
    turn = process.start_turn(TEST_PROMPT)
    with anyio.move_on_after(seconds):
        async for event in turn:
            if isinstance(event, TextDelta) or (
                isinstance(event, AssistantMessage) and event.text and not parts
            ):
                parts.append(event.text)
            elif isinstance(event, TurnFinished):
                finished = event
    elapsed = time.monotonic() - started
    if finished is None:
        process.abort()
        return TurnResult(False, model, f"no answer within {seconds:g}s", elapsed)
    answer = "".join(parts).strip()
    if finished.outcome is not Outcome.DONE:
        return TurnResult(False, model, finished.error or finished.outcome.value, elapsed)
    if not answer:
        return TurnResult(False, model, "the model answered with no text", elapsed)
    return TurnResult(True, model, answer, elapsed)
