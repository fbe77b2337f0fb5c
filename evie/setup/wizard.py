"""``evie setup``: from nothing to a tested model and connected bots, in one sitting.

Each step asks (or takes its flag with ``--non-interactive``), checks what it
was given against the real thing — a test turn through pi, ``getMe``,
``users/@me`` — and says what to do when that fails. The owner's user id is
not typed in: whoever sends the bot the one-time code shown here is the owner.
The config is written once, at the end, with mode 0600.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import tomli_w

from evie.config import parse_config
from evie.errors import ConfigError
from evie.setup import bots, models
from evie.setup.options import SOURCES
from evie.setup.probe import probe_turn
from evie.state import atomic_write


class SetupAborted(Exception):
    """One line for the user; nothing more was written."""


class Wizard:
    def __init__(
        self,
        args: argparse.Namespace,
        path: Path,
        *,
        environ: dict[str, str] | None = None,
        out: Callable[[str], None] = print,
    ) -> None:
        self.args = args
        self.path = path
        self.environ = dict(os.environ if environ is None else environ)
        self.interactive = not args.non_interactive
        self.say = out
        self.data: dict[str, Any] = {}

    # -- asking ------------------------------------------------------------------------

    def ask(self, question: str, default: str = "", *, secret: bool = False) -> str:
        if not self.interactive:
            return default
        shown = f" [{default}]" if default and not secret else ""
        try:
            answer = (getpass.getpass if secret else input)(f"{question}{shown}: ").strip()
        except EOFError:
            raise SetupAborted("input ended; nothing was written") from None
        return answer or default

    def choose(self, question: str, options: tuple[str, ...], default: str) -> str:
        while True:
            answer = self.ask(f"{question} ({' / '.join(options)})", default)
            if answer in options:
                return answer
            self.say(f"  please answer one of: {', '.join(options)}")

    def section(self, name: str) -> dict[str, Any]:
        table = self.data.setdefault(name, {})
        assert isinstance(table, dict)
        return table

    # -- the steps ---------------------------------------------------------------------

    def run(self) -> int:
        self.load()
        if self.args.state_dir:
            self.section("state")["dir"] = str(Path(self.args.state_dir).expanduser())
        self.model()
        if not self.args.no_turn and not self.try_model():
            return 1
        if not self.args.skip_telegram:
            self.telegram()
        if not self.args.skip_discord:
            self.discord()
        self.write()
        self.next_steps()
        return 0

    def load(self) -> None:
        if not self.path.exists():
            return
        try:
            self.data = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise SetupAborted(f"cannot read {self.path} ({exc}): fix or move it") from None
        self.say(f"Updating {self.path} (a copy of the old file is kept as .bak).")

    def config(self) -> Any:
        try:
            return parse_config(self.data, source=self.path, environ=self.environ)
        except ConfigError as exc:
            raise SetupAborted(str(exc)) from None

    def model(self) -> None:
        self.say("\n— The model —")
        a = self.args
        source = a.model_source or self.choose(
            "How should pi reach a model? api-key: a provider's API key from the environment; "
            "pi-login: reuse ~/.pi/agent; local: a llama.cpp/Ollama/vLLM server URL; keep: as is",
            SOURCES,
            "keep" if self.data.get("agent") else "api-key",
        )
        agent = self.section("agent")
        try:
            if source == "api-key":
                provider = a.provider or self.ask("Provider", "anthropic")
                model = a.model or self.ask("Model", models.DEFAULT_MODEL.get(provider, ""))
                var = a.api_key_env or self.ask(
                    "Environment variable with the key",
                    models.API_KEY_ENV.get(provider, f"{provider.upper()}_API_KEY"),
                )
                agent.pop("agent_dir", None)
                where = models.store_api_key(self.config().agent_dir, provider, var, self.environ)
                self.say(f"  key from ${var} stored in {where} (mode 600)")
                agent["provider"] = provider
                if model:
                    agent["model"] = model
            elif source == "pi-login":
                login = Path(
                    a.pi_agent_dir or self.ask("pi's agent dir", "~/.pi/agent")
                ).expanduser()
                models.check_pi_login(login)
                agent["agent_dir"] = str(login)
                for key, value in (("provider", a.provider), ("model", a.model)):
                    if value:
                        agent[key] = value
                self.say(f"  pi will use the login in {login}")
            elif source == "local":
                url = a.local_url or self.ask("Server URL", "http://127.0.0.1:8080/v1")
                model = a.model or self.ask("Model id (as the server names it)", "default")
                agent.pop("agent_dir", None)
                where = models.add_local_server(self.config().agent_dir, url, model)
                self.say(f"  provider 'local' ({url}) written to {where}")
                agent["provider"] = models.LOCAL_PROVIDER
                agent["model"] = model
        except models.ModelSetupError as exc:
            raise SetupAborted(str(exc)) from None

    def try_model(self) -> bool:
        self.say("Testing the model with a real turn…")
        result = anyio.run(lambda: probe_turn(self.config(), seconds=120))
        if result.ok:
            self.say(f"✓ {result.model} answered in {result.seconds:.1f}s: {result.answer[:200]}")
            return True
        model = result.model or "no model"
        self.say(f"✗ {model}: {result.answer[:300]}")
        self.say("  fix the model settings and run `evie setup` again (nothing was written)")
        return False

    def telegram(self) -> None:
        self.say("\n— Telegram —")
        a = self.args
        env_token = self.environ.get("EVIE_TELEGRAM_TOKEN")
        token = a.telegram_token or env_token
        if not token and self.interactive:
            token = self.ask("Bot token from @BotFather (empty: skip Telegram)", secret=True)
        if not token:
            self.say("  skipped")
            return
        section = self.section("telegram")
        if a.telegram_api_url:
            section["api_url"] = a.telegram_api_url
        base = section.get("api_url", bots.TELEGRAM_API)
        me = self.check(lambda: bots.telegram_me(base, token))
        self.say(f"✓ token valid: bot @{me.username}")
        if token != env_token:
            section["token"] = token
        owner_id = a.telegram_user_id
        if owner_id is None:
            code = bots.one_time_code()
            self.say(
                f"Now, in Telegram: open @{me.username}, press Start (or send /start), "
                f"then send this code: {code}"
            )
            self.say(f"  waiting up to {a.capture_timeout:g}s…")
            owner = self.check(
                lambda: bots.telegram_capture_owner(base, token, code, seconds=a.capture_timeout)
            )
            owner_id = owner.user_id
            self.say(f"✓ you are Telegram user {owner_id}" + _at(owner.username))
        section["allowed_user_ids"] = sorted({*section.get("allowed_user_ids", []), owner_id})

    def discord(self) -> None:
        self.say("\n— Discord —")
        a = self.args
        env_token = self.environ.get("EVIE_DISCORD_TOKEN")
        token = a.discord_token or env_token
        if not token and self.interactive:
            token = self.ask(
                "Bot token from the Developer Portal (empty: skip Discord)", secret=True
            )
        if not token:
            self.say("  skipped")
            return
        section = self.section("discord")
        if a.discord_api_url:
            section["api_url"] = a.discord_api_url
        if a.discord_gateway_url:
            section["gateway_url"] = a.discord_gateway_url
        api = section.get("api_url", bots.DISCORD_API)
        gateway = section.get("gateway_url", bots.DISCORD_GATEWAY)
        me = self.check(lambda: bots.discord_me(api, token))
        self.say(f"✓ token valid: bot {me.username}")
        app_id = self.check(lambda: bots.discord_application_id(api, token))
        if token != env_token:
            section["token"] = token
        self.say(
            "  In the Developer Portal (your application → Bot) turn on the Message Content "
            "Intent. Invite the bot to a server you share with it:\n"
            f"  {bots.discord_invite_url(app_id)}"
        )
        owner_id = a.discord_user_id
        if owner_id is None:
            code = bots.one_time_code()
            self.say(f"Then send the bot a DM (or mention it) with this code: {code}")
            self.say(f"  waiting up to {a.capture_timeout:g}s…")
            owner = self.check(
                lambda: bots.discord_capture_owner(
                    api, gateway, token, code, seconds=a.capture_timeout
                )
            )
            owner_id = owner.user_id
            self.say(f"✓ you are Discord user {owner_id}" + _at(owner.username))
        section["allowed_user_ids"] = sorted({*section.get("allowed_user_ids", []), owner_id})

    def check(self, probe: Callable[[], Any]) -> Any:
        try:
            return anyio.run(probe)
        except bots.BotCheckFailed as exc:
            raise SetupAborted(str(exc)) from None

    def write(self) -> None:
        self.config()  # valid before anything is replaced
        header = (
            "# evie configuration, written by `evie setup`.\n"
            "# Every key is documented in config.example.toml (`evie init` writes it).\n\n"
        )
        body = header + tomli_w.dumps(self.data)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            backup = self.path.with_name(self.path.name + ".bak")
            atomic_write(backup, self.path.read_bytes())
            os.chmod(backup, 0o600)
        atomic_write(self.path, body.encode())
        os.chmod(self.path, 0o600)
        self.say(f"\nWrote {self.path} (mode 600).")

    def next_steps(self) -> None:
        flag = f" --config {self.path}"
        lines = [
            "Next steps:",
            f"  evie{flag} doctor              check everything again",
            f"  evie{flag} chat                talk to pi from this terminal (in this directory)",
        ]
        if self.data.get("telegram") or self.data.get("discord"):
            lines += [
                f"  evie{flag} run                 serve Telegram/Discord until Ctrl-C",
                f"  evie{flag} service install     keep it running (systemd user service)",
                "Anyone on the allow-list can make the agent run commands as you: keep it to you.",
            ]
        self.say("\n".join(lines))


def _at(username: str | None) -> str:
    return f" (@{username})" if username else ""


def run_setup(args: argparse.Namespace, path: Path) -> int:
    try:
        return Wizard(args, path).run()
    except SetupAborted as exc:
        print(f"evie setup: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nevie setup: interrupted; nothing was written", file=sys.stderr)
        return 130
