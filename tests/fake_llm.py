"""A fake OpenAI-compatible streaming LLM on 127.0.0.1, so the real pi runs real turns.

It serves ``POST /v1/chat/completions`` with ``stream: true`` as server-sent
events, records every request body, and answers from a script of
:class:`Reply` objects (falling back to ``echo: <last user text>``). Faults:
HTTP errors (500, 401, 429 …), a dropped connection mid-stream, slow chunks.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
from aiohttp import web

from tests.loopback import serve_on_loopback


@attrs.frozen
class Reply:
    text: str = ""
    chunk: int = 8
    delay: float = 0.0  # seconds between chunks
    status: int = 200
    error: str = "fake failure"
    drop_after: int | None = None  # close the connection after this many chunks
    tool: tuple[str, dict[str, Any]] | None = None  # (name, arguments): a tool call
    # The OpenAI SDK inside pi retries 5xx twice on its own; by default the fake tells it
    # not to (x-should-retry: false) so that tests see pi's own, reported retries.
    sdk_retry: bool = False


@attrs.define
class FakeLLM:
    port: int = 0
    requests: list[dict[str, Any]] = attrs.Factory(list)
    script: deque[Reply] = attrs.Factory(deque)
    chunks_sent: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def queue(self, *replies: Reply) -> None:
        self.script.extend(replies)

    def user_texts(self, request: dict[str, Any]) -> list[str]:
        out = []
        for message in request.get("messages", []):
            if message.get("role") != "user":
                continue
            content = message.get("content")
            if isinstance(content, str):
                out.append(content)
            elif isinstance(content, list):
                out.append("".join(p.get("text", "") for p in content if p.get("type") == "text"))
        return out

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        reply = self.script.popleft() if self.script else None
        if reply is None:
            users = self.user_texts(body)
            reply = Reply(text=f"echo: {users[-1] if users else ''}")
        if reply.status != 200:
            headers = {} if reply.sdk_retry else {"x-should-retry": "false"}
            return web.json_response(
                {"error": {"message": reply.error, "type": "fake", "code": reply.status}},
                status=reply.status,
                headers=headers,
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            chunk = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body.get("model", "fake-1"),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(chunk)}\n\n".encode()

        await resp.write(event({"role": "assistant", "content": ""}))
        step = max(reply.chunk, 1)
        for sent, i in enumerate(range(0, len(reply.text), step)):
            if reply.drop_after is not None and sent >= reply.drop_after:
                assert request.transport is not None
                request.transport.close()
                return resp
            await resp.write(event({"content": reply.text[i : i + reply.chunk]}))
            self.chunks_sent += 1
            if reply.delay:
                await anyio.sleep(reply.delay)
        if reply.tool is not None:
            name, args = reply.tool
            call = {
                "index": 0,
                "id": f"call_{len(self.requests)}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            await resp.write(event({"tool_calls": [call]}))
            await resp.write(event({}, "tool_calls"))
        else:
            await resp.write(event({}, "stop"))
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


@asynccontextmanager
async def running_fake_llm() -> AsyncIterator[FakeLLM]:
    llm = FakeLLM()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", llm._handle)
    async with serve_on_loopback(app) as llm.port:
        yield llm


def write_agent_dir(agent_dir: Path, llm: FakeLLM, *, retries: int = 2) -> None:
    """A pi agent dir whose only provider is the fake LLM, with fast retries."""
    agent_dir.mkdir(parents=True, exist_ok=True)
    models = {
        "providers": {
            "fake": {
                "baseUrl": llm.base_url,
                "api": "openai-completions",
                "apiKey": "x",
                "compat": {"supportsDeveloperRole": False, "supportsReasoningEffort": False},
                "models": [{"id": "fake-1"}],
            }
        }
    }
    (agent_dir / "models.json").write_text(json.dumps(models))
    settings = {"retry": {"enabled": True, "maxRetries": retries, "baseDelayMs": 50}}
    (agent_dir / "settings.json").write_text(json.dumps(settings))
