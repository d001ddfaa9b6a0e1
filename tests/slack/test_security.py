"""User text is data: no broadcasts, no mentions; only consultants act on tickets."""

from __future__ import annotations

import re

from sqlalchemy import select

from bot.app import App
from bot.clock import FakeClock
from bot.storage.models import Outbox, Ticket
from tests.fakes.slack_api import FakeSlackApi
from tests.slack.conftest import ANN, BOB, EVE, L2, Slack, dumps, make_slack, slack_settings
from tests.slack.test_flow import escalate

LIVE_MENTION = re.compile(r"<[!@#]|(?<![\w\u200b])@(channel|here|everyone)\b", re.IGNORECASE)


def _l2_payloads(slack: Slack) -> list[str]:
    calls = slack.api.calls_to("chat.postMessage") + slack.api.calls_to("chat.update")
    return [dumps(c.params) for c in calls if c.params.get("channel") == L2]


async def test_mentions_in_user_text_arrive_inert(slack: Slack) -> None:
    # Typed in the Slack client: real markup for @channel and a user mention, and a
    # literal "<!everyone>" that Slack escapes; plus a bare @here and an HTML-ish tag.
    hostile = (
        "I forgot my password <!channel> @here <@U123> "
        "&lt;!everyone&gt; &lt;b&gt;x&lt;/b&gt; &amp; co"
    )
    ticket = await escalate(slack, first=hostile)
    await slack.card_action(BOB, "Take")
    await slack.dm(ANN, "ping <!here|here> and <@UBOB|bob> &lt;@U999&gt;")
    payloads = _l2_payloads(slack)
    assert payloads
    for payload in payloads:
        assert not LIVE_MENTION.search(payload), payload
    relayed = slack.thread_texts()[-1]
    assert "@\u200bhere" in relayed and "@bob" in relayed and "&lt;@U999&gt;" in relayed
    card = dumps(slack.card())
    assert "@\u200bchannel" in card and "&lt;!everyone&gt;" in card and "&amp; co" in card
    assert "&lt;b&gt;x&lt;/b&gt;" in card
    # The core got plain text: what the user meant, without Slack's markup.
    async with slack.app.db.transaction() as s:
        tk = await s.get(Ticket, ticket.id)
    assert tk is not None and "@channel @here @U123 <!everyone>" in tk.subject
    # A consultant's reply cannot ping the user's DM either.
    await slack.reply(BOB, "<!channel> please check & retry")
    last = slack.dm_calls(ANN)[-1]
    assert not LIVE_MENTION.search(dumps(last.params))
    assert "@\u200bchannel please check &amp; retry" in dumps(last.params)
    await slack.reply(BOB, f"<@{ANN}> does it work now?")
    assert "Bob Agent: @Ann Lee does it work now?" in slack.last_dm(ANN)


async def test_non_member_click_is_refused_and_told(slack: Slack) -> None:
    ticket = await escalate(slack)
    await slack.card_action(EVE, "Take")
    async with slack.app.db.transaction() as s:
        tk = await s.get(Ticket, ticket.id)
        notices = (
            (await s.execute(select(Outbox).where(Outbox.kind == "agent_notice"))).scalars().all()
        )
    assert tk is not None and tk.owner_key is None
    # The interaction itself is answered (Eve cannot get an ephemeral in a channel she
    # is not in); the desk's queued notice is settled instead of retried forever.
    assert slack.api.responses and slack.api.responses[-1]["key"] == EVE
    assert slack.api.responses[-1]["response_type"] == "ephemeral"
    assert "consultant" in slack.api.responses[-1]["text"].lower()
    assert [n.status for n in notices] == ["sent"]
    refused = [c for c in slack.api.calls_to("chat.postEphemeral") if c.params["user"] == EVE]
    assert [c.response["error"] for c in refused] == ["user_not_in_channel"]
    # A member of the channel may act.
    await slack.card_action(BOB, "Take")
    async with slack.app.db.transaction() as s:
        tk = await s.get(Ticket, ticket.id)
    assert tk is not None and tk.owner_key == f"slack:{BOB}"


async def test_consultants_list_refuses_other_members(
    database_url: str, slack_api: FakeSlackApi, clock: FakeClock
) -> None:
    carol = "UCAROL"
    slack_api.add_user(carol, "carol")
    slack_api.members[L2].append(carol)
    app = await App.create(slack_settings(slack_api, database_url, consultants=[BOB]), clock)
    try:
        async for slack in make_slack(app, slack_api):
            await escalate(slack)
            dms = len(slack.dm_calls(ANN))
            await slack.reply(carol, "I'll take it from here")
            await slack.card_action(carol, "Resolve")
            assert len(slack.dm_calls(ANN)) == dms, "a non-consultant reached the user"
            ephemerals = [
                c for c in slack.api.calls_to("chat.postEphemeral") if c.params["user"] == carol
            ]
            assert len(ephemerals) == 2 and all(c.response["ok"] for c in ephemerals)
            assert ephemerals[0].params.get("thread_ts") == slack.card_ts()
            assert not slack.api.calls_to("conversations.members")  # the list decides
            await slack.reply(BOB, "On it")
            assert "Bob Agent: On it" in slack.last_dm(ANN)
    finally:
        await app.close()
