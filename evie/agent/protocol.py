"""pi's RPC wire format: strict LF framing and a decoder that skips what we never read.

Why this is its own module: pi's stream is quadratic (every ``message_update``
carries two full copies of the message so far), so a naive ``json.loads`` of
every line costs O(n²) in the reply length. msgspec decodes straight into
structs that declare only the fields evie uses; the copies are skipped by the
parser without ever becoming Python objects (see adr/0003).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

# ---------------------------------------------------------------------------
# Framing


class LineSplitter:
    """Split a byte stream into records on ``b"\\n"`` only, dropping over-long lines.

    ``str.splitlines`` would also split on U+2028/U+2029/U+0085, which pi emits
    raw inside JSON strings. pi's longest lines are about three times the reply
    (every ``message_update`` carries two full copies of the message so far), so
    the cap must sit well above that; a line longer than ``max_line`` is not
    kept in memory at all: its bytes are skipped up to the next newline and its
    first :data:`HEAD` bytes are kept in :attr:`dropped` (to tell what it was).
    """

    __slots__ = ("_buf", "_discarding", "_scanned", "dropped", "max_line")

    HEAD = 200

    def __init__(self, max_line: int | None = None) -> None:
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already known to hold no newline
        self._discarding = False  # inside an over-long line: skip to its newline
        self.max_line = max_line
        self.dropped: list[bytes] = []  # heads of dropped lines, for the caller to take

    def feed(self, chunk: bytes) -> list[bytes]:
        lines: list[bytes] = []
        if self._discarding:
            end = chunk.find(b"\n")
            if end == -1:
                return lines
            self._discarding = False
            chunk = chunk[end + 1 :]
        limit = self.max_line
        buf = self._buf
        buf += chunk
        start = 0
        pos = buf.find(b"\n", self._scanned)
        while pos != -1:
            if limit is not None and pos - start > limit:
                self.dropped.append(bytes(buf[start : min(pos, start + self.HEAD)]))
            else:
                lines.append(bytes(buf[start:pos]))
            start = pos + 1
            pos = buf.find(b"\n", start)
        if start:
            del buf[:start]
        if limit is not None and len(buf) > limit:
            self.dropped.append(bytes(buf[: self.HEAD]))
            buf.clear()
            self._discarding = True
        self._scanned = len(buf)
        return lines

    def rest(self) -> bytes:
        """What is left after the stream ended without a final newline."""
        rest = bytes(self._buf)
        self._buf.clear()
        self._scanned = 0
        self._discarding = False
        return rest


_TYPE_AT_START = re.compile(rb'\{\s*"type"\s*:\s*"([A-Za-z_]{1,40})"')


def record_type(head: bytes) -> str | None:
    """The ``type`` of a record from its first bytes (pi writes ``type`` first)."""
    match = _TYPE_AT_START.match(head)
    return match.group(1).decode("ascii") if match else None


def encode_command(command: dict[str, Any]) -> bytes:
    """One command as one JSON line."""
    return msgspec.json.encode(command) + b"\n"


# ---------------------------------------------------------------------------
# Decoding: each struct names only the fields evie reads.


class ContentBlock(msgspec.Struct, frozen=True):
    type: str
    text: str | None = None


class MessageBody(msgspec.Struct, frozen=True):
    role: str
    content: list[ContentBlock] | str = ""
    stopReason: str | None = None
    errorMessage: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(b.text or "" for b in self.content if b.type == "text")


class AssistantDelta(msgspec.Struct, frozen=True):
    type: str
    delta: str = ""


class MessageUpdate(msgspec.Struct, frozen=True, tag="message_update"):
    assistantMessageEvent: AssistantDelta | None = None


class MessageStart(msgspec.Struct, frozen=True, tag="message_start"):
    message: MessageBody


class MessageEnd(msgspec.Struct, frozen=True, tag="message_end"):
    message: MessageBody


class AgentStart(msgspec.Struct, frozen=True, tag="agent_start"):
    pass


class AgentEnd(msgspec.Struct, frozen=True, tag="agent_end"):
    pass


class ToolExecutionStart(msgspec.Struct, frozen=True, tag="tool_execution_start"):
    toolCallId: str = ""
    toolName: str = ""
    args: msgspec.Raw = msgspec.Raw(b"null")


class ToolExecutionEnd(msgspec.Struct, frozen=True, tag="tool_execution_end"):
    toolCallId: str = ""
    toolName: str = ""
    isError: bool = False


class AutoRetryStart(msgspec.Struct, frozen=True, tag="auto_retry_start"):
    attempt: int = 0
    maxAttempts: int = 0
    delayMs: int = 0
    errorMessage: str = ""


class AutoRetryEnd(msgspec.Struct, frozen=True, tag="auto_retry_end"):
    success: bool = False
    attempt: int = 0
    finalError: str | None = None


class QueueUpdate(msgspec.Struct, frozen=True, tag="queue_update"):
    steering: list[str] = []
    followUp: list[str] = []


class ExtensionUIRequest(msgspec.Struct, frozen=True, tag="extension_ui_request"):
    id: str = ""
    method: str = ""
    title: str | None = None


class Response(msgspec.Struct, frozen=True, tag="response"):
    id: str | int | None = None
    command: str = ""
    success: bool = False
    error: str | None = None
    data: msgspec.Raw = msgspec.Raw(b"null")  # decoded on demand (evie.agent.answers)


class OtherEvent(msgspec.Struct, frozen=True):
    """Any event type evie does not act on; only its name is kept."""

    type: str


PiMessage = (
    MessageUpdate
    | MessageStart
    | MessageEnd
    | AgentStart
    | AgentEnd
    | ToolExecutionStart
    | ToolExecutionEnd
    | AutoRetryStart
    | AutoRetryEnd
    | QueueUpdate
    | ExtensionUIRequest
    | Response
)

_known: msgspec.json.Decoder[PiMessage] = msgspec.json.Decoder(PiMessage)
_other = msgspec.json.Decoder(OtherEvent)


class ProtocolError(ValueError):
    """A line from pi that is not a JSON object with a ``type``."""


def decode_line(line: bytes) -> PiMessage | OtherEvent:
    """Decode one record; unknown event types come back as :class:`OtherEvent`."""
    try:
        return _known.decode(line)
    except msgspec.ValidationError:
        pass  # an event type we do not model, or a field of an unexpected shape
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from exc
    try:
        return _other.decode(line)
    except (msgspec.MsgspecError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not a pi record: {exc}") from exc
