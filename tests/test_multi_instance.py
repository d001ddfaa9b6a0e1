"""Two `firstline run` processes on one PostgreSQL database share the work, duplicating nothing.

Runs when ``FIRSTLINE_TEST_PG_URL`` names a PostgreSQL server (``.ci/run`` sets it when the
local server answers), on a database of its own there. Both processes serve the Slack HTTP endpoint
against one fake Slack Web API; events of the same users go to either process.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import func, select

from bot.storage.db import Database
from bot.storage.models import Conversation, Outbox, SlaNotification, Ticket
from config.settings import DEFAULTS_DIR
from tests.conftest import free_port
from tests.fakes.slack_api import FakeSlackApi, SlackRequests, block_actions, dm_event, find_element
from tests.slack.conftest import L2, SECRET, blocks_text

USERS = ["UAAA", "UBBB", "UCCC", "UDDD"]

FAST_SLA = """\
default_tier: enterprise
warn_fractions: [0.5]
manager_escalation_after: 4s
owner_silence_after: 1h
calendars:
  always:
    timezone: UTC
    hours: 24/7
tiers:
  enterprise:
    title: {en: Enterprise, ru: Корпоративный}
    calendar: always
targets:
  enterprise:
    critical: {first_response: 12s, next_response: 1m, resolution: 1h}
    high: {first_response: 12s, next_response: 1m, resolution: 1h}
    normal: {first_response: 12s, next_response: 1m, resolution: 1h}
    low: {first_response: 12s, next_response: 1m, resolution: 1h}
"""


class Proc:
    """One `firstline run` process."""

    def __init__(
        self, tmp_path: Path, name: str, api: FakeSlackApi, content: Path, database_url: str
    ) -> None:
        self.port = free_port()
        self.log = tmp_path / f"{name}.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "SLACK_"))},
            "SLACK_BOT_TOKEN": "xoxb-multi-instance",
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": api.api_url,
            "SLACK_L2_CHANNEL": L2,
            "FIRSTLINE_HTTP_PORT": str(self.port),
            "FIRSTLINE_CONTENT_DIR": str(content),
            "DATABASE_URL": database_url,
        }
        self.cwd = tmp_path
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/slack/events"

    async def start(self) -> None:
        firstline = Path(sys.executable).with_name("firstline")
        with self.log.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                str(firstline), "run", env=self.env, cwd=self.cwd, stdout=log, stderr=log
            )

    async def wait_healthy(self, http: aiohttp.ClientSession) -> None:
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            assert self.proc is not None and self.proc.returncode is None, self.log.read_text()
            try:
                async with http.get(f"http://127.0.0.1:{self.port}/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert asyncio.get_running_loop().time() < deadline, self.log.read_text()
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def _content(tmp_path: Path) -> Path:
    content = tmp_path / "content"
    content.mkdir()
    shutil.copy(DEFAULTS_DIR / "categories.yaml", content / "categories.yaml")
    (content / "sla.yaml").write_text(FAST_SLA, encoding="utf-8")
    (content / "customers.yaml").write_text("organisations: []\n", encoding="utf-8")
    return content


async def test_two_processes_on_one_postgresql_share_the_work(
    tmp_path: Path, postgresql_url: str
) -> None:
    api = await FakeSlackApi().start()
    content = _content(tmp_path)
    procs = [Proc(tmp_path, name, api, content, postgresql_url) for name in ("a", "b")]
    requests = SlackRequests(SECRET)
    try:
        await asyncio.gather(*(p.start() for p in procs))
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(p.wait_healthy(http) for p in procs))
            turn = 0

            async def post(body: Any) -> None:
                nonlocal turn
                proc = procs[turn % 2]  # alternate: the load balancer's round robin
                turn += 1
                async with http.post(proc.url, data=body.body, headers=body.headers) as r:
                    assert r.status == 200, await r.text()

            # 1. Bursts: each user's messages go to both processes at the same moment.
            async def burst(user: str) -> None:
                await asyncio.gather(*(
                    post(requests.event(dm_event(user, f"question {i} from {user}")))
                    for i in range(4)
                ))

            await asyncio.gather(*(burst(u) for u in USERS))
            await api.wait_for(
                lambda: all(len(api.posts("D" + u)) >= 4 for u in USERS), within=30,
                what="answers to the bursts",
            )
            await asyncio.sleep(1)

            # 2. Every user walks to a ticket, alternating processes at every step.
            async def press(user: str, label: str | None) -> None:
                channel = "D" + user
                for call in reversed(api.posts(channel)):
                    msg = api.message(channel, call.response["ts"])
                    actions = [b for b in msg.get("blocks", []) if b.get("type") == "actions"]
                    if not actions:
                        continue
                    if label is None:
                        block_id, el = actions[-1]["block_id"], actions[-1]["elements"][-1]
                    else:
                        block_id, el = find_element(msg, label)
                    payload = block_actions(user=user, channel=channel, message=msg,
                                            block_id=block_id, element=el)
                    await post(requests.interaction(payload))
                    return
                raise AssertionError(f"no buttons for {user}")

            def last_text(user: str) -> str:
                posts = api.posts("D" + user)
                return blocks_text(posts[-1].params.get("blocks") or []) if posts else ""

            async def answered(user: str, step: Any) -> None:
                """Do ``step`` and wait until the bot's reply reached the DM (delivery runs
                after the acknowledgement, in whichever process claims the outbox row)."""
                before = len(api.posts("D" + user))
                await step
                await api.wait_for(lambda: len(api.posts("D" + user)) > before, within=30,
                                   what=f"a reply to {user}")
                await asyncio.sleep(0.3)  # multi-message replies land together

            async def escalate(user: str) -> None:
                await answered(user, post(requests.command({
                    "command": "/support", "text": "new", "user_id": user, "user_name": user,
                    "trigger_id": f"trigger-{user}", "channel_id": "D" + user,
                    "team_id": "T0001",
                })))
                await answered(user, press(user, "Something else"))
                for _ in range(10):
                    if "Done" in str(api.posts("D" + user)[-1].params.get("blocks")):
                        break
                    await answered(user, press(user, None))
                await answered(user, post(requests.event(dm_event(user, "details: nothing works"))))
                await answered(user, press(user, "Done"))
                await answered(user, press(user, "Down for everyone"))
                assert "is created" in last_text(user), last_text(user)

            await asyncio.gather(*(escalate(u) for u in USERS))

            # 3. SLA: a 12 s first response; warning at 6 s, breach at 12 s, managers at 16 s.
            await api.wait_for(
                lambda: sum("Escalation to managers" in blocks_text(c.params.get("blocks") or [])
                            for c in api.posts(L2)) >= len(USERS),
                within=60, what="manager escalations for every ticket",
            )
            await asyncio.sleep(3)  # anything doubled would arrive by now
    finally:
        await asyncio.gather(*(p.stop() for p in procs))
        await api.close()

    for p in procs:
        assert p.proc is not None and p.proc.returncode == 0, p.log.read_text()

    # Every SLA notice once per ticket, though both processes ran the timers.
    notices: Counter[str] = Counter()
    for call in api.posts(L2):
        text = blocks_text(call.params.get("blocks") or [])
        for marker in ("SLA 50% used", "SLA breached", "Escalation to managers"):
            if marker in text:
                notices[marker] += 1
    assert notices == {m: len(USERS) for m in
                       ("SLA 50% used", "SLA breached", "Escalation to managers")}

    db = Database(postgresql_url)
    try:
        async with db.transaction() as s:
            # Each outbox row was delivered once: as many DM posts as "message" rows.
            for user in USERS:
                rows = (await s.execute(
                    select(func.count()).select_from(Outbox).where(
                        Outbox.target == "D" + user, Outbox.kind == "message",
                        Outbox.status == "sent")
                )).scalar_one()
                assert len(api.posts("D" + user)) == rows, user
            pending = (await s.execute(select(func.count()).select_from(Outbox).where(
                Outbox.status.in_(("pending", "sending"))))).scalar_one()
            assert pending == 0
            # No burst message was lost or handled twice: each text is in the dialog once.
            convs = (await s.execute(select(Conversation.problem, Conversation.details))).all()
            said = "\n".join(f"{p}\n{d}" for p, d in convs)
            for user in USERS:
                for i in range(4):
                    assert said.count(f"question {i} from {user}") == 1, (user, i, said)
            fired = (await s.execute(select(SlaNotification.kind, func.count()).where(
                SlaNotification.fired_at.is_not(None)).group_by(SlaNotification.kind))).all()
            assert {k: n for k, n in fired if k.startswith("first_response")} == {
                "first_response:warn:50": len(USERS), "first_response:breach": len(USERS),
                "first_response:manager": len(USERS)}
            assert (await s.execute(select(func.count()).select_from(Ticket))).scalar_one() == 4
    finally:
        await db.dispose()
