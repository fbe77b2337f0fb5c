"""The floors: the least a Telegram bot can do, raw aiohttp over the same fake Bot API.

``python -m bench.echo_bot BASE_URL TOKEN`` long-polls ``getUpdates`` and
answers each text message with ``sendMessage("echo: <text>")``: one HTTP
round trip in, one out, no framework, no agent. evie's update → reply time is
reported as a ratio of this one's.

``python -m bench.echo_bot BASE_URL TOKEN --agent STATE_DIR`` adds, per
message, only what evie's own guarantees require, each done the plainest way:
the message appended to a journal and ``fdatasync``'d in a thread before it
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
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp

FAKE_PI = Path(__file__).resolve().parent.parent / "tests" / "fake_pi.py"


class Agent:
    """The fake pi and a journal, driven as plainly as possible."""

    def __init__(self, proc: asyncio.subprocess.Process, state: Path) -> None:
        self.proc = proc
        self.journal = os.open(state / "journal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.done = os.open(state / "done", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.writer = ThreadPoolExecutor(max_workers=1)

    @classmethod
    async def start(cls, state: Path) -> Agent:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(FAKE_PI), "--mode", "rpc", "--session", str(state / "s.jsonl"),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        return cls(proc, state)

    def _append_synced(self, line: bytes) -> None:
        os.write(self.journal, line)
        os.fdatasync(self.journal)

    async def answer(self, update_id: int, text: str) -> str:
        line = json.dumps({"update_id": update_id, "text": text}).encode() + b"\n"
        await asyncio.get_running_loop().run_in_executor(self.writer, self._append_synced, line)
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"type": "prompt", "message": text}).encode() + b"\n")
        reply = ""
        while True:
            event = json.loads(await self.proc.stdout.readline())
            kind = event.get("type")
            if kind == "message_end" and event["message"].get("role") == "assistant":
                content = event["message"].get("content") or []
                reply = "".join(c.get("text", "") for c in content if c.get("type") == "text")
            elif kind == "agent_end":
                return reply

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
