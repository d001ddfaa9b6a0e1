"""Slack fixtures: a fake Slack on 127.0.0.1, the real app, and the channel over HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from bot.app import App
from bot.clock import FakeClock
from bot.outbox import Dispatcher
from config.settings import DatabaseSettings, Settings, SlackSettings
from handlers.server import build_web
from handlers.slack import SlackChannel
from tests.fakes.slack_api import (
    ApiCall,
    FakeSlackApi,
    SignedRequest,
    SlackRequests,
    block_actions,
    dm_event,
    find_element,
    thread_reply,
)

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
L2 = "C0L2DESK"
L3 = "C0L3DESK"
ANN, BOB, EVE = "UANN", "UBOB", "UEVE"


def slack_settings(api: FakeSlackApi, database_url: str, **slack: Any) -> Settings:
    """Settings for Slack against the fake: HTTP mode unless ``app_token`` is given."""
    values: dict[str, Any] = {
        "bot_token": SecretStr("xoxb-test-token"),
        "signing_secret": SecretStr(SECRET),
        "api_url": api.api_url,
        "l2_channel": L2,
        "l3_channel": L3,
    }
    values.update(slack)
    return Settings(
        database=DatabaseSettings(url=database_url),
        slack=SlackSettings(**values),
    )


@pytest.fixture
async def slack_api() -> AsyncIterator[FakeSlackApi]:
    """The fake Slack with Ann (an end user), Bob (a consultant) and Eve (neither)."""
    api = await FakeSlackApi().start()
    api.add_user(ANN, "ann", real_name="Ann Lee")
    api.add_user(BOB, "bob", real_name="Bob Agent")
    api.add_user(EVE, "eve", real_name="Eve Outsider")
    api.members[L2] = ["UBOT", BOB]
    api.members[L3] = ["UBOT", BOB]
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
def settings(slack_api: FakeSlackApi, database_url: str) -> Settings:
    """The root ``app`` fixture builds the app from these."""
    return slack_settings(slack_api, database_url)


@dataclass
class Slack:
    """Drives the bot the way Slack does: signed requests in, Web API calls out."""

    app: App
    api: FakeSlackApi
    channel: SlackChannel
    http: TestClient[Any, Any]
    requests: SlackRequests
    dispatcher: Dispatcher

    async def post(self, req: SignedRequest, *, settle: bool = True) -> tuple[int, str]:
        """POST a signed request to ``/slack/events``; then deliver what it queued."""
        resp = await self.http.post("/slack/events", data=req.body.encode(), headers=req.headers)
        text = await resp.text()
        if settle:
            await self.settle()
        return resp.status, text

    async def settle(self) -> None:
        """Finish background work and drain the outbox (bounded)."""
        for _ in range(20):
            await self.channel.wait_idle()
            if not await self.dispatcher.drain():
                break

    async def dm(self, user: str, text: str, **kw: Any) -> tuple[int, str]:
        """``user`` writes ``text`` to the bot."""
        return await self.post(self.requests.event(dm_event(user, text, **kw)))

    def dm_calls(self, user: str) -> list[ApiCall]:
        """The bot's messages to ``user``'s DM."""
        return self.api.posts("D" + user)

    def dm_texts(self, user: str) -> list[str]:
        """Every text (all sections) the bot posted to ``user``."""
        return [blocks_text(c.params.get("blocks") or []) for c in self.dm_calls(user)]

    def last_dm(self, user: str) -> str:
        """The newest DM text."""
        texts = self.dm_texts(user)
        return texts[-1] if texts else ""

    async def press(self, user: str, label: str) -> tuple[int, str]:
        """``user`` presses the newest DM button whose label contains ``label``."""
        channel = "D" + user
        for call in reversed(self.dm_calls(user)):
            msg = self.api.message(channel, call.response["ts"])
            try:
                block_id, el = find_element(msg, label)
            except AssertionError:
                continue
            payload = block_actions(
                user=user, channel=channel, message=msg, block_id=block_id, element=el
            )
            return await self.post(self.requests.interaction(payload))
        raise AssertionError(f"no button {label!r} in {user}'s DM: {self.dm_texts(user)}")

    async def press_last_option(self, user: str) -> tuple[int, str]:
        """Press the last button of the newest DM message with buttons."""
        channel = "D" + user
        for call in reversed(self.dm_calls(user)):
            msg = self.api.message(channel, call.response["ts"])
            actions = [b for b in msg.get("blocks", []) if b.get("type") == "actions"]
            if actions:
                block = actions[-1]
                payload = block_actions(
                    user=user,
                    channel=channel,
                    message=msg,
                    block_id=block["block_id"],
                    element=block["elements"][-1],
                )
                return await self.post(self.requests.interaction(payload))
        raise AssertionError("no buttons")

    def card_ts(self, channel: str = L2) -> str:
        """The ts of the newest ticket card (a top-level bot post) in ``channel``."""
        cards = [c for c in self.api.posts(channel) if not c.params.get("thread_ts")]
        assert cards, f"no card in {channel}"
        return str(cards[-1].response["ts"])

    def card(self, channel: str = L2) -> dict[str, Any]:
        """The newest card's current state."""
        return self.api.message(channel, self.card_ts(channel))

    async def card_action(
        self, user: str, label: str, *, option: str | None = None, channel: str = L2
    ) -> tuple[int, str]:
        """``user`` uses a control of the card."""
        msg = self.card(channel)
        block_id, el = find_element(msg, label)
        payload = block_actions(
            user=user,
            channel=channel,
            message=msg,
            block_id=block_id,
            element=el,
            option=option,
            response_url=self.api.response_url(user),
        )
        return await self.post(self.requests.interaction(payload))

    async def reply(self, user: str, text: str, channel: str = L2) -> tuple[int, str]:
        """``user`` replies in the newest card's thread."""
        return await self.post(
            self.requests.event(thread_reply(user, channel, self.card_ts(channel), text))
        )

    def thread_texts(self, channel: str = L2) -> list[str]:
        """Texts the bot posted under the newest card."""
        ts = self.card_ts(channel)
        return [
            blocks_text(c.params.get("blocks") or []) for c in self.api.posts(channel, thread_ts=ts)
        ]


def blocks_text(blocks: list[dict[str, Any]]) -> str:
    """All mrkdwn/plain text of ``blocks`` joined (sections, fields, context)."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b.get("text"), dict):
            out.append(b["text"]["text"])
        for f in b.get("fields") or []:
            out.append(f["text"])
        for el in b.get("elements") or []:
            if el.get("type") in ("mrkdwn", "plain_text"):
                out.append(el["text"])
    return "\n".join(out)


def dumps(obj: Any) -> str:
    """JSON for substring assertions over whole payloads."""
    return json.dumps(obj, ensure_ascii=False)


async def make_slack(app: App, api: FakeSlackApi) -> AsyncIterator[Slack]:
    """The channel mounted on the shared server, with a dispatcher for its sender."""
    channel = SlackChannel(app)
    web_app = build_web(app)
    channel.mount(web_app)
    server = TestServer(web_app, host="127.0.0.1")
    http: TestClient[Any, Any] = TestClient(server)
    await http.start_server()
    await channel.start()
    dispatcher = app.dispatcher({"slack": channel.sender})
    try:
        yield Slack(app, api, channel, http, SlackRequests(SECRET), dispatcher)
    finally:
        await channel.stop()
        await http.close()


@pytest.fixture
async def slack(app: App, slack_api: FakeSlackApi, clock: FakeClock) -> AsyncIterator[Slack]:
    """The Slack channel in HTTP mode on the app fixture."""
    del clock  # the app fixture already uses it; named here for readers
    async for s in make_slack(app, slack_api):
        yield s
