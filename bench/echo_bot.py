"""The floors: the least a Telegram bot can do, raw aiohttp over the same fake Bot API.

``python -m bench.echo_bot BASE_URL TOKEN`` long-polls ``getUpdates`` and
answers each text message with ``sendMessage("echo: <text>")``: one HTTP
round trip in, one out, no framework, no agent. evie's update → reply time is
reported as a ratio of this one's.

``python -m bench.echo_bot BASE_URL TOKEN --agent STATE_DIR`` adds, per
message, only what evie's own guarantees require, each done as cheaply as we
know how: the message appended to a journal and ``fdatasync``'d in a thread before it
reaches the agent (never lost, never run twice), the prompt written to the
same fake pi evie runs (its own process, over pipes), pi's events read and
decoded up to ``agent_end``, the reply taken from the assistant's
``message_end``, and the message marked done (a line, not synced) once it is
answered. Nothing else evie does is in it: no sessions, locks, status,
watchdog, outbox, rendering or logging. It says how much of evie's distance
from the raw floor is the design's and how much is evie's own.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import sys
import threading
from pathlib import Path

import aiohttp
import msgspec

#: (bench.common's FAKE_PI too; not imported from there, which loads evie into the floor)
FAKE_PI = Path(__file__).resolve().parent.parent / "tests" / "fake_pi.py"


class _Event(msgspec.Struct):
    """The fields of pi's events this bot reads; the rest of each line is skipped."""

    type: str
    message: msgspec.Raw = msgspec.Raw(b"null")  # decoded only at the reply's message_end


class _Text(msgspec.Struct):
    type: str
    text: str = ""


class _Message(msgspec.Struct):
    role: str = ""
    content: list[_Text] = []


_decode_event = msgspec.json.Decoder(_Event).decode
_decode_message = msgspec.json.Decoder(_Message).decode
_encode = msgspec.json.encode


class Agent:
    """The fake pi and a journal, each step written as cheaply as we know how.

    The journal is written by one long-lived thread that hands the outcome back with a
    single ``call_soon_threadsafe``; the prompt is one ``os.write`` to pi's non-blocking
    stdin; pi's stdout is read by a reader callback, split into lines and decoded with
    msgspec (only ``type``, and ``message`` of a ``message_end``), no task woken per line.
    (A first version with ``run_in_executor``, asyncio's subprocess streams, ``readline`` and
    ``json.loads`` cost 0.6 ms more CPU and 0.5 ms more latency per message: adr/0016 §14.)
    """

    def __init__(self, proc: asyncio.subprocess.Process, state: Path, stdin: int, stdout: int):
        self.proc = proc
        self.journal = os.open(state / "journal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.done = os.open(state / "done", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.stdin, self.stdout = stdin, stdout
        self.jobs: queue.SimpleQueue[tuple[bytes, asyncio.Future[None]]] = queue.SimpleQueue()
        self.loop = asyncio.get_running_loop()
        threading.Thread(target=self._journal, daemon=True).start()
        self.buf = b""
        self.reply = ""
        self.ended: asyncio.Future[str] | None = None
        self.loop.add_reader(stdout, self._readable)

    @classmethod
    async def start(cls, state: Path) -> Agent:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(FAKE_PI), "--mode", "rpc", "--session", str(state / "s.jsonl"),
            stdin=in_r, stdout=out_w,
        )  # fmt: skip
        os.close(in_r)
        os.close(out_w)
        os.set_blocking(in_w, False)
        os.set_blocking(out_r, False)
        return cls(proc, state, in_w, out_r)

    def _journal(self) -> None:
        while True:
            line, done = self.jobs.get()
            os.write(self.journal, line)
            os.fdatasync(self.journal)
            self.loop.call_soon_threadsafe(done.set_result, None)

    def _readable(self) -> None:
        data = os.read(self.stdout, 65536)
        if not data:
            self.loop.remove_reader(self.stdout)
            return
        lines = (self.buf + data).split(b"\n")
        self.buf = lines.pop()
        for line in lines:
            event = _decode_event(line)
            if event.type == "message_end":
                message = _decode_message(event.message)
                if message.role == "assistant":
                    self.reply = "".join(c.text for c in message.content if c.type == "text")
            elif event.type == "agent_end" and self.ended is not None:
                self.ended.set_result(self.reply)
                self.ended = None

    async def answer(self, update_id: int, text: str) -> str:
        written: asyncio.Future[None] = self.loop.create_future()
        self.jobs.put((_encode({"update_id": update_id, "text": text}) + b"\n", written))
        await written
        self.ended = self.loop.create_future()
        os.write(self.stdin, _encode({"type": "prompt", "message": text}) + b"\n")
        return await self.ended

    def answered(self, update_id: int) -> None:
        os.write(self.done, f"{update_id}\n".encode())


async def main(base: str, token: str, state: str | None) -> None:
    api = f"{base}/bot{token}"
    agent = await Agent.start(Path(state)) if state is not None else None
    offset = 0
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.post(
                f"{api}/getUpdates", data={"offset": str(offset), "timeout": "25"}
            ) as response:
                body = json.loads(await response.read())
            for update in body.get("result", []):
                offset = update["update_id"] + 1
                message = update.get("message") or {}
                if "text" not in message:
                    continue
                if agent is None:
                    reply = f"echo: {message['text']}"
                else:
                    reply = await agent.answer(update["update_id"], message["text"])
                data = {"chat_id": str(message["chat"]["id"]), "text": reply}
                async with http.post(f"{api}/sendMessage", data=data) as sent:
                    await sent.read()
                if agent is not None:
                    agent.answered(update["update_id"])


if __name__ == "__main__":
    state_dir = sys.argv[4] if len(sys.argv) > 4 and sys.argv[3] == "--agent" else None
    if state_dir is not None:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
    asyncio.run(main(sys.argv[1], sys.argv[2], state_dir))
