"""Supervised platforms (adr/0011): whatever Telegram or Discord answer, evie keeps listening.

Real aiogram and discord.py against the loopback fakes, with fault scripts: HTML error pages,
409s, resets, hangs, outages at start, bad tokens, updates aiogram cannot read. Intervals are
compressed through the same settings a user has (poll timeout, request grace, backoff).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from evie.agent.events import Outcome
from evie.chat.backoff import Backoff
from evie.chat.streaming import Delivery
from evie.config import DiscordConfig, TelegramConfig
from evie.platforms.discord import DiscordInterface
from evie.platforms.telegram import TelegramInterface
from evie.sessions.manager import SessionManager
from tests import harness
from tests.conftest import fake_launcher
from tests.fake_discord import TOKEN as DISCORD_TOKEN
from tests.fake_discord import running_fake_discord
from tests.fake_telegram import (
    CONFLICT,
    HTML_BAD_GATEWAY,
    RESET,
    TOKEN,
    FakeTelegram,
    Fault,
    poison_update,
    running_fake_telegram,
)
from tests.harness import kept_discord_endpoints
from tests.loopback import closed_port

pytestmark = pytest.mark.anyio
OWNER = 42
STRANGER = 666
FAST = Backoff(base=0.02, cap=0.2)


def telegram_interface(manager: SessionManager, api_url: str) -> TelegramInterface:
    config = TelegramConfig(
        token=TOKEN,
        api_url=api_url,
        allowed_user_ids=frozenset({OWNER}),
        edit_interval=0.05,
        polling_timeout=1,
        request_grace=1,  # a getUpdates silent 1 s past its timeout is hung
    )
    return TelegramInterface(manager, config, delivery=Delivery(base_backoff=0.01), backoff=FAST)


@attrs.define
class Tg:
    fake: FakeTelegram
    manager: SessionManager
    interface: TelegramInterface

    async def answered(self, text: str, chat: int = OWNER) -> None:
        await self.fake.wait_for(lambda: f"echo: {text}" in self.fake.chat_view(chat), 20)


@pytest.fixture
async def tg(tmp_path: Path) -> AsyncIterator[Tg]:
    async with running_fake_telegram() as fake:
        async with SessionManager(fake_launcher(tmp_path)) as manager:
            interface = telegram_interface(manager, fake.base_url)
            async with anyio.create_task_group() as group:
                await group.start(interface.run)
                yield Tg(fake, manager, interface)
                group.cancel_scope.cancel()


def lines(caplog: pytest.LogCaptureFixture, logger: str, needle: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and needle in r.getMessage()]


def supervisor_lines(caplog: pytest.LogCaptureFixture, platform: str) -> list[logging.LogRecord]:
    """The supervisor's lines about ``platform`` (one per failed attempt)."""
    return lines(caplog, "evie.platforms.supervisor", f"{platform}: ")


def assert_one_line_each(records: list[logging.LogRecord]) -> None:
    for record in records:
        assert "\n" not in record.getMessage(), record.getMessage()
        assert record.exc_info is None  # no traceback below info level


async def wait_until(predicate: Callable[[], bool], seconds: float = 20) -> None:
    with anyio.fail_after(seconds):
        while not predicate():
            await anyio.sleep(0.02)


# -- the backoff policy -----------------------------------------------------------------


@given(
    base=st.floats(0.001, 10),
    cap=st.floats(0.01, 600),
    attempt=st.integers(1, 10_000),
    seed=st.integers(0, 2**32),
)
def test_backoff_is_jittered_capped_and_grows(
    base: float, cap: float, attempt: int, seed: int
) -> None:
    policy = Backoff(base=base, cap=cap)
    delay = policy.delay(attempt, random.Random(seed))
    ceiling = policy.ceiling(attempt)
    assert ceiling <= cap
    assert ceiling / 2 <= delay <= ceiling
    assert policy.ceiling(attempt + 1) >= ceiling  # never shrinks while failures go on
    if base * 2 ** min(attempt, 60) >= cap:
        assert policy.ceiling(attempt + 1) == cap


# -- Telegram: getUpdates faults --------------------------------------------------------


async def test_getupdates_faults_never_end_polling(
    tg: Tg, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    tg.fake.push_message("before")
    await tg.answered("before")
    faults = [HTML_BAD_GATEWAY, CONFLICT, RESET, Fault(hang=120), Fault(500, "Internal")]
    for fault in faults:
        tg.fake.inject("getUpdates", fault)
    await tg.fake.wait_for(lambda: not tg.fake.faults["getUpdates"], 30)
    tg.fake.push_message("after")
    await tg.answered("after")
    retries = supervisor_lines(caplog, "telegram")
    assert len(retries) == len(faults)  # one line per failed attempt
    assert_one_line_each(retries)
    texts = [r.getMessage() for r in retries]
    assert "not its JSON" in texts[0]  # the HTML page is named, not dumped
    assert "<html>" not in " ".join(texts)
    assert "409 Conflict" in texts[1]
    assert "timeout" in texts[3].lower()
    health = tg.interface.health()
    assert health.state == "up"
    assert health.consecutive_failures == 0
    assert tg.fake.chat_view(OWNER) == ["echo: before", "echo: after"]


async def test_telegram_down_at_start_then_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = closed_port()
    async with SessionManager(fake_launcher(tmp_path)) as manager:
        interface = telegram_interface(manager, f"http://127.0.0.1:{port}")

        async with anyio.create_task_group() as group:
            await group.start(interface.run)  # returns while Telegram refuses connections
            await wait_until(lambda: len(supervisor_lines(caplog, "telegram")) >= 4)
            down = interface.health()
            assert down.state == "degraded"
            assert down.seconds_since_ok is None
            assert down.consecutive_failures >= 4
            async with running_fake_telegram(port) as fake:
                fake.push_message("are you there?")
                await fake.wait_for(lambda: "echo: are you there?" in fake.chat_view(OWNER), 20)
                assert interface.health().state == "up"
                group.cancel_scope.cancel()
        assert interface.health().state == "down"  # run ended: intake stopped
        seen = supervisor_lines(caplog, "telegram")
        assert_one_line_each(seen)
        # one line per retry, numbered in order, each naming the connection failure
        assert [f"retry {n} " in r.getMessage() for n, r in enumerate(seen, 1)] == [True] * len(
            seen
        )
        assert all("connect" in r.getMessage().lower() for r in seen)


async def test_poison_updates_are_skipped_from_strangers_and_the_owner(
    tg: Tg, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    stranger = tg.fake.push_raw(lambda uid: poison_update(uid, STRANGER))
    owner = tg.fake.push_raw(lambda uid: poison_update(uid, OWNER))
    tg.fake.push_message("next one")
    await tg.answered("next one")
    skipped = lines(caplog, "evie.platforms.telegram", "skipped update")
    assert [r.getMessage().split()[3] for r in skipped] == [str(stranger), str(owner)]
    assert_one_line_each(skipped)
    assert "reply_to_story" in skipped[0].getMessage()  # where it failed ...
    assert not any("look at my story" in r.getMessage() for r in caplog.records)  # ... not what
    assert tg.interface.health().skipped_updates == 2
    offsets = [int(p.get("offset") or 0) for p in tg.fake.method_calls("getUpdates")]
    assert max(offsets) > owner  # the offset moved past both
    assert tg.fake.chat_view(STRANGER) == []  # nothing ran for either
    assert [s.key for s in tg.manager.slots()] == [f"tg:{OWNER}"]
    assert tg.fake.chat_view(OWNER) == ["echo: next one"]


async def test_html_answers_to_send_edit_and_typing_are_retried(tg: Tg) -> None:
    tg.fake.inject("sendChatAction", HTML_BAD_GATEWAY)  # the first typing call of the turn
    tg.fake.inject("sendMessage", HTML_BAD_GATEWAY, times=2)  # the live message
    tg.fake.inject("editMessageText", HTML_BAD_GATEWAY, times=2)  # its edits
    steps = [{"text": "streaming " * 40, "chunk": 10, "delay": 0.02}]
    tg.fake.push_message("script:" + json.dumps(steps))
    key = f"tg:{OWNER}"
    await wait_until(
        lambda: (s := tg.manager.get_status(key)) is not None and s.last_outcome is not None
    )
    await tg.fake.wait_for(lambda: not any(tg.fake.faults.values()))
    status = tg.manager.get_status(key)
    assert status is not None
    assert status.last_outcome is Outcome.DONE  # the turn was not aborted
    reply = ("streaming " * 40).strip()
    await tg.fake.wait_for(lambda: [t.strip() for t in tg.fake.chat_view(OWNER)] == [reply])
    tg.fake.push_message("still here")
    await tg.answered("still here")


async def test_a_reply_that_cannot_be_delivered_is_one_line_not_a_crash(
    tg: Tg, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    tg.fake.inject("sendMessage", Fault(403, "Forbidden: bot was blocked by the user"), times=5)
    tg.fake.push_message("hello?")
    # replies leave through the outbox: its courier logs the refusal (adr/0012)
    await wait_until(lambda: bool(lines(caplog, "evie.chat.courier", "refused a reply")))
    assert not lines(caplog, "evie.chat.frontend", "unexpected error")
    assert_one_line_each(lines(caplog, "evie.chat.frontend", ""))
    assert_one_line_each(lines(caplog, "evie.chat.courier", ""))
    tg.fake.faults["sendMessage"].clear()  # unblocked
    tg.fake.push_message("and now?")
    await tg.answered("and now?")


# -- Discord ----------------------------------------------------------------------------


@pytest.fixture
def discord_globals() -> Iterator[None]:
    with kept_discord_endpoints():
        yield


def discord_interface(manager: SessionManager, port: int) -> DiscordInterface:
    config = DiscordConfig(
        token=DISCORD_TOKEN,
        api_url=f"http://127.0.0.1:{port}/api/v10",
        gateway_url=f"ws://127.0.0.1:{port}/gateway",
        allowed_user_ids=frozenset({OWNER}),
        edit_interval=0.05,
    )
    return harness.discord_interface(manager, config, backoff=FAST, liveness_interval=0.05)


@pytest.mark.usefixtures("discord_globals")
async def test_discord_unreachable_at_start_then_reachable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = closed_port()
    async with SessionManager(fake_launcher(tmp_path)) as manager:
        interface = discord_interface(manager, port)

        async with anyio.create_task_group() as group:
            await group.start(interface.run)  # returns while Discord refuses connections
            await wait_until(lambda: len(supervisor_lines(caplog, "discord")) >= 3)
            assert interface.health().state == "degraded"
            async with running_fake_discord(port) as fake:
                fake.refuse_gateway = 2  # then REST answers but the gateway does not, twice
                with anyio.fail_after(20):
                    await interface.wait_connected()
                assert fake.gateway_attempts == 3
                await fake.push_message("hello again", channel_id=500)
                await fake.wait_for(lambda: "echo: hello again" in fake.channel_view(500), 20)
                group.cancel_scope.cancel()
        seen = supervisor_lines(caplog, "discord")
        assert_one_line_each(seen)
        assert sum("502" in r.getMessage() for r in seen) == 2
        assert not [r for r in caplog.records if r.name.startswith("discord") and r.exc_info]


@pytest.mark.usefixtures("discord_globals")
async def test_discord_gateway_outage_after_connecting_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_fake_discord() as fake, SessionManager(fake_launcher(tmp_path)) as manager:
        interface = discord_interface(manager, fake.port)
        async with anyio.create_task_group() as group:
            await group.start(interface.run)
            await interface.wait_connected()
            fake.refuse_gateway = 3
            await fake.disconnect()
            await fake.wait_for(lambda: fake.resumes >= 1, 20)
            await fake.push_message("back?", channel_id=500)
            await fake.wait_for(lambda: "echo: back?" in fake.channel_view(500), 20)
            group.cancel_scope.cancel()
        reconnects = lines(caplog, "evie.platforms.discord", "reconnect")
        assert [f"reconnect {n} " in r.getMessage() for n, r in enumerate(reconnects, 1)] == [
            True
        ] * 3
        assert_one_line_each(reconnects)
        assert fake.identifies == 1  # the session was resumed, not started over
        assert not lines(caplog, "discord.client", "Attempting a reconnect")


# -- liveness: /healthz -------------------------------------------------------------------


async def test_healthz_answers_503_on_a_stalled_platform_or_a_lagging_loop(
    tmp_path: Path,
) -> None:
    import time

    import aiohttp

    from evie.http import health_problems, serve_http
    from evie.metrics import Metrics
    from evie.platforms.supervisor import Liveness

    now = [1000.0]
    liveness = Liveness("telegram", clock=lambda: now[0])
    metrics = Metrics()
    async with (
        SessionManager(fake_launcher(tmp_path)) as manager,
        serve_http(
            "127.0.0.1:0",
            manager,
            metrics,
            platforms=lambda: [liveness.snapshot()],
            stall_after=90,
            max_loop_lag=0.2,
        ) as port,
        aiohttp.ClientSession() as http,
    ):

        async def probe() -> tuple[int, list[str]]:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                return response.status, (await response.json())["problems"]

        assert await probe() == (200, [])  # just started: not silent for long yet
        now[0] += 91
        status, problems = await probe()
        assert status == 503
        assert problems[0].startswith("telegram: no good poll or heartbeat for 91s")
        liveness.ok()
        now[0] += 89
        assert await probe() == (200, [])
        liveness.give_up("bad token")
        now[0] += 2
        assert (await probe())[0] == 503
        async with anyio.create_task_group() as group:
            group.start_soon(metrics.loop_lag.watch)
            await anyio.sleep(0.1)
            time.sleep(1.0)  # noqa: ASYNC251 - the point: something blocks the loop
            lagging = health_problems([], metrics, stall_after=90, max_loop_lag=0.2)
            assert [p.split(" lags")[0] for p in lagging] == ["event loop"]
            await anyio.sleep(0.6)
            assert metrics.loop_lag.worst >= 0.5  # the ticker saw it too
            group.cancel_scope.cancel()


@pytest.mark.usefixtures("discord_globals")
async def test_a_platform_that_is_down_for_good_leaves_the_other_working(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with (
        running_fake_discord() as dc,
        running_fake_telegram() as fake,
        SessionManager(fake_launcher(tmp_path)) as manager,
    ):
        dc.content_intent_enabled = False  # not enabled in the developer portal
        discord_side = discord_interface(manager, dc.port)
        telegram_side = telegram_interface(manager, fake.base_url)
        async with anyio.create_task_group() as group:
            await group.start(telegram_side.run)
            finished = anyio.Event()

            async def run_discord() -> None:
                await discord_side.run()  # returns (does not raise) once it is down
                finished.set()

            group.start_soon(run_discord)
            with anyio.fail_after(20):
                await finished.wait()
            fake.push_message("telegram still works")
            await fake.wait_for(lambda: "echo: telegram still works" in fake.chat_view(OWNER))
            assert telegram_side.health().state == "up"
            group.cancel_scope.cancel()
    health = discord_side.health()
    assert health.state == "down"
    assert health.gave_up
    assert dc.identifies == 1  # not retried
    down = supervisor_lines(caplog, "discord")
    assert len(down) == 1
    assert "Privileged Gateway Intents" in down[0].getMessage()  # names the fix
    assert_one_line_each(down)


def test_below_debug_an_exception_is_one_redacted_line() -> None:
    import io

    from evie.logs import RedactSecrets, TextFormatter

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactSecrets([TOKEN], tracebacks=False))
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger("evie.test.oneline")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError(f"bad answer\n<html>502</html> for /bot{TOKEN}/getUpdates")
        except ValueError:
            logger.exception("telegram: polling failed")
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert text.count("\n") == 1
    assert "Traceback" not in text
    assert "polling failed (ValueError: bad answer <html>502</html> for /bot[redacted]" in text
    assert TOKEN not in text
