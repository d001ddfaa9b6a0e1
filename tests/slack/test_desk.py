"""The L2 desk in Slack: card controls, edits, files, deleted cards, 429s, the Home tab."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

from slack_sdk.errors import SlackApiError
from sqlalchemy import select

from bot.clock import FakeClock
from bot.storage.models import KbDraft, MessageLink, Outbox, Ticket, TicketMessage
from handlers.slack_sender import failure
from tests.fakes.slack_api import message_changed, message_deleted, new_ts
from tests.slack.conftest import ANN, BOB, L2, L3, Slack, blocks_text
from tests.slack.test_flow import escalate


async def _ticket(slack: Slack, ticket_id: int) -> Ticket:
    async with slack.app.db.transaction() as s:
        tk = await s.get(Ticket, ticket_id)
    assert tk is not None
    return tk


async def test_card_controls_priority_wait_kb_and_l3(slack: Slack) -> None:
    ticket = await escalate(slack)
    await slack.card_action(BOB, "Priority", option="critical")
    assert (await _ticket(slack, ticket.id)).priority == "critical"
    assert '"value": "critical"' in str(slack.card()["blocks"]).replace("'", '"')
    await slack.card_action(BOB, "Take")
    await slack.reply(BOB, "Reset it from the admin console")
    await slack.card_action(BOB, "Ask customer")
    tk = await _ticket(slack, ticket.id)
    assert tk.status == "waiting" and tk.owner_key == f"slack:{BOB}"
    assert "paused" in blocks_text(slack.card()["blocks"])
    await slack.card_action(BOB, "Save to KB")
    async with slack.app.db.transaction() as s:
        draft = (await s.execute(select(KbDraft))).scalar_one()
    assert draft.answer == "Reset it from the admin console"
    await slack.card_action(BOB, "Escalate to L3")
    tk = await _ticket(slack, ticket.id)
    assert tk.level == "l3" and tk.l3_destination == f"slack:{L3}"
    l3_card = slack.card(L3)  # a fresh card in the L3 channel, then its thread works too
    assert f"FL-{ticket.number}" in blocks_text(l3_card["blocks"])
    await slack.reply(BOB, "L3 here: fixed on our side", channel=L3)
    assert "fixed on our side" in slack.last_dm(ANN)


async def test_edits_deletions_and_files_reach_the_thread(slack: Slack) -> None:
    ticket = await escalate(slack)
    await slack.card_action(BOB, "Take")
    slack.api.files["F0SCREEN"] = {
        "id": "F0SCREEN",
        "name": "screen.png",
        "permalink": "https://fake.slack.test/files/F0SCREEN",
    }
    shot = {"id": "F0SCREEN", "name": "screen.png", "mimetype": "image/png", "size": 2048}
    await slack.dm(ANN, "here is the error", files=[shot])
    assert "<https://fake.slack.test/files/F0SCREEN|screen.png>" in slack.thread_texts()[-1]
    async with slack.app.db.transaction() as s:
        tm = (
            await s.execute(select(TicketMessage).where(TicketMessage.text == "here is the error"))
        ).scalar_one()
    assert tm.attachments[0]["file_id"] == "F0SCREEN" and tm.attachments[0]["kind"] == "photo"

    ts = new_ts()
    await slack.dm(ANN, "it fails on Tuesdays", ts=ts)
    edit = message_changed(ANN, "D" + ANN, ts, "it fails on Tuesdays", "it fails on Mondays")
    await slack.post(slack.requests.event(edit))
    assert "edited" in slack.thread_texts()[-1] and "Mondays" in slack.thread_texts()[-1]
    posts = len(slack.thread_texts())
    unfurl = message_changed(ANN, "D" + ANN, ts, "it fails on Mondays", "it fails on Mondays")
    await slack.post(slack.requests.event(unfurl))
    assert len(slack.thread_texts()) == posts, "an unchanged text is not an edit"
    await slack.post(slack.requests.event(message_deleted(ANN, "D" + ANN, ts, "Mondays")))
    assert "deleted" in slack.thread_texts()[-1]
    await slack.post(slack.requests.event(message_deleted(ANN, "D" + ANN, "1.000009", "x")))
    assert len(slack.thread_texts()) == posts + 1, "a message never relayed is not news"

    reply_ts = new_ts()
    event = {
        "type": "message",
        "channel": L2,
        "channel_type": "channel",
        "user": BOB,
        "text": "Try restarting",
        "ts": reply_ts,
        "thread_ts": slack.card_ts(),
    }
    await slack.post(slack.requests.event(event))
    fix = message_changed(
        BOB, L2, reply_ts, "Try restarting", "Try rebooting", channel_type="channel"
    )
    fix["message"]["thread_ts"] = slack.card_ts()
    await slack.post(slack.requests.event(fix))
    assert "✏️ Bob Agent: Try rebooting" in slack.last_dm(ANN)
    assert (await _ticket(slack, ticket.id)).status == "in_progress"


async def test_deleted_card_is_posted_again(slack: Slack) -> None:
    ticket = await escalate(slack)
    old = slack.card_ts()
    del slack.api.messages[(L2, old)]  # someone deleted the card in Slack
    await slack.dm(ANN, "any news?")  # the desk re-renders the card
    new = slack.card_ts()
    assert new != old
    async with slack.app.db.transaction() as s:
        cards = (
            (
                await s.execute(
                    select(MessageLink.message_key).where(
                        MessageLink.ticket_id == ticket.id, MessageLink.role == "card"
                    )
                )
            )
            .scalars()
            .all()
        )
    assert list(cards) == [new]
    await slack.reply(BOB, "Looking now")
    assert "Looking now" in slack.last_dm(ANN)


async def test_429_waits_for_retry_after_then_delivers(slack: Slack, clock: FakeClock) -> None:
    slack.api.fail("chat.postMessage", retry_after=7)
    await slack.dm(ANN, "hello")
    assert not slack.dm_calls(ANN)
    async with slack.app.db.transaction() as s:
        row = (await s.execute(select(Outbox).where(Outbox.target == "D" + ANN))).scalars().first()
    assert row is not None and row.status == "pending" and "429" in (row.last_error or "")
    assert row.next_attempt_at == clock.now() + timedelta(seconds=7)
    clock.advance(timedelta(seconds=6))
    await slack.settle()
    assert not slack.dm_calls(ANN), "retried before Retry-After"
    clock.advance(timedelta(seconds=1))
    await slack.settle()
    assert "Which area" in slack.dm_texts(ANN)[0]


def _api_error(status: int, error: str, headers: dict[str, str] | None = None) -> SlackApiError:
    resp = SimpleNamespace(status_code=status, data={"ok": False, "error": error}, headers=headers)
    return SlackApiError("failed", resp)  # type: ignore[no-untyped-call]


def test_failure_mapping() -> None:
    limited = failure("message", _api_error(429, "ratelimited", {"Retry-After": "30"}))
    assert not limited.ok and limited.retry_after == 30.0 and not limited.permanent
    gone = failure("message", _api_error(200, "account_inactive"))
    assert gone.permanent and gone.unreachable
    assert failure("ticket_card", _api_error(200, "invalid_blocks")).permanent
    # A bot not yet invited to the L2 channel: the admin can fix it, so keep retrying.
    not_in = failure("ticket_card", _api_error(200, "not_in_channel"))
    assert not not_in.permanent and not not_in.unreachable
    assert not failure("notify", _api_error(500, "fatal_error")).permanent


async def test_home_tab_lists_open_tickets(slack: Slack) -> None:
    event = {"type": "app_home_opened", "user": ANN, "channel": "D" + ANN, "tab": "home"}
    await slack.post(slack.requests.event(event))
    assert "no open tickets" in str(slack.api.views[ANN])
    ticket = await escalate(slack)
    await slack.post(slack.requests.event(event))
    view = slack.api.views[ANN]
    text = blocks_text(view["blocks"])
    assert view["type"] == "home"
    assert f"FL-{ticket.number}" in text and "waiting for an engineer" in text
    assert "⏱" in text  # the SLA: when the first response is due
    messages_tab = {**event, "tab": "messages"}
    calls = len(slack.api.calls_to("views.publish"))
    await slack.post(slack.requests.event(messages_tab))
    assert len(slack.api.calls_to("views.publish")) == calls
