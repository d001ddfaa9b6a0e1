"""``firstline run`` as its own process, configured only through environment variables."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp

from tests.conftest import free_port
from tests.fakes.slack_api import FakeSlackApi, SlackRequests, dm_event
from tests.slack.conftest import ANN, L2, SECRET


async def test_firstline_run_answers_a_signed_dm(
    tmp_path: Path, slack_api: FakeSlackApi, process_env: dict[str, str]
) -> None:
    port = free_port()
    env = {
        **process_env,
        "SLACK_BOT_TOKEN": "xoxb-process-test",
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": slack_api.api_url,
        "SLACK_L2_CHANNEL": L2,
        "FIRSTLINE_HTTP_PORT": str(port),
    }
    firstline = Path(sys.executable).with_name("firstline")
    log_path = tmp_path / "firstline.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            str(firstline), "run", env=env, cwd=tmp_path, stdout=log, stderr=log
        )
    base = f"http://127.0.0.1:{port}"
    requests = SlackRequests(SECRET)
    try:
        async with aiohttp.ClientSession() as http:

            async def healthy() -> bool:
                try:
                    async with http.get(f"{base}/healthz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            deadline = asyncio.get_running_loop().time() + 40
            while not await healthy():
                assert proc.returncode is None, log_path.read_text()
                assert asyncio.get_running_loop().time() < deadline, log_path.read_text()
                await asyncio.sleep(0.1)

            req = requests.event(dm_event(ANN, "I forgot my password"))
            async with http.post(f"{base}/slack/events", data=req.body, headers=req.headers) as r:
                assert r.status == 200
            bad = requests.event(dm_event(ANN, "forged"), secret="wrong")
            async with http.post(f"{base}/slack/events", data=bad.body, headers=bad.headers) as r:
                assert r.status == 401
            await slack_api.wait_for(
                lambda: any(
                    "Did this solve" in str(c.params.get("blocks"))
                    for c in slack_api.posts("D" + ANN)
                ),
                within=20,
                what="the bot's answer in the DM",
            )
            assert slack_api.calls_to("auth.test")[0].token == "xoxb-process-test"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, log_path.read_text()
