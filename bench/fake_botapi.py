"""The fake Bot API in its own process, with a driver that measures update → reply.

Run as ``python -m bench.fake_botapi PORTFILE``: serves tests.fake_telegram's
Bot API on 127.0.0.1, writes its port to PORTFILE, and adds two control
routes for the benchmark orchestrator:

* ``GET /_bench/first_poll`` answers once a client has called ``getUpdates``
  (with the wall-clock time it first did);
* ``POST /_bench/run?n=N&prefix=P&expect=E`` pushes N messages one after the
  other, each as soon as the previous one was answered, and returns the
  update → reply times in seconds. The reply is the sent or edited message
  whose text is ``E`` formatted with the message text; with ``expect=`` empty,
  any message sent.

Measuring here keeps the bot under test (evie, or the raw echo bot) alone in
its process: nothing of the fake or the driver runs on its event loop.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from aiohttp import web

from tests.fake_telegram import FakeTelegram
from tests.loopback import serve_on_loopback


class BenchTelegram(FakeTelegram):
    """Records every text the user would see, so a reply is found in O(1)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()
        self.first_poll: float | None = None
        self.polled = anyio.Event()
        self.watched_pid: int | None = None  # evie's, told by the bench after launch
        self.cpu_at_first_poll: float | None = None

    def _saw(self, params: dict[str, str]) -> None:
        self.seen.add(params.get("text", ""))

    async def _m_sendMessage(self, params: dict[str, str]) -> Any:
        result = await super()._m_sendMessage(params)
        self._saw(params)
        return result

    async def _m_editMessageText(self, params: dict[str, str]) -> Any:
        result = await super()._m_editMessageText(params)
        self._saw(params)
        return result

    async def _m_getUpdates(self, params: dict[str, str]) -> Any:
        if self.first_poll is None:
            self.first_poll = time.time()
            if self.watched_pid is not None:  # evie's CPU up to this very request
                try:
                    with open(f"/proc/{self.watched_pid}/stat") as f:  # noqa: ASYNC230 (/proc)
                        fields = f.read().rsplit(")", 1)[1].split()
                    ticks = int(fields[11]) + int(fields[12])
                    self.cpu_at_first_poll = ticks / os.sysconf("SC_CLK_TCK")
                except OSError:
                    pass
            self.polled.set()
        self.calls.clear()  # a long run must not grow the call log
        return await super()._m_getUpdates(params)


async def _first_poll(fake: BenchTelegram) -> web.Response:
    await fake.polled.wait()
    return web.json_response({"at": fake.first_poll, "cpu": fake.cpu_at_first_poll})


async def _watch(fake: BenchTelegram, request: web.Request) -> web.Response:
    fake.watched_pid = int(request.query["pid"])
    return web.json_response({"ok": True})


async def _run(fake: BenchTelegram, request: web.Request) -> web.Response:
    n = int(request.query.get("n", "10"))
    prefix = request.query.get("prefix", "ping")
    expect = request.query.get("expect", "echo: {}")
    timeout = float(request.query.get("timeout", "30"))
    samples: list[float] = []
    for i in range(n):
        text = f"{prefix} {i}"
        wanted = expect.format(text) if expect else None
        fake.seen.clear()
        fake.messages.clear()
        started = time.perf_counter()
        fake.push_message(text)
        with anyio.fail_after(timeout):
            while (wanted not in fake.seen) if wanted is not None else not fake.seen:
                await fake._changed.wait()
        samples.append(time.perf_counter() - started)
    return web.json_response({"samples": samples})


async def main(port_file: Path) -> None:
    fake = BenchTelegram()
    fake.max_poll = 25.0
    app = web.Application()
    app.router.add_route("*", "/bot{token}/{method}", fake._api)
    app.router.add_get("/_bench/first_poll", lambda _r: _first_poll(fake))
    app.router.add_post("/_bench/run", lambda r: _run(fake, r))
    app.router.add_post("/_bench/watch", lambda r: _watch(fake, r))
    async with serve_on_loopback(app) as fake.port:
        port_file.write_text(json.dumps({"port": fake.port}))  # noqa: ASYNC240
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1]))
