"""A model's error, as pi reports it, becomes one line for the user (evie.agent.model_error)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from evie.agent.model_error import CUT, HTML_NOTE, LIMIT, error_line

NGINX = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


@given(st.text(max_size=2 * LIMIT) | st.builds(lambda a, b: a + NGINX + b, st.text(), st.text()))
def test_any_error_is_one_bounded_line(text: str) -> None:
    line = error_line(text)
    assert line.split() == line.split(" ") or not line  # no newline, tab, CR; single spaces
    assert len(line) <= LIMIT
    assert line == line.strip()


def test_an_html_page_is_told_by_its_title() -> None:
    # as the OpenAI and Anthropic SDKs report it (pi's errorMessage): status, then the body
    assert error_line(f"502 {NGINX}") == f"502 Bad Gateway {HTML_NOTE}"
    assert error_line("503 <!DOCTYPE html><p>down</p>") == f"503 down {HTML_NOTE}"


def test_geminis_json_error_body_is_told_by_code_status_and_message() -> None:
    quota = {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}
    assert error_line(json.dumps(quota)) == "429 RESOURCE_EXHAUSTED: Quota exceeded"
    # the SDK wraps a non-JSON answer in the same shape, the page as its message
    page = {"error": {"message": NGINX, "code": 502, "status": "Bad Gateway"}}
    assert error_line(json.dumps(page)) == f"502 Bad Gateway {HTML_NOTE}"


def test_mistrals_body_after_its_prefix_is_told_by_its_message() -> None:
    # pi's Mistral provider: "Mistral API error (<status>): <body>"
    body = {"object": "error", "message": "Rate limit", "type": "rate_limited", "code": "1300"}
    prefix = "Mistral API error (429): "
    assert error_line(prefix + json.dumps(body)) == f"{prefix}Rate limit"
    assert error_line(f"{prefix}{{not json") == f"{prefix}{{not json"
    assert error_line(f"Mistral API error (502): {NGINX}") == f"502 Bad Gateway {HTML_NOTE}"
    page = {"message": NGINX}
    assert error_line(prefix + json.dumps(page)) == f"{prefix}502 Bad Gateway {HTML_NOTE}"


def test_the_aws_sdks_unreadable_answer_is_told_as_such() -> None:
    # Bedrock's SDK parses a proxy's page as JSON; pi-ai hands on what the parser said
    said = "\n  Deserialization error: to see the raw response, inspect the hidden field"
    page = f"Unexpected token '<', \"<html>\r\n<h\"... is not valid JSON{said}"
    assert error_line(page) == f"An unreadable answer {HTML_NOTE}"
    other = f"Unexpected end of JSON input{said}"
    assert (
        error_line(other)
        == "An unreadable answer from the model's API: Unexpected end of JSON input"
    )


def test_a_reply_cut_mid_body_says_so() -> None:
    assert error_line("aborted") == CUT
    assert error_line("Request was aborted") == "Request was aborted"


def test_an_ordinary_error_is_left_as_it_is() -> None:
    message = '429 {"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'
    assert error_line(message) == message
    assert error_line("Connection error.") == "Connection error."
