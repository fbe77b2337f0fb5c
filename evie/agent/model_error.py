"""A model's error as one line a person can read.

pi reports a failed request with whatever its provider's SDK made of the answer: for
most APIs the status and the body's message, but a proxy or load balancer in front of
the API answers with an HTML page (``502 <html>\r\n<head><title>502 Bad Gateway…``),
pi's Gemini provider hands on the whole JSON error body, the HTML page inside it, and
its Mistral provider the body after a prefix (``Mistral API error (429): {"object":
"error", "message": …}``); the AWS SDK (Bedrock) reads a page as JSON and reports only
that it could not (``Unexpected token '<', "<html>…"... is not valid JSON\n
Deserialization error: …``; docs/pi-rpc.md). evie shows that text to the user after "The
agent reported an error:", so it is cut down here to one line: a JSON error body (alone
or after a short prefix) to its code, status and message, an HTML page to its title,
whitespace collapsed, the length bounded.
"""

from __future__ import annotations

import json
import re

LIMIT = 300
_TITLE_MOST = 150  # of an HTML page's title or text, so that the note after it is seen
_READ = 20_000  # an error longer than this is cut before it is looked at (linear, bounded)
_HTML = re.compile(r"<(?:!doctype|html|head|body|title)\b", re.IGNORECASE)
_TITLE = re.compile(r"<title[^>]*>([^<]*)</title>", re.IGNORECASE)
_H1 = re.compile(r"<h1[^>]*>([^<]*)</h1>", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")
_STATUS = re.compile(r"\d{3}")
_PREFIX = re.compile(r"[^{\n]{1,80}?: (?=\{)")  # "Mistral API error (429): " ahead of a body
HTML_NOTE = "(an HTML error page: the provider or a proxy in front of it is failing)"
_UNREADABLE = "Deserialization error:"  # the AWS SDK's, after the parser's own message
# Node's word for a response cut mid-body, all the AWS SDK (Bedrock over HTTP/1.1) says of it
CUT = "The connection to the model was cut mid-reply (aborted): send the message again"


def _from_json(text: str) -> str | None:
    """``{"error": {"code": 429, "status": "…", "message": "…"}}`` → ``429 …: …``."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) and isinstance(body, dict) and "message" in body:
        error = {"message": body["message"]}  # Mistral's: the message at the top, no status
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return None
    page = _from_html(f"{error.get('code', '')} {error['message']}")  # the page says the rest
    if page is not None:
        return page
    head = " ".join(str(error[key]) for key in ("code", "status") if error.get(key))
    return f"{head}: {error['message']}" if head else str(error["message"])


def _after_prefix(text: str) -> str | None:
    """``Mistral API error (429): {…}`` → ``Mistral API error (429): <message>``."""
    prefix = _PREFIX.match(text)
    found = prefix and _from_json(text[prefix.end() :])
    return f"{prefix.group(0)}{found}" if prefix and found else None


def _unreadable(text: str) -> str | None:
    """The AWS SDK's answer that was not JSON: an HTML page if it began with ``<``."""
    if _UNREADABLE not in text:
        return None
    if "token '<'" in text:
        return f"An unreadable answer {HTML_NOTE}"
    return f"An unreadable answer from the model's API: {text[: text.index(_UNREADABLE)]}"


def _from_html(text: str) -> str | None:
    if not _HTML.search(text):
        return None
    found = _TITLE.search(text) or _H1.search(text)
    title = " ".join((found.group(1) if found else _TAG.sub(" ", text)).split())[:_TITLE_MOST]
    before = text[: text.index("<")].strip()  # pi's "502 " ahead of the page, if any
    if _STATUS.fullmatch(before) and not title.startswith(before):
        title = f"{before} {title}"
    return f"{title} {HTML_NOTE}"


def error_line(text: str, limit: int = LIMIT) -> str:
    """``text`` (a model error as pi reports it) as one line of at most ``limit`` characters."""
    text = text[:_READ].strip()
    whole = text.startswith("{") and _from_json(text)
    if text == "aborted":
        return CUT
    line = whole or _after_prefix(text) or _unreadable(text) or _from_html(text) or text
    line = " ".join(line.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
