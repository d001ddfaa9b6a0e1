"""Protocol correctness: signatures, retries, acks, echoes and what we do not use."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select

from bot.storage.models import Conversation, ProcessedEvent
from tests.fakes.slack_api import dm_event, slash_command, thread_reply
from tests.slack.conftest import ANN, L2, Slack


async def _processed(slack: Slack) -> int:
    async with slack.app.db.transaction() as s:
        return int((await s.execute(select(func.count()).select_from(ProcessedEvent))).scalar_one())


async def test_bad_signature_and_stale_timestamp_are_401(slack: Slack) -> None:
    event = dm_event(ANN, "hello")
    status, _ = await slack.post(slack.requests.event(event, secret="not-the-secret"))
    assert status == 401
    old = int(time.time()) - 6 * 60
    status, _ = await slack.post(slack.requests.event(event, timestamp=old))
    assert status == 401
    req = slack.requests.event(event)
    req.headers.pop("X-Slack-Signature")
    status, _ = await slack.post(req)
    assert status == 401
    tampered = slack.requests.interaction({"type": "block_actions", "actions": []})
    tampered.body = tampered.body.replace("block_actions", "view_submission")
    status, _ = await slack.post(tampered)
    assert status == 401
    assert await _processed(slack) == 0
    assert not slack.dm_calls(ANN)


async def test_url_verification_handshake(slack: Slack) -> None:
    status, body = await slack.post(slack.requests.url_verification("c-123"))
    assert status == 200 and "c-123" in body


async def test_retried_event_is_processed_once(slack: Slack) -> None:
    event = dm_event(ANN, "hello there")
    first = slack.requests.event(event, event_id="Ev0RETRY1")
    retry = slack.requests.event(event, event_id="Ev0RETRY1", retry_num=1)
    assert (await slack.post(first))[0] == 200
    replies = len(slack.dm_calls(ANN))
    assert replies >= 1
    assert (await slack.post(retry))[0] == 200
    assert (await slack.post(slack.requests.event(event, event_id="Ev0RETRY1", retry_num=2)))[
        0
    ] == 200
    assert len(slack.dm_calls(ANN)) == replies
    assert await _processed(slack) == 1


async def test_unused_events_subtypes_and_echoes_are_acked_and_ignored(slack: Slack) -> None:
    other_events: list[dict[str, Any]] = [
        {"type": "reaction_added", "user": ANN, "reaction": "+1", "item": {}},
        {"type": "member_joined_channel", "user": ANN, "channel": L2},
        {"type": "app_mention", "user": ANN, "text": "<@UBOT> hi", "channel": L2, "ts": "1.1"},
        {**dm_event(ANN, ""), "subtype": "channel_join"},
        {**dm_event(ANN, "huddle"), "subtype": "huddle_thread"},
        # The bot's own DM echo and its own card update must not loop back.
        {**dm_event("UBOT", "I am the bot"), "bot_id": "BBOT"},
        {**thread_reply("UBOT", L2, "1.000001", "a notice"), "bot_id": "BBOT"},
        {**dm_event(ANN, "another bot"), "subtype": "bot_message", "bot_id": "B0OTHER"},
        # Channel chatter that is not a reply under a card.
        {**dm_event(ANN, "chatter", channel=L2), "channel_type": "channel"},
        # A channel we do not serve.
        {**dm_event(ANN, "elsewhere", channel="C0RANDOM"), "channel_type": "channel"},
    ]
    for ev in other_events:
        status, _ = await slack.post(slack.requests.event(ev))
        assert status == 200, ev
    changed = {
        "type": "message",
        "subtype": "message_changed",
        "channel": L2,
        "channel_type": "channel",
        "ts": "5.5",
        "message": {"bot_id": "BBOT", "user": "UBOT", "text": "card v2", "ts": "1.1"},
        "previous_message": {"bot_id": "BBOT", "user": "UBOT", "text": "card", "ts": "1.1"},
    }
    assert (await slack.post(slack.requests.event(changed)))[0] == 200
    # Interactivity and commands we did not ask for are acknowledged, never 404.
    for payload in (
        {
            "type": "view_submission",
            "user": {"id": ANN},
            "view": {"type": "modal", "callback_id": "x", "id": "V1"},
        },
        {"type": "shortcut", "callback_id": "whatever", "user": {"id": ANN}},
        {
            "type": "block_actions",
            "user": {"id": ANN},
            "actions": [{"action_id": "someone_elses", "block_id": "b", "action_ts": "1"}],
        },
    ):
        status, _ = await slack.post(slack.requests.interaction(payload))
        assert status == 200, payload
    assert await _processed(slack) == 0
    assert not slack.api.posts()


async def test_slow_work_is_acknowledged_within_budget_and_still_processed(
    slack: Slack,
) -> None:
    """The ack never waits for slow work (here: Slack's own users.info); the work completes."""
    slack.channel.ack_budget = 0.05
    gate = slack.api.hold("users.info")
    started = time.monotonic()
    status, _ = await slack.post(slack.requests.event(dm_event(ANN, "hello")), settle=False)
    assert status == 200
    assert time.monotonic() - started < 2.5
    assert await _processed(slack) == 0  # still waiting for users.info
    gate.set()
    await slack.settle()
    async with slack.app.db.transaction() as s:
        assert (await s.execute(select(func.count()).select_from(Conversation))).scalar_one() == 1
    assert slack.dm_calls(ANN)


async def test_support_command_answers_in_the_dm(slack: Slack) -> None:
    status, _ = await slack.post(slack.requests.command(slash_command(ANN)))
    assert status == 200
    assert "support bot" in slack.last_dm(ANN)
    await slack.post(slack.requests.command(slash_command(ANN, "status")))
    assert "no open tickets" in slack.last_dm(ANN)
    await slack.post(slack.requests.command(slash_command(ANN, "I forgot my password")))
    assert "Did this solve" in slack.last_dm(ANN)
    opened = slack.api.calls_to("conversations.open")
    assert opened and opened[0].params["users"] == ANN


async def test_after_stop_requests_get_503_and_slacks_retry_is_handled_later(
    slack: Slack,
) -> None:
    """During shutdown (the last replies still going out) nothing new is taken in: Slack
    hears 503 and retries the event, which the next process handles once."""
    await slack.channel.stop()
    event = dm_event(ANN, "hello while stopping")
    status, _ = await slack.post(slack.requests.event(event, event_id="Ev0STOP1"))
    assert status == 503
    assert (await slack.http.get("/healthz")).status == 200  # the server's flag, not ours
    assert await _processed(slack) == 0
    slack.channel._stopping = False  # the next process
    retry = slack.requests.event(event, event_id="Ev0STOP1", retry_num=1)
    assert (await slack.post(retry))[0] == 200
    assert await _processed(slack) == 1
