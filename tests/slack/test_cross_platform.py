"""A ticket crosses platforms: a non-Slack user with the desk in Slack, and the reverse."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sqlalchemy import select

from bot.app import App
from bot.clock import FakeClock
from bot.storage.models import Ticket
from config.settings import EscalationSettings
from handlers.memory import MemoryChannel
from tests.fakes.slack_api import FakeSlackApi
from tests.slack.conftest import ANN, BOB, L2, Slack, blocks_text, make_slack, slack_settings
from tests.slack.test_flow import escalate


async def _mem_escalate(mem: MemoryChannel, user: str = "tg_ann") -> Ticket:
    await mem.say(user, "I forgot my password")
    await mem.press(user, "Didn't help")
    for _ in range(12):
        last = mem.messages(user)[-1]
        if any("Done" in b["label"] for b in last.buttons()):
            break
        await mem.press_data(user, last.buttons()[-1]["data"])
    await mem.say(user, "Error 0x42 since this morning <!channel>")
    await mem.press(user, "Done")
    await mem.press(user, "Blocks my work")
    async with mem.app.db.transaction() as s:
        ticket = (await s.execute(select(Ticket))).scalar_one()
    return ticket


async def test_other_platform_user_with_the_desk_in_slack(slack: Slack, app: App) -> None:
    mem = MemoryChannel(app)
    ticket = await _mem_escalate(mem)
    assert ticket.destination == f"slack:{L2}"
    await slack.settle()
    card = blocks_text(slack.card()["blocks"])
    assert f"FL-{ticket.number}" in card and "memory:tg_ann" in card
    assert "&lt;!channel&gt;" in card, card  # the other platform's text is escaped too

    await slack.card_action(BOB, "Take")
    await mem.deliver()
    assert "Bob Agent" in mem.last("tg_ann")
    await slack.reply(BOB, "Please clear the cache & retry")
    await mem.deliver()
    assert mem.last("tg_ann").endswith("Please clear the cache & retry")  # plain text again
    await mem.say("tg_ann", "that worked")
    await slack.settle()
    assert "that worked" in slack.thread_texts()[-1]
    await slack.card_action(BOB, "Resolve")
    await mem.deliver()
    assert "rate" in mem.last("tg_ann")
    assert not [c for c in slack.api.posts() if str(c.params["channel"]).startswith("D")]


async def _app(database_url: str, api: FakeSlackApi, clock: FakeClock) -> AsyncIterator[App]:
    settings = slack_settings(api, database_url)
    settings.escalation = EscalationSettings(default_destination="memory:l2")
    app = await App.create(settings, clock)
    try:
        yield app
    finally:
        await app.close()


async def test_slack_user_with_the_desk_elsewhere(
    database_url: str, slack_api: FakeSlackApi, clock: FakeClock
) -> None:
    async for app in _app(database_url, slack_api, clock):
        async for slack in make_slack(app, slack_api):
            mem = MemoryChannel(app)
            ticket = await escalate(slack)
            assert ticket.destination == "memory:l2"
            await mem.deliver()
            assert mem.l2()[0].kind == "ticket_card"
            number = f"FL-{ticket.number}"
            await mem.agent("agent_kim", "claim", number)
            await mem.agent("agent_kim", "reply", number, "Hi <@U1>, try again")
            await slack.settle()
            last = slack.dm_calls(ANN)[-1]
            assert "Agent_Kim: Hi &lt;@U1&gt;, try again" in blocks_text(last.params["blocks"])
            assert not slack.api.posts(L2), "the Slack desk channel saw nothing"
