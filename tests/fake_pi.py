#!/usr/bin/env python3
"""A fake ``pi --mode rpc``: a real subprocess speaking pi's RPC protocol.

Measured pi behaviour it reproduces (see docs/pi-rpc.md): LF-only JSON
lines, responses correlated by id (out of order when a turn is running),
``message_update`` carrying two full copies of the message so far, follow-up
and steer queues, ``abort`` answered after ``agent_end``, auto-retry after an
error, blocking extension dialogs, stdin EOF -> exit 0, and a session file
that gets one line per finished message.

A plain prompt is answered with ``echo: <text>``. A prompt of the form
``script:<json list of steps>`` runs a scripted turn; the steps are documented
in :func:`Turn.step`.

Options: ``--startup-delay S``, ``--exit-at-start CODE``, ``--reject-extensions``
(each ``--extension PATH`` fails to load, and the fake exits 1 as pi 0.73 does),
``--record FILE``
(every received command is appended as a JSON line), ``--garble COMMAND``
(every answer to ``get_state`` or ``get_session_stats`` has wrong-typed fields;
the script step ``{"garble": COMMAND}`` does it for the next answer only); the
real pi flags are accepted and ignored, except ``--session PATH``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

OUT_LOCK = threading.Lock()
IGNORE_SIGTERM = threading.Event()  # set by the "hang": "hard" step


def on_sigterm(signum: int, _frame: object) -> None:
    """Die of SIGTERM as usual, unless a step asked to play deaf (only the main thread
    may install handlers, so this one is always installed and consults the flag)."""
    if IGNORE_SIGTERM.is_set():
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


STATE_LOCK = threading.Lock()


def emit(obj: dict[str, Any]) -> None:
    data = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
    with OUT_LOCK:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def emit_many(*objs: dict[str, Any]) -> None:
    """Several records in one write: what pi emits synchronously in one tick."""
    data = b"".join((json.dumps(o, ensure_ascii=False) + "\n").encode("utf-8") for o in objs)
    emit_raw(data)


def emit_raw(data: bytes) -> None:
    with OUT_LOCK:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


class Aborted(Exception):
    pass


#: answers with the right names but wrong types (a pi that changed under evie)
GARBLED: dict[str, dict[str, Any]] = {
    "get_state": {"model": "fake-1", "isStreaming": "no", "pendingMessageCount": "two"},
    "get_session_stats": {"tokens": {"input": "ten", "output": [20]}, "cost": "cheap"},
}


class Session:
    def __init__(self, path: str | None) -> None:
        self.path = path
        self.session_id = uuid.uuid4().hex
        self.messages: list[dict[str, Any]] = []
        # like pi: the working directory comes from the header, else the process cwd
        # (which follows a renamed directory), and is recorded when the file is created
        self.cwd = os.getcwd()
        if path and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                for raw in f:
                    entry = json.loads(raw)
                    if entry.get("type") == "session":
                        self.session_id = entry["id"]
                        self.cwd = entry.get("cwd") or self.cwd
                    elif entry.get("type") == "message":
                        self.messages.append(entry["message"])

    def append(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        if not self.path:
            return
        # like pi: an empty file (the sandbox's bind source, a spare's) gets a header too
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        with open(self.path, "a", encoding="utf-8") as f:
            if new:
                header = {"type": "session", "id": self.session_id, "cwd": self.cwd}
                f.write(json.dumps(header) + "\n")
            f.write(json.dumps({"type": "message", "message": message}) + "\n")


class Agent:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.streaming = False
        self.abort = threading.Event()
        self.follow_ups: list[str] = []
        self.steering: list[str] = []
        self.turn_thread: threading.Thread | None = None
        self.dialogs: dict[str, threading.Event] = {}
        self.ended_by_error = False
        self.garble: dict[str, int] = {}  # command -> how many answers to garble
        self.end_pad = 0  # bytes of padding in the next agent_end (its "messages")

    def garbled(self, kind: str) -> bool:
        with STATE_LOCK:
            left = self.garble.get(kind, 0)
            if left:
                self.garble[kind] = left - 1
            return bool(left)

    # -- command handling (reader thread) --

    def handle(self, cmd: dict[str, Any]) -> None:
        kind = cmd.get("type")
        rid = cmd.get("id")

        def ok(data: Any = None) -> None:
            out: dict[str, Any] = {"id": rid, "type": "response", "command": kind, "success": True}
            if data is not None:
                out["data"] = data
            emit(out)

        def fail(error: str) -> None:
            emit({"id": rid, "type": "response", "command": kind, "success": False, "error": error})

        if kind in GARBLED and self.garbled(kind):
            ok(GARBLED[kind])
        elif kind == "get_state":
            with STATE_LOCK:
                ok(
                    {
                        "model": {"provider": "fake", "id": "fake-1"},
                        "isStreaming": self.streaming,
                        "sessionId": self.session.session_id,
                        "sessionFile": self.session.path,
                        "messageCount": len(self.session.messages),
                        "pendingMessageCount": len(self.follow_ups) + len(self.steering),
                    }
                )
        elif kind == "prompt":
            text = cmd.get("message", "")
            with STATE_LOCK:
                if self.streaming:
                    behaviour = cmd.get("streamingBehavior")
                    if behaviour not in ("steer", "followUp"):
                        fail(
                            "Agent is already processing. Specify streamingBehavior "
                            "('steer' or 'followUp') to queue the message."
                        )
                        return
                    (self.steering if behaviour == "steer" else self.follow_ups).append(text)
                    ok()
                    emit(
                        {
                            "type": "queue_update",
                            "steering": list(self.steering),
                            "followUp": list(self.follow_ups),
                        }
                    )
                    return
                if text.startswith("reject:"):
                    fail(text[len("reject:") :])
                    return
                self.streaming = True
                self.abort.clear()
            ok()
            self.turn_thread = threading.Thread(target=self.run_turn, args=(text,), daemon=True)
            self.turn_thread.start()
        elif kind == "abort":
            self.abort.set()
            thread = self.turn_thread

            def answer_after_end() -> None:
                if thread is not None:
                    thread.join()
                ok()

            threading.Thread(target=answer_after_end, daemon=True).start()
        elif kind == "extension_ui_response":
            event = self.dialogs.get(cmd.get("id", ""))
            if event is not None:
                event.set()
        elif kind == "get_session_stats":
            ok({"tokens": {"input": 10, "output": 20, "total": 30}, "cost": 0.0012})
        elif kind == "switch_session":
            path = cmd.get("sessionPath", "")
            with STATE_LOCK:
                if self.streaming:
                    fail("Cannot switch sessions while streaming")  # pi tears down first
                    return
                session = Session(path)
                if not os.path.isdir(session.cwd):
                    fail(f"Stored session working directory does not exist: {session.cwd}")
                    return
                self.session = session
            ok({"cancelled": False})
        elif kind == "new_session":
            with STATE_LOCK:
                self.session = Session(None)
            ok({"cancelled": False})
        elif kind == "get_last_assistant_text":
            texts = [m for m in self.session.messages if m.get("role") == "assistant"]
            ok({"text": message_text(texts[-1]) if texts else None})
        else:
            emit(
                {
                    "type": "response",
                    "command": kind,
                    "success": False,
                    "error": f"Unknown command: {kind}",
                }
            )

    # -- turns (turn thread) --

    def run_turn(self, text: str) -> None:
        emit({"type": "agent_start"})
        try:
            self.user_message(text)
            turn = Turn(self)
            turn.run_prompt(text)
            while True:
                with STATE_LOCK:
                    nxt = (
                        self.steering.pop(0)
                        if self.steering
                        else self.follow_ups.pop(0)
                        if self.follow_ups
                        else None
                    )
                if nxt is None or self.abort.is_set():
                    break
                emit(
                    {
                        "type": "queue_update",
                        "steering": list(self.steering),
                        "followUp": list(self.follow_ups),
                    }
                )
                self.user_message(nxt)
                turn.run_prompt(nxt)
        except Aborted:
            pass
        finally:
            with STATE_LOCK:
                self.streaming = False
        if not self.ended_by_error:
            pad, self.end_pad = self.end_pad, 0
            emit({"type": "agent_end", "messages": [{"pad": "x" * pad}] if pad else []})
        self.ended_by_error = False

    def user_message(self, text: str) -> None:
        message = {"role": "user", "content": [{"type": "text", "text": text}]}
        emit({"type": "message_start", "message": message})
        emit({"type": "message_end", "message": message})
        self.session.append(message)


def message_text(message: dict[str, Any]) -> str:
    return "".join(c.get("text", "") for c in message.get("content", []) if c.get("type") == "text")


class Turn:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.text = ""
        self.started = False

    def check_abort(self) -> None:
        if self.agent.abort.is_set():
            self.finish("aborted")
            raise Aborted

    def sleep(self, seconds: float) -> None:
        if self.agent.abort.wait(seconds):
            self.check_abort()

    def message(self) -> dict[str, Any]:
        return {"role": "assistant", "content": [{"type": "text", "text": self.text}]}

    def start(self) -> None:
        if not self.started:
            self.started = True
            self.text = ""
            emit({"type": "message_start", "message": {"role": "assistant", "content": []}})

    def delta(self, piece: str) -> None:
        self.start()
        self.text += piece
        partial = self.message()
        emit(
            {
                "type": "message_update",
                "assistantMessageEvent": {
                    "type": "text_delta",
                    "contentIndex": 0,
                    "delta": piece,
                    "partial": partial,
                },
                "message": partial,
            }
        )

    def finish(self, stop_reason: str, error: str | None = None) -> None:
        self.start()
        message = self.message()
        message["stopReason"] = stop_reason
        if error is not None:
            message["errorMessage"] = error
            message["content"] = []
        emit({"type": "message_end", "message": message})
        self.agent.session.append(message)
        self.started = False

    def stream(self, text: str, chunk: int, delay: float) -> None:
        for i in range(0, len(text), max(chunk, 1)):
            self.check_abort()
            self.delta(text[i : i + chunk])
            if delay:
                self.sleep(delay)

    def run_prompt(self, text: str) -> None:
        if not text.startswith("script:"):
            self.stream(f"echo: {text}", 4, 0)
            self.finish("stop")
            return
        steps = json.loads(text[len("script:") :])
        for step in steps:
            self.step(step)
        self.finish("stop")

    def step(self, step: dict[str, Any]) -> None:
        """Steps: text(+chunk,delay) | big(+chunk) | sleep | wait_file | tool | crash |
        error(+fail_times,max_retries,retry_delay,then) | dialog | garble(+times) | raw |
        raw_hex | env | pwd | history | stderr |
        hang(+say) (silent forever, ignoring abort; ``"hard"`` also ignores SIGTERM) |
        big_line (one line of N bytes) | end_pad (a big agent_end) |
        shell (run a command, stream its output)."""
        self.check_abort()
        if "hang" in step:
            if step["hang"] == "hard":
                IGNORE_SIGTERM.set()
            if "say" in step:  # said after deafness starts, so an abort can never win a race
                self.delta(step["say"])
            while True:
                time.sleep(3600)
        elif "end_pad" in step:
            self.agent.end_pad = step["end_pad"]
        elif "big_line" in step:
            emit_raw(b'{"type":"noise","pad":"' + b"x" * step["big_line"] + b'"}\n')
        elif "shell" in step:
            done = subprocess.run(
                step["shell"], shell=True, capture_output=True, text=True, check=False
            )
            self.stream(done.stdout + done.stderr, 4096, 0)
        elif "text" in step:
            self.stream(step["text"], step.get("chunk", 4), step.get("delay", 0))
        elif "big" in step:
            unit = "0123456789abcdef" * 4 + "\n"
            size = step["big"]
            body = (unit * (size // len(unit) + 1))[:size]
            self.stream(body, step.get("chunk", 65536), 0)
        elif "sleep" in step:
            self.sleep(step["sleep"])
        elif "wait_file" in step:
            while not os.path.exists(step["wait_file"]):
                self.sleep(0.01)
        elif "tool" in step:
            self.tool(step)
        elif "crash" in step:
            sys.stderr.write(step.get("message", "fake pi: simulated crash") + "\n")
            sys.stderr.flush()
            os._exit(step["crash"])
        elif "error" in step:
            self.error(step)
        elif "dialog" in step:
            did = uuid.uuid4().hex
            event = threading.Event()
            self.agent.dialogs[did] = event
            emit(
                {
                    "type": "extension_ui_request",
                    "id": did,
                    "method": step["dialog"],
                    "title": "Allow?",
                }
            )
            event.wait()
            self.stream("dialog answered", 8, 0)
        elif "garble" in step:
            with STATE_LOCK:
                self.agent.garble[step["garble"]] = step.get("times", 1)
        elif "raw" in step:
            emit_raw(step["raw"].encode("utf-8") + b"\n")
        elif "raw_hex" in step:
            emit_raw(bytes.fromhex(step["raw_hex"]) + b"\n")
        elif "env" in step:
            self.stream(f"{step['env']}={os.environ.get(step['env'], '<unset>')}", 64, 0)
        elif "pwd" in step:  # where this session's tools would run
            self.stream(f"cwd={self.agent.session.cwd}", 64, 0)
        elif "history" in step:  # what the model would be sent: every earlier user text
            texts = [message_text(m) for m in self.agent.session.messages if m["role"] == "user"]
            self.stream("history=" + json.dumps(texts), 64, 0)
        elif "stderr" in step:
            sys.stderr.write(step["stderr"] + "\n")
            sys.stderr.flush()

    def tool(self, step: dict[str, Any]) -> None:
        call_id = uuid.uuid4().hex[:8]
        name = step["tool"]
        self.start()
        emit(
            {
                "type": "message_end",
                "message": {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "toolCall",
                            "id": call_id,
                            "name": name,
                            "arguments": step.get("args", {}),
                        }
                    ],
                    "stopReason": "toolUse",
                },
            }
        )
        self.started = False
        emit(
            {
                "type": "tool_execution_start",
                "toolCallId": call_id,
                "toolName": name,
                "args": step.get("args", {}),
            }
        )
        self.sleep(step.get("sleep", 0))
        output = step.get("output", "")
        emit(
            {
                "type": "tool_execution_update",
                "toolCallId": call_id,
                "toolName": name,
                "partialResult": {"content": [{"type": "text", "text": output}]},
            }
        )
        emit(
            {
                "type": "tool_execution_end",
                "toolCallId": call_id,
                "toolName": name,
                "result": {"content": [{"type": "text", "text": output}]},
                "isError": bool(step.get("is_error", False)),
            }
        )
        emit({"type": "turn_end"})
        emit({"type": "turn_start"})

    def error(self, step: dict[str, Any]) -> None:
        message = step["error"]
        fail_times = step.get("fail_times", 1_000_000)
        max_retries = step.get("max_retries", 0)
        delay = step.get("retry_delay", 0.05)
        attempt = 0
        while True:
            self.finish("error", message)
            attempt += 1
            end = {"type": "agent_end", "messages": []}
            if attempt > max_retries:
                # pi emits the final auto_retry_end in the same tick as agent_end
                if max_retries:
                    emit_many(
                        end,
                        {
                            "type": "auto_retry_end",
                            "success": False,
                            "attempt": attempt - 1,
                            "finalError": message,
                        },
                    )
                else:
                    emit(end)
                self.agent.ended_by_error = True
                raise Aborted
            emit_many(
                end,
                {
                    "type": "auto_retry_start",
                    "attempt": attempt,
                    "maxAttempts": max_retries,
                    "delayMs": int(delay * 1000),
                    "errorMessage": message,
                },
            )
            with STATE_LOCK:
                self.agent.streaming = False
            if self.agent.abort.wait(delay):
                emit(
                    {
                        "type": "auto_retry_end",
                        "success": False,
                        "attempt": attempt,
                        "finalError": "Retry cancelled",
                    }
                )
                self.agent.ended_by_error = True
                raise Aborted
            with STATE_LOCK:
                self.agent.streaming = True
            emit({"type": "agent_start"})
            if attempt >= fail_times:
                self.stream(step.get("then", "recovered"), 4, 0)
                emit({"type": "auto_retry_end", "success": True, "attempt": attempt})
                return


def main(argv: list[str]) -> int:
    args = iter(argv)
    startup_delay = 0.0
    exit_at_start: int | None = None
    record: str | None = os.environ.get("FAKE_PI_RECORD")
    session_path: str | None = None
    garble: dict[str, int] = {}
    extensions: list[str] = []
    reject_extensions = False
    for arg in args:
        if arg == "--version":  # as pi does: the version on stdout, then exit
            print("0.0.0-fake")
            return 0
        if arg == "--startup-delay":
            startup_delay = float(next(args))
        elif arg == "--exit-at-start":
            exit_at_start = int(next(args))
        elif arg == "--record":
            record = next(args)
        elif arg == "--session":
            session_path = next(args)
        elif arg == "--garble":
            garble[next(args)] = 1_000_000
        elif arg == "--extension":
            extensions.append(next(args))
        elif arg == "--reject-extensions":
            reject_extensions = True
    if reject_extensions and extensions:
        for path in extensions:  # pi's own words (main.js, reportDiagnostics)
            sys.stderr.write(
                f'Error: Failed to load extension "{path}": Failed to load extension: '
                "pi.on is not a function\n"
            )
        return 1
    if exit_at_start is not None:
        sys.stderr.write("fake pi: refusing to start\n")
        return exit_at_start
    signal.signal(signal.SIGTERM, on_sigterm)
    time.sleep(startup_delay)
    agent = Agent(Session(session_path))
    agent.garble.update(garble)
    stdin = sys.stdin.buffer
    # read1 (what is there, not a full 64 KiB) is what keeps a line-at-a-time protocol moving;
    # stdin's binary layer is a BufferedReader, which typeshed only knows as a BinaryIO
    assert isinstance(stdin, io.BufferedReader)
    buf = b""
    while True:
        chunk = stdin.read1(65536)
        if not chunk:
            os._exit(0)  # like pi: stdin EOF ends the process at once, even mid-turn
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if record:
                with open(record, "ab") as f:
                    f.write(line + b"\n")
            try:
                cmd = json.loads(line)
            except ValueError as exc:
                emit({"type": "response", "command": "parse", "success": False, "error": str(exc)})
                continue
            agent.handle(cmd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
