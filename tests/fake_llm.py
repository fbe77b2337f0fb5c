"""A fake streaming LLM on 127.0.0.1, so the real pi runs real turns.

It speaks two of pi's provider APIs: OpenAI's ``POST /v1/chat/completions`` and
Anthropic's ``POST /v1/messages``, both with ``stream: true`` as server-sent events.
It records every request body and answers from one script of :class:`Reply`
objects (falling back to ``echo: <last user text>``), whichever API asks. Faults:
HTTP errors (500, 401, 429 …), a dropped connection mid-stream, slow chunks.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
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

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        self.requests.append(body)
        if self.script:
            return self.script.popleft()
        users = self.user_texts(body)
        return Reply(text=f"echo: {users[-1] if users else ''}")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's chat completions, streamed."""
        body = await request.json()
        reply = self._next_reply(body)
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
        if not await self._stream_text(request, resp, reply, lambda t: event({"content": t})):
            return resp
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

    async def _handle_anthropic(self, request: web.Request) -> web.StreamResponse:
        """Anthropic's messages API, streamed: its named events, one content block each."""
        body = await request.json()
        reply = self._next_reply(body)
        if reply.status != 200:
            headers = {} if reply.sdk_retry else {"x-should-retry": "false"}
            error = {"type": "error", "error": {"type": "api_error", "message": reply.error}}
            return web.json_response(error, status=reply.status, headers=headers)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        def event(data: dict[str, Any]) -> bytes:
            return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()

        message = {
            "id": f"msg_fake_{len(self.requests)}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "fake-1"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 1},
        }
        await resp.write(event({"type": "message_start", "message": message}))
        block = {"type": "text", "text": ""}
        await resp.write(event({"type": "content_block_start", "index": 0, "content_block": block}))

        def text(part: str) -> bytes:
            delta = {"type": "text_delta", "text": part}
            return event({"type": "content_block_delta", "index": 0, "delta": delta})

        if not await self._stream_text(request, resp, reply, text):
            return resp
        await resp.write(event({"type": "content_block_stop", "index": 0}))
        stop = "end_turn"
        if reply.tool is not None:
            name, args = reply.tool
            block = {"type": "tool_use", "id": f"toolu_{len(self.requests)}", "name": name}
            block["input"] = {}
            start = {"type": "content_block_start", "index": 1, "content_block": block}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(args)}
            await resp.write(event(start))
            await resp.write(event({"type": "content_block_delta", "index": 1, "delta": delta}))
            await resp.write(event({"type": "content_block_stop", "index": 1}))
            stop = "tool_use"
        delta = {"stop_reason": stop, "stop_sequence": None}
        usage = {"output_tokens": 5}
        await resp.write(event({"type": "message_delta", "delta": delta, "usage": usage}))
        await resp.write(event({"type": "message_stop"}))
        await resp.write_eof()
        return resp

    async def _stream_text(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        reply: Reply,
        encode: Callable[[str], bytes],
    ) -> bool:
        """The reply's text in chunks; False if the script drops the connection midway."""
        step = max(reply.chunk, 1)
        for sent, i in enumerate(range(0, len(reply.text), step)):
            if reply.drop_after is not None and sent >= reply.drop_after:
                assert request.transport is not None
                request.transport.close()
                return False
            await resp.write(encode(reply.text[i : i + step]))
            self.chunks_sent += 1
            if reply.delay:
                await anyio.sleep(reply.delay)
        return True


@asynccontextmanager
async def running_fake_llm() -> AsyncIterator[FakeLLM]:
    llm = FakeLLM()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", llm._handle)
    app.router.add_post("/v1/messages", llm._handle_anthropic)
    async with serve_on_loopback(app) as llm.port:
        yield llm


OPENAI = "openai-completions"
ANTHROPIC = "anthropic-messages"


def write_agent_dir(agent_dir: Path, llm: FakeLLM, *, retries: int = 2, api: str = OPENAI) -> None:
    """A pi agent dir whose only provider is the fake LLM (speaking ``api``), with fast
    retries."""
    agent_dir.mkdir(parents=True, exist_ok=True)
    provider: dict[str, Any] = {"api": api, "apiKey": "x", "models": [{"id": "fake-1"}]}
    if api == OPENAI:
        provider["baseUrl"] = llm.base_url
        provider["compat"] = {"supportsDeveloperRole": False, "supportsReasoningEffort": False}
    elif api == ANTHROPIC:
        provider["baseUrl"] = f"http://127.0.0.1:{llm.port}"  # the SDK adds /v1/messages
    else:
        raise ValueError(f"the fake LLM does not speak {api}")
    (agent_dir / "models.json").write_text(json.dumps({"providers": {"fake": provider}}))
    settings = {"retry": {"enabled": True, "maxRetries": retries, "baseDelayMs": 50}}
    (agent_dir / "settings.json").write_text(json.dumps(settings))
