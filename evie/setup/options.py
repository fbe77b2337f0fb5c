"""The flags of ``evie setup``, apart from the wizard so that parsing a command line
stays cheap (the wizard imports aiohttp and pi's client only when it runs)."""

from __future__ import annotations

import argparse

SOURCES = ("api-key", "pi-login", "local", "keep")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--non-interactive", "-y", action="store_true", help="never ask: use the flags")
    p.add_argument("--state-dir", help="[state] dir to use")
    m = p.add_argument_group("model")
    m.add_argument("--model-source", choices=SOURCES, help="how pi gets its model")
    m.add_argument("--provider", help="pi provider, e.g. anthropic")
    m.add_argument("--model", help="model id, e.g. claude-sonnet-4-5")
    m.add_argument("--api-key-env", help="environment variable holding the API key")
    m.add_argument("--pi-agent-dir", help="an existing pi login (default ~/.pi/agent)")
    m.add_argument("--local-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1")
    m.add_argument("--no-turn", action="store_true", help="skip the test turn")
    t = p.add_argument_group("telegram")
    t.add_argument("--telegram-token", help="bot token (or EVIE_TELEGRAM_TOKEN)")
    t.add_argument("--telegram-api-url", help="Bot API server")
    t.add_argument("--telegram-user-id", type=int, help="owner id (skips the code)")
    t.add_argument("--skip-telegram", action="store_true")
    d = p.add_argument_group("discord")
    d.add_argument("--discord-token", help="bot token (or EVIE_DISCORD_TOKEN)")
    d.add_argument("--discord-api-url", help="REST base")
    d.add_argument("--discord-gateway-url", help="gateway URL")
    d.add_argument("--discord-user-id", type=int, help="owner id (skips the code)")
    d.add_argument("--skip-discord", action="store_true")
    p.add_argument(
        "--capture-timeout", type=float, default=300.0, help="seconds to wait for the code"
    )
