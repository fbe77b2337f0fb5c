"""What the terminal banner reads from a pi session file (evie.agent.session_file)."""

from __future__ import annotations

import json
from pathlib import Path

from evie.agent.session_file import read_summary


def _message(role: str, text: str) -> str:
    content = [{"type": "text", "text": text}]
    return json.dumps({"type": "message", "message": {"role": role, "content": content}})


def test_a_file_with_pi_header_gives_turns_and_cwd(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    header = json.dumps({"type": "session", "id": "x", "cwd": str(tmp_path)})
    lines = [header, _message("user", "a"), _message("assistant", "b"), _message("user", "c")]
    path.write_text("\n".join(lines) + "\n")
    summary = read_summary(path)
    assert summary is not None
    assert (summary.turns, summary.cwd) == (2, tmp_path)


def test_a_file_without_a_header_counts_its_first_message(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(_message("user", "hello") + "\n" + _message("assistant", "hi") + "\n")
    summary = read_summary(path)
    assert summary is not None
    assert (summary.turns, summary.cwd) == (1, None)


def test_no_file_is_no_summary(tmp_path: Path) -> None:
    assert read_summary(tmp_path / "missing.jsonl") is None
