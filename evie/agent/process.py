"""One ``pi --mode rpc`` process: spawn, drain, correlate, shut down.

Four tasks per process, owned by the caller's task group:

* the stdout pump reads continuously (a reader callback of the event loop, which
  dispatches each chunk at once and never awaits), so a slow chat platform can
  never back pressure pi into ``ENOBUFS``;
* the stdin pump writes what is queued, so commands from several tasks never
  interleave on the pipe and the reader can queue replies without blocking; a
  record sent while nothing is queued and the pipe's buffer is empty is written
  at once instead, without waking the pump (adr/0016 §10) — the order is the same;
* the stderr pump keeps a tail for error messages;
* the exit watcher stops both readers a bounded time after pi's process exited, when
  something pi left behind still holds its output open (adr/0004).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from subprocess import PIPE
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import attrs

from evie.agent import procfs
from evie.agent import protocol as p
from evie.agent.answers import Answer, PiState, SwitchResult, decode_answer
from evie.agent.events import Outcome
from evie.agent.turn import Turn
from evie.errors import (
    AgentCrashed,
    AgentError,
    AgentProtocolError,
    AgentRequestError,
    AgentStartError,
)
from evie.metrics import Metrics

log = logging.getLogger(__name__)

#: extension dialogs that block the turn until answered; evie has no UI for them.
DIALOG_METHODS = frozenset({"select", "confirm", "input", "editor"})

Callback = Callable[[p.Response | None], None]
PRIVATE_ENV_PREFIX = "EVIE_"  # EVIE_TELEGRAM_TOKEN, EVIE_DISCORD_TOKEN, EVIE_CONFIG …
#: pi's longest line is ~3.05x the reply (measured: a 1 MB reply has a 3.05 MB
#: ``message_update``); 32 MiB keeps every line of a 10 MB reply. See adr/0014.
DEFAULT_MAX_LINE_BYTES = 32 * 1024 * 1024
#: the pi extension evie ships (evie.agent.launcher loads it; adr/0016 part 8)
WARMUP_FILE = "pi_warmup.mjs"
#: one read of pi's stdout per readable event (asyncio's pipe transport reads as much)
READ_BYTES = 256 * 1024
#: records that must not be lost to the cap: a stand-in is dispatched instead
_STAND_INS = {"agent_end": b'{"type":"agent_end"}'}


@attrs.frozen
class LaunchSpec:
    """Everything needed to start one pi process."""

    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]
    startup_timeout: float
    stop_timeout: float
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES


def _asyncio_writer(stream: object) -> asyncio.StreamWriter | None:
    """The ``asyncio.StreamWriter`` anyio's process stdin wraps (its asyncio backend,
    the one evie runs on), or None: then every record goes through the pump."""
    writer = getattr(stream, "_stream", None)
    return writer if isinstance(writer, asyncio.StreamWriter) else None


@attrs.define(eq=False)
class _Waiter:
    event: anyio.Event = attrs.field(factory=anyio.Event)
    response: p.Response | None = None

    def __call__(self, response: p.Response | None) -> None:
        self.response = response
        self.event.set()


#: how long pi's output may go on after its process exited (its last lines are in the
#: pipe already: this is for a pipe that something left behind holds open)
EXIT_DRAIN_S = 2.0


class PiProcess:
    """A live pi process. Create with :meth:`spawn`; always :meth:`close`."""

    def __init__(
        self,
        proc: anyio.abc.Process,
        spec: LaunchSpec,
        metrics: Metrics | None = None,
        *,
        stdout_fd: int,
    ) -> None:
        self._proc = proc
        self._stdout_fd = stdout_fd  # non-blocking; closed by the stdout pump
        self._metrics = metrics
        self.spec = spec
        self.pid = proc.pid
        self.turn: Turn | None = None
        self.returncode: int | None = None
        self.exited = anyio.Event()
        self.protocol_errors = 0
        self.lines_dropped = 0  # over [agent] max_line_bytes: skipped, never buffered
        self.last_output_at = time.monotonic()  # when pi last wrote to stdout
        self.state = PiState()  # as answered to the start-up get_state
        self._pending: dict[str, Callback] = {}
        self._ids = itertools.count(1)
        #: records for the stdin pump, in order (a deque and an event, as the turn's own
        #: EventQueue: a memory stream cost the pump a loop iteration more per record)
        self._to_stdin: deque[bytes] = deque()
        self._stdin_wakeup = anyio.Event()
        self._stdin_open = True  # False once pi exited or its stdin failed: writes refused
        #: the asyncio writer under anyio's stdin stream, for writes that need no pump
        self._stdin_writer = _asyncio_writer(proc.stdin)
        self._pump_sending = False  # the pump holds records it has not handed to asyncio yet
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._closing = False
        self._stderr_done = anyio.Event()
        #: owned by the stdout pump; cancelled by :meth:`_watch_exit` when pi's process is
        #: gone but its stdout never ends (something pi left behind still holds the pipe)
        self._stdout_scope = anyio.CancelScope()
        self._stderr_scope = anyio.CancelScope()  # the same, for stderr

    # -- lifecycle ------------------------------------------------------------

    @classmethod
    async def spawn(
        cls, spec: LaunchSpec, task_group: anyio.abc.TaskGroup, *, metrics: Metrics | None = None
    ) -> PiProcess:
        """Start pi and wait until it answers ``get_state`` (pi has no ready event).

        pi gets its own session (``setsid``): a Ctrl-C on evie's terminal goes to
        the terminal's foreground process group and so never reaches pi; evie
        decides what a Ctrl-C means and stops pi's whole group itself.
        """
        await anyio.to_thread.run_sync(lambda: spec.cwd.mkdir(parents=True, exist_ok=True))
        # evie's own secrets (bot tokens) never reach pi, whose tools run model-written code
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(PRIVATE_ENV_PREFIX)}
        env = {**inherited, **spec.env}
        # pi's stdout is a pipe of our own, read by a reader callback (see _pump_stdout)
        stdout_fd, child_stdout = os.pipe()
        os.set_blocking(stdout_fd, False)
        try:
            # a spawn cut short by a cancellation would leave a process nobody owns
            with anyio.CancelScope(shield=True):
                proc = await anyio.open_process(
                    list(spec.argv),
                    stdin=PIPE,
                    stdout=child_stdout,
                    stderr=PIPE,
                    cwd=spec.cwd,
                    env=env,
                    start_new_session=True,
                )
        except BaseException as exc:
            os.close(stdout_fd)
            if not isinstance(exc, OSError):
                raise
            raise AgentStartError(
                f"could not start pi with {spec.argv[0]!r}: {exc.strerror or exc}. "
                "Check [agent] command in the config (is pi installed? run `npm ci`)."
            ) from exc
        finally:
            os.close(child_stdout)  # pi has its copy: EOF comes when pi's side closes
        self = cls(proc, spec, metrics, stdout_fd=stdout_fd)
        task_group.start_soon(self._pump_stdout)
        task_group.start_soon(self._pump_stdin)
        task_group.start_soon(self._pump_stderr)
        task_group.start_soon(self._watch_exit)
        try:
            with anyio.fail_after(spec.startup_timeout):
                response = await self.request({"type": "get_state"})
        except TimeoutError:
            await self.close()
            raise AgentStartError(
                f"pi did not answer within {spec.startup_timeout:g} s of starting"
            ) from None
        except AgentCrashed as exc:
            await self.close()
            raise AgentStartError(f"pi exited while starting: {exc}{self._start_hint()}") from None
        except anyio.get_cancelled_exc_class():
            # stopped while booting (shutdown, a test's end): stop it now, not after the
            # start-up timeout; close() is shielded
            await self.close()
            raise
        try:
            if not response.success:
                raise AgentProtocolError(f"pi refused get_state: {response.error}")
            self.state = decode_answer(response, PiState)
        except AgentProtocolError as exc:
            await self.close()
            raise AgentStartError(f"{exc}; check that [agent] command runs pi 0.73") from None
        return self

    @property
    def alive(self) -> bool:
        return self.returncode is None and not self._closing

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self._stderr_tail)

    async def close(self) -> None:
        """SIGTERM (which also ends pi's tool children), wait, then SIGKILL."""
        await self._stop(self.spec.stop_timeout)

    async def kill(self) -> None:
        """SIGKILL pi, its process group and every descendant at once (pi is stuck)."""
        await self._stop(0.0)

    async def _stop(self, grace: float) -> None:
        """Signal the group, wait up to ``grace``, then kill whatever is left.

        Descendants are collected first: pi's bash children sit in their own
        process group and survive a SIGKILL of pi, so they are killed by pid,
        before waiting, so none can keep pi's pipes open.
        """
        with anyio.CancelScope(shield=True):
            if self.exited.is_set():
                return
            self._closing = True
            descendants = await anyio.to_thread.run_sync(procfs.descendants, self.pid)
            if grace > 0:
                self._signal(signal.SIGTERM)
                with anyio.move_on_after(grace):
                    await self.exited.wait()
                if not self.exited.is_set():
                    log.warning("pi pid %s ignored SIGTERM; killing it", self.pid)
            if not self.exited.is_set():
                self._signal(signal.SIGKILL)
                procfs.kill_all(descendants)
                await self.exited.wait()
            procfs.kill_all(descendants)
            # gone means gone: what max_processes counts and the reaper looks for
            await anyio.to_thread.run_sync(procfs.wait_gone, descendants, 2.0)

    def _signal(self, signum: signal.Signals) -> None:
        """Signal pi's process group (pi leads it: it was started with setsid)."""
        if self.exited.is_set():
            return
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            try:
                self._proc.send_signal(signum)
            except ProcessLookupError:
                pass

    # -- commands -----------------------------------------------------------------

    def send_nowait(self, command: dict[str, Any], on_response: Callback | None = None) -> None:
        """Queue a command; ``on_response`` runs in the reader when pi answers."""
        if self.returncode is not None:
            if on_response is not None:
                on_response(None)
            return
        rid = f"evie-{next(self._ids)}"
        if on_response is not None:
            self._pending[rid] = on_response
        if not self._write({**command, "id": rid}):
            cb = self._pending.pop(rid, None)
            if cb is not None:
                cb(None)

    def _write(self, record: dict[str, Any]) -> bool:
        """Hand one record to the stdin pump; False once the process is gone."""
        if not self._stdin_open:
            return False
        data = p.encode_command(record)
        writer = self._stdin_writer
        if (
            writer is not None
            and not self._to_stdin  # nothing waits for the pump: this is next in order
            and not self._pump_sending
            and not writer.is_closing()
            and not writer.transport.get_write_buffer_size()  # pi keeps up: no backlog
        ):
            writer.write(data)  # a non-blocking pipe: written now, or buffered by asyncio
            return True
        self._to_stdin.append(data)
        self._stdin_wakeup.set()
        return True

    async def request(self, command: dict[str, Any]) -> p.Response:
        """Send a command and wait for its answer (correlated by id, any order)."""
        waiter = _Waiter()
        self.send_nowait(command, waiter)
        await waiter.event.wait()
        if waiter.response is None:
            raise AgentCrashed(self._exit_message(), returncode=self.returncode)
        return waiter.response

    async def query(self, command: str, kind: type[Answer]) -> Answer:
        """Ask pi a question; its typed answer (AgentError when refused or misshapen)."""
        response = await self.request({"type": command})
        if not response.success:
            raise AgentRequestError(response.error or f"pi refused {command}")
        return decode_answer(response, kind)

    async def switch_session(self, session_file: Path, spec: LaunchSpec) -> None:
        """Point this (idle) pi at another session file: pi's ``switch_session``.

        pi loads the file's history (or starts it empty) and takes the working
        directory from the file's header, or its own cwd for a new file, exactly
        as a fresh ``pi --session FILE`` would (adr/0016). ``spec`` becomes the
        spec this process is known by. Raises :class:`AgentError` on refusal.
        """
        response = await self.request({"type": "switch_session", "sessionPath": str(session_file)})
        if not response.success:
            raise AgentRequestError(response.error or "pi refused the session switch")
        if decode_answer(response, SwitchResult).cancelled:
            raise AgentRequestError("pi cancelled the session switch")
        self.spec = spec
        self.state = await self.query("get_state", PiState)

    def start_turn(self, text: str, images: Sequence[Mapping[str, str]] = ()) -> Turn:
        """Send a prompt; the returned turn yields its events until it is over."""
        if self.returncode is not None:
            raise AgentCrashed(self._exit_message(), returncode=self.returncode)
        if self.turn is not None and self.turn.finished is None:
            raise AgentError("a turn is already running in this session")
        turn = Turn(lambda cb: self.send_nowait({"type": "get_state"}, cb))
        self.turn = turn

        def on_prompt(response: p.Response | None) -> None:
            if response is not None and not response.success:
                turn.prompt_rejected(response.error or "pi rejected the message")

        command: dict[str, Any] = {"type": "prompt", "message": text}
        if images:
            command["images"] = [dict(i) for i in images]
        self.send_nowait(command, on_prompt)
        return turn

    async def queue_message(
        self, text: str, images: Sequence[Mapping[str, str]] = (), *, steer: bool = False
    ) -> None:
        """Queue a message into the running turn as a follow-up (or steer)."""
        turn = self.turn
        if turn is None or not turn.accepts_followups:
            raise AgentError("no turn is running to queue this message into")
        turn.note_followup_sent(text)
        command: dict[str, Any] = {
            "type": "prompt",
            "message": text,
            "streamingBehavior": "steer" if steer else "followUp",
        }
        if images:
            command["images"] = [dict(i) for i in images]
        response = await self.request(command)
        if not response.success:
            turn.followup_failed(text)
            raise AgentRequestError(response.error or "pi refused the queued message")

    def abort(self) -> None:
        """Ask pi to stop the running turn; its answer arrives after ``agent_end``."""
        if self.turn is not None:
            self.turn.abort_requested = True
        self.send_nowait({"type": "abort"}, lambda _r: None)

    # -- pumps ----------------------------------------------------------------------

    async def _pump_stdout(self) -> None:
        """Drain pi's stdout from a reader callback of the event loop: each chunk is split
        and dispatched the moment the pipe is readable, so a turn's task is woken in that
        same loop iteration. (Through asyncio's subprocess pipe and a stream reader each
        chunk took two more iterations: a scheduled call to feed the reader, then this
        task's wake-up; adr/0016 §11.) The task only waits for the end of the output."""
        fd = self._stdout_fd
        loop = asyncio.get_running_loop()
        splitter = p.LineSplitter(self.spec.max_line_bytes)
        ended = asyncio.Event()

        def readable() -> None:
            try:
                chunk = os.read(fd, READ_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("pi stdout closed: %r", exc)
                chunk = b""
            if not chunk:
                loop.remove_reader(fd)
                ended.set()
                return
            try:
                self._on_stdout(chunk, splitter)
            except Exception:  # a bug in handling output must not stop the drain
                self.protocol_errors += 1
                log.exception("pi[%s] output handling failed", self.pid)

        loop.add_reader(fd, readable)
        try:
            with self._stdout_scope:  # cancelled by _watch_exit: see there
                await ended.wait()
        finally:
            loop.remove_reader(fd)
            os.close(fd)
            with anyio.CancelScope(shield=True):
                rest = splitter.rest()
                if rest.strip():
                    self._dispatch(rest)
                self.returncode = await self._proc.wait()
                # stderr may still hold pi's last words; give its pump a moment.
                with anyio.move_on_after(0.2):
                    await self._stderr_done.wait()
                self._on_exit()

    async def _watch_exit(self) -> None:
        """pi's process has exited: its stdout ends within :data:`EXIT_DRAIN_S`, or the
        pump stops reading it. Whatever pi left behind (in the sandbox: pi itself, when
        bubblewrap's outer process died first and its inner one lives on) can hold the
        pipe open for ever; waiting for its end would keep the session, and
        :meth:`close`, from ever finishing. Once the pump ends, pi's stdin is closed, and
        pi exits when its stdin ends."""
        await self._proc.wait()
        for ended, scope in (
            (self.exited, self._stdout_scope),
            (self._stderr_done, self._stderr_scope),
        ):
            with anyio.move_on_after(EXIT_DRAIN_S):
                await ended.wait()
            if not ended.is_set():
                log.warning(
                    "pi pid %s exited but its output is still held open; not waiting for it",
                    self.pid,
                )
                scope.cancel()

    def _on_stdout(self, chunk: bytes, splitter: p.LineSplitter) -> None:
        self.last_output_at = time.monotonic()
        lines = splitter.feed(chunk)
        if splitter.dropped:
            self._count_dropped(splitter, "stdout")
            for head in splitter.dropped:
                stand_in = _STAND_INS.get(p.record_type(head) or "")
                if stand_in is not None:  # the turn must still learn it is over
                    lines.append(stand_in)
            splitter.dropped.clear()
        for line in lines:
            try:
                self._dispatch(line)
            except Exception:  # a bug in handling one line must not stop the drain
                self.protocol_errors += 1
                log.exception("pi[%s] line handling failed", self.pid)

    async def _pump_stdin(self) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        pending = self._to_stdin
        try:
            while pending or self._stdin_open:  # at exit, what was queued still goes out
                if not pending:
                    await self._stdin_wakeup.wait()
                    self._stdin_wakeup = anyio.Event()
                    continue
                data = pending.popleft() if len(pending) == 1 else b"".join(pending)
                pending.clear()
                self._pump_sending = True  # (send may yield before it writes: a cancellation)
                try:
                    await stdin.send(data)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                    break
                finally:
                    self._pump_sending = False
        finally:
            self._stdin_open = False
            pending.clear()
        with anyio.CancelScope(shield=True):
            try:
                await stdin.aclose()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                pass

    async def _pump_stderr(self) -> None:
        done = self._stderr_done
        stderr = self._proc.stderr
        assert stderr is not None
        splitter = p.LineSplitter(self.spec.max_line_bytes)
        try:
            with self._stderr_scope:
                async for chunk in stderr:
                    lines = splitter.feed(chunk)
                    if splitter.dropped:
                        self._count_dropped(splitter, "stderr")
                        splitter.dropped.clear()
                    for line in lines:
                        self._note_stderr(line)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            pass
        finally:
            rest = splitter.rest()
            if rest.strip():
                self._note_stderr(rest)
            done.set()

    def _count_dropped(self, splitter: p.LineSplitter, stream: str) -> None:
        self.lines_dropped += len(splitter.dropped)
        if self._metrics is not None:
            self._metrics.lines_dropped += len(splitter.dropped)
        for head in splitter.dropped:
            log.warning(
                "pi[%s] wrote a %s line (%s) longer than [agent] max_line_bytes (%d); dropped it",
                self.pid,
                stream,
                p.record_type(head) or "unknown",
                self.spec.max_line_bytes,
            )

    def _note_stderr(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip()
        if text:
            self._stderr_tail.append(text[:500])
            log.debug("pi[%s] stderr: %s", self.pid, text[:500])

    # -- dispatch (synchronous: never awaits) -----------------------------------------

    def _dispatch(self, line: bytes) -> None:
        try:
            msg = p.decode_line(line)
        except p.ProtocolError as exc:
            self.protocol_errors += 1
            log.warning("pi[%s] sent an unreadable line (%d bytes): %s", self.pid, len(line), exc)
            return
        if isinstance(msg, p.Response):
            callback = self._pending.pop(str(msg.id), None) if msg.id is not None else None
            if callback is None:
                if msg.id is None and not msg.success:
                    log.warning("pi[%s] error without id: %s", self.pid, msg.error)
                return
            self._run_callback(callback, msg)
            return
        if isinstance(msg, p.ExtensionUIRequest):
            if msg.method in DIALOG_METHODS:
                # A dialog blocks the turn forever (even abort waits): cancel it.
                self._write({"type": "extension_ui_response", "id": msg.id, "cancelled": True})
            return
        turn = self.turn
        if turn is not None:
            try:
                turn.feed(msg)
            except Exception:  # a bug here must not stop the drain
                log.exception("pi[%s] event handling failed", self.pid)

    def _run_callback(self, callback: Callback, response: p.Response | None) -> None:
        try:
            callback(response)
        except Exception:
            log.exception("pi[%s] response handler failed", self.pid)

    def _on_exit(self) -> None:
        self._stdin_open = False  # the pump writes what is queued, then closes stdin
        self._stdin_wakeup.set()
        pending, self._pending = self._pending, {}
        for callback in pending.values():
            self._run_callback(callback, None)
        turn = self.turn
        if turn is not None and turn.finished is None:
            if self._closing:
                turn.process_exited(Outcome.INTERRUPTED, "the session was stopped mid-turn")
            else:
                turn.process_exited(Outcome.CRASHED, self._exit_message())
        self.exited.set()

    def _start_hint(self) -> str:
        """The fix, when what stopped pi is evie's own warm-up extension (a pi whose
        extension API differs fails to load it, and pi exits on any extension it cannot
        load)."""
        if "Failed to load extension" in self.stderr_tail and WARMUP_FILE in self.stderr_tail:
            return f" If this pi cannot load {WARMUP_FILE}, set [agent] warm_up = false."
        return ""

    def _exit_message(self) -> str:
        code = self.returncode
        how = f"exit code {code}" if code is None or code >= 0 else f"signal {-code}"
        last = self._stderr_tail[-1] if self._stderr_tail else ""
        detail = f": {last}" if last else ""
        return f"pi stopped unexpectedly ({how}){detail}. Your next message starts it again."
