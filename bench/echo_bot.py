"""The floor: the least a Telegram bot can do, raw aiohttp over the same fake Bot API.

``python -m bench.echo_bot BASE_URL TOKEN`` long-polls ``getUpdates`` and
answers each text message with ``sendMessage("echo: <text>")``: one HTTP
round trip in, one out, no framework, no agent. evie's update → reply time is
reported as a ratio of this one's.
"""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp


async def main(base: str, token: str) -> None:
    api = f"{base}/bot{token}"
    offset = 0
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.post(
                f"{api}/getUpdates", data={"offset": str(offset), "timeout": "25"}
            ) as response:
                body = json.loads(await response.read())
            for update in body.get("result", []):
                offset = update["update_id"] + 1
                message = update.get("message") or {}
                if "text" not in message:
                    continue
                data = {"chat_id": str(message["chat"]["id"]), "text": f"echo: {message['text']}"}
                async with http.post(f"{api}/sendMessage", data=data) as sent:
                    await sent.read()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
