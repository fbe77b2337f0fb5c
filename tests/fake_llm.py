"""A fake streaming LLM on 127.0.0.1, so the real pi runs real turns.

It speaks five of pi's provider APIs, each streamed as server-sent events the way
pi-ai's provider reads it: OpenAI's chat completions (``POST /v1/chat/completions``)
and responses (``POST /v1/responses``), Anthropic's messages (``POST /v1/messages``),
Gemini's ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` and Mistral's
chat completions (``POST /mistral/v1/chat/completions``: the same path as OpenAI's on
Mistral's own host, so the fake serves it under a prefix of its own), and Bedrock's
``POST /model/{model}/converse-stream`` in AWS's binary event-stream framing.
It records every request body and answers from one script of :class:`Reply`
objects (falling back to ``echo: <last user text>``), whichever API asks. Faults, on
every API: HTTP errors (500, 401, 429 …) with that API's JSON error body or a
proxy's HTML page, a dropped connection mid-stream, slow chunks, a request never
answered.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
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
    html: bool = False  # an error status answered with a proxy's HTML page, not JSON
    hang: bool = False  # read the request, then never answer it
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
        """The user's texts in a request of any of the APIs, oldest first (a user
        message that only carries tool results is not one)."""
        out = []
        messages = request.get("messages") or request.get("input") or []
        for content in request.get("contents", []):  # Gemini: parts in place of content
            parts = [
                {"type": "text", "text": p["text"]} if "text" in p else p for p in content["parts"]
            ]
            messages.append({"role": content.get("role"), "content": parts})
        for message in messages:
            if message.get("role") != "user":
                continue
            content = message.get("content")
            if isinstance(content, str):
                out.append(content)
            elif isinstance(content, list):
                kinds = ("text", "input_text", None)  # None: Bedrock's {"text": …} blocks
                texts = [p["text"] for p in content if "text" in p and p.get("type") in kinds]
                if texts or not content:
                    out.append("".join(texts))
        return out

    def tool_results(self, request: dict[str, Any]) -> list[str]:
        """The tool results a request hands back to the model, in each API's own shape."""
        out = []
        for item in request.get("messages", []):
            if item.get("role") == "tool":  # chat completions
                out.append(json.dumps(item.get("content")))
            elif isinstance(item.get("content"), list):  # messages: tool_result blocks
                blocks = [b for b in item["content"] if b.get("type") == "tool_result"]
                blocks += [b["toolResult"] for b in item["content"] if "toolResult" in b]  # Bedrock
                out += [json.dumps(b.get("content")) for b in blocks]
        for item in request.get("input", []):  # responses: function_call_output items
            if item.get("type") == "function_call_output":
                out.append(json.dumps(item.get("output")))
        for content in request.get("contents", []):  # Gemini: functionResponse parts
            for part in content.get("parts", []):
                if "functionResponse" in part:
                    out.append(json.dumps(part["functionResponse"].get("response")))
        return out

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        self.requests.append(body)
        if self.script:
            return self.script.popleft()
        users = self.user_texts(body)
        return Reply(text=f"echo: {users[-1] if users else ''}")

    async def _failure(self, reply: Reply, error: dict[str, Any]) -> web.StreamResponse | None:
        """The scripted fault, if any: ``error`` is the API's own JSON error body."""
        if reply.hang:
            await anyio.sleep_forever()
        if reply.status == 200:
            return None
        headers = {} if reply.sdk_retry else {"x-should-retry": "false"}
        if reply.html:  # what a proxy or load balancer in front of the API answers
            page = (
                f"<html>\r\n<head><title>{reply.status} {reply.error}</title></head>\r\n<body>\r\n"
                f"<center><h1>{reply.status} {reply.error}</h1></center>\r\n"
                "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
            )
            return web.Response(
                text=page, status=reply.status, content_type="text/html", headers=headers
            )
        return web.json_response(error, status=reply.status, headers=headers)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's chat completions, streamed."""
        body = await request.json()
        reply = self._next_reply(body)
        error = {"error": {"message": reply.error, "type": "fake", "code": reply.status}}
        if (failure := await self._failure(reply, error)) is not None:
            return failure
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return _completion_chunk("chatcmpl-fake", body, delta, finish)

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
        error = {"type": "error", "error": {"type": "api_error", "message": reply.error}}
        if (failure := await self._failure(reply, error)) is not None:
            return failure
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
            tool_id = f"toolu_{len(self.requests)}"
            tool = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
            start = {"type": "content_block_start", "index": 1, "content_block": tool}
            args_delta = {"type": "input_json_delta", "partial_json": json.dumps(args)}
            await resp.write(event(start))
            await resp.write(
                event({"type": "content_block_delta", "index": 1, "delta": args_delta})
            )
            await resp.write(event({"type": "content_block_stop", "index": 1}))
            stop = "tool_use"
        end = {"stop_reason": stop, "stop_sequence": None}
        usage = {"output_tokens": 5}
        await resp.write(event({"type": "message_delta", "delta": end, "usage": usage}))
        await resp.write(event({"type": "message_stop"}))
        await resp.write_eof()
        return resp

    async def _handle_responses(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's responses API, streamed: typed events around output items (a message
        with an output_text part, a function_call), usage in ``response.completed``."""
        body = await request.json()
        reply = self._next_reply(body)
        error = {"error": {"message": reply.error, "type": "fake", "code": str(reply.status)}}
        if (failure := await self._failure(reply, error)) is not None:
            return failure
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        n = len(self.requests)
        sequence = iter(range(10**9))

        def event(kind: str, **fields: Any) -> bytes:
            data = {"type": kind, "sequence_number": next(sequence), **fields}
            return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()

        response: dict[str, Any] = {
            "id": f"resp_fake_{n}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "in_progress",
            "model": body.get("model", "fake-1"),
            "output": [],
            "usage": None,
        }
        await resp.write(event("response.created", response=response))
        await resp.write(event("response.in_progress", response=response))
        output: list[dict[str, Any]] = []
        if reply.text or reply.tool is None:
            msg_id = f"msg_fake_{n}"
            item: dict[str, Any] = {
                "id": msg_id,
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
            }
            await resp.write(
                event("response.output_item.added", output_index=0, item=item | {"content": []})
            )
            part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": []}
            where = {"item_id": msg_id, "output_index": 0, "content_index": 0}
            await resp.write(event("response.content_part.added", **where, part=part))

            def text(delta: str) -> bytes:
                return event("response.output_text.delta", **where, delta=delta, logprobs=[])

            if not await self._stream_text(request, resp, reply, text):
                return resp
            part = part | {"text": reply.text}
            await resp.write(event("response.output_text.done", **where, text=reply.text))
            await resp.write(event("response.content_part.done", **where, part=part))
            item = item | {"status": "completed", "content": [part]}
            await resp.write(event("response.output_item.done", output_index=0, item=item))
            output.append(item)
        if reply.tool is not None:
            name, args = reply.tool
            index, arguments = len(output), json.dumps(args)
            call = {"id": f"fc_fake_{n}", "type": "function_call", "status": "in_progress",
                    "call_id": f"call_{n}", "name": name, "arguments": ""}  # fmt: skip
            await resp.write(event("response.output_item.added", output_index=index, item=call))
            where = {"item_id": call["id"], "output_index": index}
            await resp.write(
                event("response.function_call_arguments.delta", **where, delta=arguments)
            )
            await resp.write(
                event("response.function_call_arguments.done", **where, arguments=arguments)
            )
            call = call | {"status": "completed", "arguments": arguments}
            await resp.write(event("response.output_item.done", output_index=index, item=call))
            output.append(call)
        usage = {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": 15}  # fmt: skip
        done = response | {"status": "completed", "output": output, "usage": usage}
        await resp.write(event("response.completed", response=done))
        await resp.write_eof()
        return resp

    async def _handle_gemini(self, request: web.Request) -> web.StreamResponse:
        """Gemini's streamGenerateContent with ``alt=sse``: each event a whole
        GenerateContentResponse (``candidates[0].content.parts``); the last one carries
        the finish reason and ``usageMetadata``. A function call is a part of its own."""
        target = request.match_info["target"]
        if not target.endswith(":streamGenerateContent") or request.query.get("alt") != "sse":
            raise web.HTTPNotFound(text=f"the fake LLM does not serve {target}")
        body = await request.json()
        body["model"] = target.removesuffix(":streamGenerateContent")
        reply = self._next_reply(body)
        statuses = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                    429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}  # fmt: skip
        status = statuses.get(reply.status, "INTERNAL")
        error = {"error": {"code": reply.status, "message": reply.error, "status": status}}
        if (failure := await self._failure(reply, error)) is not None:
            return failure
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        n = len(self.requests)

        def event(parts: list[dict[str, Any]], **last: Any) -> bytes:
            candidate = {"content": {"parts": parts, "role": "model"}, "index": 0}
            chunk = {"candidates": [candidate | last.pop("candidate", {})], **last,
                     "modelVersion": body["model"], "responseId": f"fake-{n}"}  # fmt: skip
            return f"data: {json.dumps(chunk)}\r\n\r\n".encode()  # Google's delimiter

        if not await self._stream_text(request, resp, reply, lambda t: event([{"text": t}])):
            return resp
        parts = []
        if reply.tool is not None:
            name, args = reply.tool
            parts.append({"functionCall": {"name": name, "args": args}})
        usage = {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15}
        await resp.write(event(parts, candidate={"finishReason": "STOP"}, usageMetadata=usage))
        await resp.write_eof()
        return resp

    async def _handle_mistral(self, request: web.Request) -> web.StreamResponse:
        """Mistral's chat completions, streamed (its SDK's ``chat.stream``): chunks shaped
        like OpenAI's, but a tool call arrives whole in one delta (arguments a JSON string,
        a 9-character id) together with the finish reason, usage rides on that last chunk,
        and an error body is ``{"object": "error", "message": …, "type": …, "code": …}``."""
        body = await request.json()
        reply = self._next_reply(body)
        kinds = {401: "unauthorized", 422: "invalid_request_error", 429: "rate_limited"}
        error = {"object": "error", "message": reply.error, "param": None,
                 "type": kinds.get(reply.status, "internal_error"), "code": "1000"}  # fmt: skip
        if (failure := await self._failure(reply, error)) is not None:
            return failure
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        n = len(self.requests)

        def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            return _completion_chunk(f"cmpl-fake{n}", body, delta, finish, **extra)

        await resp.write(event({"role": "assistant", "content": ""}))
        if not await self._stream_text(request, resp, reply, lambda t: event({"content": t})):
            return resp
        usage = {"prompt_tokens": 10, "total_tokens": 15, "completion_tokens": 5}
        if reply.tool is not None:
            name, args = reply.tool
            call = {"id": f"Call{n:05d}", "function": {"name": name, "arguments": json.dumps(args)},
                    "index": 0}  # fmt: skip
            await resp.write(event({"tool_calls": [call]}, "tool_calls", usage=usage))
        else:
            await resp.write(event({"content": ""}, "stop", usage=usage))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _handle_bedrock(self, request: web.Request) -> web.StreamResponse:
        """Bedrock's ConverseStream: AWS event-stream messages (binary frames, each a JSON
        event named by its ``:event-type`` header): messageStart, contentBlockDelta (text),
        contentBlockStart/Delta/Stop (a toolUse), messageStop, metadata (usage). An error is
        an HTTP status with ``x-amzn-errortype`` and ``{"message": …}``."""
        body = await request.json()
        body["model"] = request.match_info["model"]
        reply = self._next_reply(body)
        types = {400: "ValidationException", 403: "AccessDeniedException",
                 429: "ThrottlingException", 503: "ServiceUnavailableException"}  # fmt: skip
        kind = types.get(reply.status, "InternalServerException")
        failure = await self._failure(reply, {"message": reply.error})
        if failure is not None:
            if not reply.html:
                failure.headers["x-amzn-errortype"] = f"{kind}:http://internal.amazon.com/coral/"
            return failure
        resp = web.StreamResponse(headers={"Content-Type": "application/vnd.amazon.eventstream"})
        await resp.prepare(request)

        def event(name: str, **payload: Any) -> bytes:
            return event_stream_message(name, json.dumps(payload).encode())

        await resp.write(event("messageStart", role="assistant"))

        def text(part: str) -> bytes:
            return event("contentBlockDelta", contentBlockIndex=0, delta={"text": part})

        if not await self._stream_text(request, resp, reply, text):
            return resp
        await resp.write(event("contentBlockStop", contentBlockIndex=0))
        stop = "end_turn"
        if reply.tool is not None:
            name, args = reply.tool
            use = {"toolUse": {"toolUseId": f"tooluse_fake{len(self.requests)}", "name": name}}
            await resp.write(event("contentBlockStart", contentBlockIndex=1, start=use))
            delta = {"toolUse": {"input": json.dumps(args)}}
            await resp.write(event("contentBlockDelta", contentBlockIndex=1, delta=delta))
            await resp.write(event("contentBlockStop", contentBlockIndex=1))
            stop = "tool_use"
        await resp.write(event("messageStop", stopReason=stop))
        usage = {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15}
        await resp.write(event("metadata", usage=usage, metrics={"latencyMs": 1}))
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


def _completion_chunk(
    id_: str, body: dict[str, Any], delta: dict[str, Any], finish: str | None, **extra: Any
) -> bytes:
    """One streamed chat-completion chunk as a server-sent event (OpenAI's shape, which
    Mistral's API shares)."""
    chunk = {
        "id": id_,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model", "fake-1"),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return f"data: {json.dumps(chunk)}\n\n".encode()


def event_stream_message(event_type: str, payload: bytes) -> bytes:
    """One AWS event-stream message: a prelude (total and headers length, its CRC32),
    string headers (name length, name, type 7, value length, value), the payload and the
    CRC32 of everything before it."""
    headers = b""
    for name, value in ((":event-type", event_type), (":content-type", "application/json"),
                        (":message-type", "event")):  # fmt: skip
        raw = value.encode()
        headers += bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(raw)) + raw
    prelude = struct.pack(">II", 12 + len(headers) + len(payload) + 4, len(headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + payload
    return message + struct.pack(">I", zlib.crc32(message))


@asynccontextmanager
async def running_fake_llm() -> AsyncIterator[FakeLLM]:
    llm = FakeLLM()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", llm._handle)
    app.router.add_post("/v1/messages", llm._handle_anthropic)
    app.router.add_post("/v1/responses", llm._handle_responses)
    app.router.add_post("/v1beta/models/{target}", llm._handle_gemini)
    app.router.add_post("/v1/publishers/google/models/{target}", llm._handle_gemini)  # Vertex
    app.router.add_post("/mistral/v1/chat/completions", llm._handle_mistral)
    app.router.add_post("/model/{model}/converse-stream", llm._handle_bedrock)
    async with serve_on_loopback(app) as llm.port:
        yield llm


OPENAI = "openai-completions"
ANTHROPIC = "anthropic-messages"
RESPONSES = "openai-responses"
AZURE = "azure-openai-responses"  # the responses API, through the OpenAI SDK's Azure client
GEMINI = "google-generative-ai"
VERTEX = "google-vertex"  # Gemini's stream, through the Google SDK's Vertex client (API key)
MISTRAL = "mistral-conversations"  # Mistral's chat completions, through its own SDK
BEDROCK = "bedrock-converse-stream"  # AWS's SDK: needs bedrock_env() in pi's environment


def bedrock_env(tmp: Path) -> tuple[tuple[str, str], ...]:
    """pi's environment for the fake's Bedrock: HTTP/1.1 (the SDK's default is HTTP/2, which
    the fake does not speak), pi-ai's dummy credentials, no SDK retries (pi's own are the
    ones tested), and AWS config files of the test's own, never the machine's."""
    return (
        ("AWS_BEDROCK_FORCE_HTTP1", "1"),
        ("AWS_BEDROCK_SKIP_AUTH", "1"),
        ("AWS_MAX_ATTEMPTS", "1"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_CONFIG_FILE", str(tmp / "aws-config")),
        ("AWS_SHARED_CREDENTIALS_FILE", str(tmp / "aws-credentials")),
    )


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
    elif api in (RESPONSES, AZURE):
        provider["baseUrl"] = llm.base_url  # the SDK adds /responses (Azure: ?api-version=v1)
    elif api == VERTEX:  # with an API key and no project: /publishers/google/models/<id>:…
        provider["baseUrl"] = f"http://127.0.0.1:{llm.port}/v1"
    elif api == GEMINI:  # the SDK adds /models/<id>:streamGenerateContent?alt=sse
        provider["baseUrl"] = f"http://127.0.0.1:{llm.port}/v1beta"
    elif api == BEDROCK:  # the SDK adds /model/<id>/converse-stream
        provider["baseUrl"] = f"http://127.0.0.1:{llm.port}"
    elif api == MISTRAL:  # the SDK adds /v1/chat/completions to the path it is given
        provider["baseUrl"] = f"http://127.0.0.1:{llm.port}/mistral"
    else:
        raise ValueError(f"the fake LLM does not speak {api}")
    (agent_dir / "models.json").write_text(json.dumps({"providers": {"fake": provider}}))
    settings = {"retry": {"enabled": True, "maxRetries": retries, "baseDelayMs": 50}}
    (agent_dir / "settings.json").write_text(json.dumps(settings))
