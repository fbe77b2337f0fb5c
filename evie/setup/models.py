"""The three ways to give pi a model, written where pi looks: evie's agent dir.

evie runs pi with ``PI_CODING_AGENT_DIR=<agent dir>`` (default ``<state>/agent``),
so pi reads ``models.json`` and ``auth.json`` there — not in ``~/.pi/agent``
unless ``[agent] agent_dir`` says so. Formats: pi's docs/models.md and
docs/providers.md (recorded in adr/0015).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from evie.state import atomic_write

# pi's environment variable per built-in provider (pi docs/providers.md)
API_KEY_ENV = {
    "anthropic": "ANTHROPIC_API_KEY",
    "openai": "OPENAI_API_KEY",
    "google": "GEMINI_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "groq": "GROQ_API_KEY",
    "xai": "XAI_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
}
DEFAULT_MODEL = {"anthropic": "claude-sonnet-4-5", "openai": "gpt-5"}
LOCAL_PROVIDER = "local"


class ModelSetupError(Exception):
    """One line: what is missing and how to provide it."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ModelSetupError(f"{path} is not valid JSON ({exc}): fix or remove it") from None
    if not isinstance(data, dict):
        raise ModelSetupError(f"{path} is not a JSON object: fix or remove it")
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode())
    os.chmod(path, 0o600)


def store_api_key(agent_dir: Path, provider: str, env_var: str, environ: dict[str, str]) -> Path:
    """Copy the key from ``env_var`` into pi's ``auth.json`` (0600), so a service has it too."""
    key = environ.get(env_var, "").strip()
    if not key:
        raise ModelSetupError(
            f"${env_var} is not set: run `export {env_var}=<your key>` and then `evie setup` again"
        )
    path = agent_dir / "auth.json"
    data = _read_json(path)
    data[provider] = {"type": "api_key", "key": key}
    _write_json(path, data)
    return path


def add_local_server(agent_dir: Path, base_url: str, model: str) -> Path:
    """An OpenAI-compatible server (llama.cpp, Ollama, vLLM …) as provider ``local``."""
    url = base_url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ModelSetupError(f"{base_url!r} is not an http(s) URL, e.g. http://127.0.0.1:8080/v1")
    path = agent_dir / "models.json"
    data = _read_json(path)
    providers = data.setdefault("providers", {})
    providers[LOCAL_PROVIDER] = {
        "baseUrl": url,
        "api": "openai-completions",
        "apiKey": "local",  # required by pi; local servers ignore it
        # most local servers know neither the developer role nor reasoning_effort
        "compat": {"supportsDeveloperRole": False, "supportsReasoningEffort": False},
        "models": [{"id": model}],
    }
    _write_json(path, data)
    return path


def check_pi_login(agent_dir: Path) -> None:
    if not (agent_dir / "auth.json").exists() and not (agent_dir / "models.json").exists():
        raise ModelSetupError(
            f"no pi login in {agent_dir} (no auth.json or models.json): run `pi`, then /login, "
            "or choose another way"
        )
