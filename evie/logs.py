"""Logging setup: text or JSON lines, with secrets redacted from every record."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable
from contextvars import ContextVar

#: the chat and session a log line is about; set by the code handling them, and
#: inherited by every task started from there (pi's reader tasks included)
chat_var: ContextVar[str | None] = ContextVar("evie_chat", default=None)
session_var: ContextVar[str | None] = ContextVar("evie_session", default=None)

# Telegram bot tokens look like 123456789:AA...; Discord tokens are three dot-separated
# base64 parts. Both are redacted even when evie does not know the exact value.
_TOKEN_SHAPES = re.compile(
    r"(?<!\d)\d{5,}:[A-Za-z0-9_-]{30,}|\b[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{20,}\b"
)


class RedactSecrets(logging.Filter):
    """Replace known secrets and token-shaped strings in the rendered message.

    Without ``tracebacks`` (every level but debug) an exception attached to a
    record becomes one line — its type and first words — so an error is one
    line in the log however deep the library that raised it.
    """

    def __init__(self, secrets: Iterable[str] = (), *, tracebacks: bool = True) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]
        self._tracebacks = tracebacks

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return _TOKEN_SHAPES.sub("[redacted]", text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            if self._tracebacks:
                record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            else:
                exc = record.exc_info[1]
                brief = " ".join(str(exc).split())[:200]
                name = type(exc).__name__
                record.msg += self.redact(f" ({name}: {brief})" if brief else f" ({name})")
            record.exc_info = None
        return True


class AddContext(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.chat = chat_var.get()
        record.session = session_var.get()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = [
            f"{name}={value}"
            for name in ("chat", "session")
            if (value := getattr(record, name, None)) is not None
        ]
        return f"{line} [{' '.join(context)}]" if context else line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        import json  # not before `evie chat`'s first prompt (adr/0015); cached after the first

        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("session", "chat"):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str, fmt: str, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactSecrets(secrets, tracebacks=level == "debug"))
    handler.addFilter(AddContext())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
