"""Exactly once through crashes, on Slack: a post Slack accepted but the outbox never recorded
is found by its message metadata and recorded, never posted a second time."""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from bot import inbox
from bot.cli import status_lines, status_report
from bot.clock import FakeClock
from bot.outbox import Dispatcher, OutboxItem, SendResult
from bot.storage.models import Conversation, KbQuery, MessageLink, Outbox
from handlers.slack import SlackChannel
from handlers.slack_sender import EVENT_TYPE, SlackSender
from tests.fakes.slack_api import FakeSlackApi, dm_event, thread_reply
from tests.slack.conftest import ANN, BOB, L2, Slack, blocks_text
from tests.slack.test_flow import escalate

# A worker id of this host whose process is gone: its rows are reclaimed on the next pass.
DEAD = f"{socket.gethostname()}:{2**22 + 4321}"


class Killed(BaseException):
    """The process dies here (no ``except Exception`` in the dispatcher catches it)."""


class DiesAfterTheCall:
    """A sender whose process is SIGKILLed right after Slack accepted its call."""

    channel = "slack"

    def __init__(self, inner: SlackSender, *, before: bool = False) -> None:
        self.inner = inner
        self.before = before

    async def send(self, item: OutboxItem) -> SendResult:
        if not self.before:
            await self.inner.send(item)
        raise Killed


async def _die_sending(slack: Slack, *, before: bool = False) -> None:
    """One pass of a dispatcher that dies mid-send (its row stays claimed and in flight)."""
    dead = Dispatcher(
        slack.app.db,
        slack.app.clock,
        slack.app.desk,
        {"slack": DiesAfterTheCall(slack.channel.sender, before=before)},
        worker_id=DEAD,
    )
    with pytest.raises(Killed):
        await dead.run_once()


async def _restart(slack: Slack) -> int:
    """A new process's dispatcher: reclaims the dead worker's rows at once, then drains."""
    app = slack.app
    fresh = Dispatcher(app.db, app.clock, app.desk, {"slack": slack.channel.sender})
    return await fresh.drain()


async def _rows(slack: Slack) -> list[Outbox]:
    async with slack.app.db.transaction() as s:
        return list((await s.execute(select(Outbox).order_by(Outbox.id))).scalars())


def _history_reads(api: FakeSlackApi) -> list[dict[str, Any]]:
    return [
        c.params
        for c in api.calls
        if c.method in ("conversations.history", "conversations.replies")
    ]


async def test_every_post_names_its_outbox_row_and_step(slack: Slack) -> None:
    await escalate(slack)
    posts = slack.api.posts()
    assert posts
    for call in posts:
        meta = call.params["metadata"]
        assert meta["event_type"] == EVENT_TYPE
        assert isinstance(meta["event_payload"]["row"], int) and meta["event_payload"]["step"]
    [card] = [c for c in slack.api.posts(L2) if not c.params.get("thread_ts")]
    number = card.params["metadata"]["event_payload"]["ticket"]
    assert number.startswith("FL-") and number in blocks_text(card.params["blocks"])


async def test_a_reply_accepted_before_the_crash_is_recorded_not_posted_again(
    slack: Slack,
) -> None:
    await slack.post(slack.requests.event(dm_event(ANN, "hello")), settle=False)
    await _die_sending(slack)
    assert len(slack.dm_calls(ANN)) == 1  # Slack has it; the outbox does not know
    [row] = await _rows(slack)
    assert row.status == "sending" and row.result == {"inflight": True}
    # The user wrote again while the bot was down: history has their message on top.
    slack.api.add_message("D" + ANN, ANN, "are you there?")
    assert await _restart(slack) == 1
    assert len(slack.dm_calls(ANN)) == 1, "the reply was posted twice"
    [row] = await _rows(slack)
    ts = slack.dm_calls(ANN)[0].response["ts"]
    assert row.status == "sent" and row.result == {"done": {"post": ts}}
    [read] = _history_reads(slack.api)
    assert read["channel"] == "D" + ANN and read["include_all_metadata"] in ("1", "true", True)


async def test_a_row_that_never_reached_slack_is_posted_once(slack: Slack) -> None:
    await slack.dm(ANN, "hello")  # an earlier row, delivered and recorded
    first = len(slack.dm_calls(ANN))
    await slack.post(slack.requests.event(dm_event(ANN, "what is a proxy")), settle=False)
    pending = [r.id for r in await _rows(slack) if r.status == "pending"]
    assert pending
    await _die_sending(slack, before=True)
    assert len(slack.dm_calls(ANN)) == first
    await _restart(slack)
    posted = [c.params["metadata"]["event_payload"]["row"] for c in slack.dm_calls(ANN)]
    assert posted[first:] == pending  # each row once, in order
    # The look stopped at the older row's post: one page of history, nothing more.
    assert len(_history_reads(slack.api)) == 1


async def test_a_card_accepted_before_the_crash_is_not_duplicated(slack: Slack) -> None:
    """A duplicated card would split the ticket in two threads; it is found instead."""
    ticket = await escalate(slack)
    # The ticket's card row again, as if it had never been recorded (no card link).
    async with slack.app.db.transaction() as s:
        for link in (await s.execute(select(MessageLink))).scalars().all():
            await s.delete(link)
        s.add(
            Outbox(
                channel="slack",
                target=L2,
                kind="ticket_card",
                payload={},
                ticket_id=ticket.id,
                status="pending",
                attempts=0,
                next_attempt_at=slack.app.clock.now(),
                created_at=slack.app.clock.now(),
            )
        )
    await _die_sending(slack)
    cards = [c for c in slack.api.posts(L2) if not c.params.get("thread_ts")]
    assert len(cards) == 2  # the new card reached Slack; its row is in flight
    await _restart(slack)
    assert len([c for c in slack.api.posts(L2) if not c.params.get("thread_ts")]) == 2
    async with slack.app.db.transaction() as s:
        link = (
            await s.execute(select(MessageLink).where(MessageLink.role == "card"))
        ).scalar_one()
    assert link.message_key == cards[-1].response["ts"]
    # Replies under that card reach the user.
    await slack.reply(BOB, "Found it, try again now")
    assert "Found it, try again now" in slack.last_dm(ANN)


async def test_a_lost_answer_is_looked_up_and_the_first_step_is_not_repeated(
    slack: Slack,
) -> None:
    """A thread post whose card must be posted first: the card lands, the post is stored by
    Slack but its answer is a 500. The retry keeps the card (saved progress) and finds the
    post (metadata), so the thread has each once."""
    ticket = await escalate(slack)
    async with slack.app.db.transaction() as s:
        for link in (await s.execute(select(MessageLink))).scalars().all():
            await s.delete(link)
    calls_before = len(slack.api.posts(L2))
    slack.api.fail(
        "chat.postMessage",
        status=500,
        error="internal_error",
        after=True,
        match=lambda p: bool(p.get("thread_ts")),
    )
    await slack.dm(ANN, "any news?")
    row = next(r for r in await _rows(slack) if r.kind == "ticket_post")
    assert row.status == "pending" and row.result is not None
    assert row.result["doubt"] is True and set(row.result["done"]) == {"card"}
    slack.app.clock.advance(timedelta(seconds=5))  # type: ignore[attr-defined]
    await slack.settle()
    new = slack.api.posts(L2)[calls_before:]
    cards = [c for c in new if not c.params.get("thread_ts")]
    assert len(cards) == 1, [blocks_text(c.params["blocks"])[:40] for c in new]
    card_ts = cards[0].response["ts"]
    assert f"FL-{ticket.number}" in blocks_text(cards[0].params["blocks"])
    # What Slack stored under the new card (the 500 hid the post from the bot, not Slack).
    thread = [m for (c, _), m in slack.api.messages.items() if m.get("thread_ts") == card_ts]
    assert len(thread) == 1 and "any news?" in blocks_text(thread[0]["blocks"])
    assert not [c for c in new if c.params.get("thread_ts") and c.response.get("ok")]
    assert all(r.status == "sent" for r in await _rows(slack))
    assert [p["ts"] for p in _history_reads(slack.api)] == [card_ts]
    async with slack.app.db.transaction() as s:
        relay = (
            await s.execute(select(MessageLink).where(MessageLink.role == "relay"))
        ).scalar_one()
    assert relay.message_key == thread[0]["ts"]


async def test_fake_history_shows_metadata_only_when_asked(slack_api: FakeSlackApi) -> None:
    """The fake behaves like the Web API: metadata needs ``include_all_metadata``; history is
    newest first without thread replies; replies are the thread oldest first."""
    from slack_sdk.web.async_client import AsyncWebClient

    client = AsyncWebClient(token="xoxb-t", base_url=slack_api.api_url)
    meta = {"event_type": "x", "event_payload": {"n": 1}}
    a = (await client.chat_postMessage(channel="C1", text="a", metadata=meta))["ts"]
    r = (await client.chat_postMessage(channel="C1", text="r", thread_ts=a))["ts"]
    b = (await client.chat_postMessage(channel="C1", text="b"))["ts"]
    plain = await client.conversations_history(channel="C1")
    assert [m["ts"] for m in plain["messages"]] == [b, a]
    assert all("metadata" not in m for m in plain["messages"])
    full = await client.conversations_history(channel="C1", include_all_metadata=True)
    assert full["messages"][1]["metadata"] == meta
    thread = await client.conversations_replies(channel="C1", ts=a, include_all_metadata=True)
    assert [m["ts"] for m in thread["messages"]] == [a, r]
    page = await client.conversations_history(channel="C1", limit=1, oldest=a)
    assert [m["ts"] for m in page["messages"]] == [b] and not page["has_more"]


# ---------------------------------------------------------------------- replies under copies


async def _bot_post(slack: Slack, **kw: Any) -> str:
    """A message the bot posted in L2 outside the outbox's records (a copy, a legacy post)."""
    resp = await slack.channel.client.chat_postMessage(channel=L2, **kw)
    return str(resp["ts"])


async def _reply_under(slack: Slack, ts: str, text: str, parent: str | None = "UBOT") -> None:
    await slack.post(slack.requests.event(thread_reply(BOB, L2, ts, text, parent_user_id=parent)))


async def test_a_reply_under_an_unrecorded_card_copy_reaches_the_user(slack: Slack) -> None:
    ticket = await escalate(slack)
    card = slack.card()
    # A copy of the card Slack accepted but the outbox never recorded (before metadata
    # lookups existed, or from a restored backup): it names its ticket in its metadata.
    copy = await _bot_post(
        slack,
        text="card",
        blocks=card["blocks"],
        metadata={"event_type": EVENT_TYPE, "event_payload": {"row": 999, "step": "card",
                                                              "ticket": f"FL-{ticket.number}"}},
    )
    await _reply_under(slack, copy, "Try logging in again now")
    assert "Try logging in again now" in slack.last_dm(ANN)
    async with slack.app.db.transaction() as s:
        adopted = (
            await s.execute(select(MessageLink).where(MessageLink.role == "thread"))
        ).scalar_one()
    assert adopted.message_key == copy and adopted.ticket_id == ticket.id
    # The thread is known now: the next reply needs no look at its root.
    reads = len(_history_reads(slack.api))
    await _reply_under(slack, copy, "And clear the cache")
    assert "And clear the cache" in slack.last_dm(ANN)
    assert len(_history_reads(slack.api)) == reads


async def test_a_legacy_card_without_metadata_is_matched_by_its_controls(slack: Slack) -> None:
    await escalate(slack)
    card = slack.card()
    copy = await _bot_post(slack, text="card", blocks=card["blocks"])
    await _reply_under(slack, copy, "Legacy thread reply", parent=None)
    assert "Legacy thread reply" in slack.last_dm(ANN)


async def test_a_reply_under_a_bot_post_that_is_no_card_is_answered_not_dropped(
    slack: Slack,
) -> None:
    await escalate(slack)
    before = len(slack.dm_calls(ANN))
    notice = await _bot_post(slack, text="SLA breached for FL-1001")
    await _reply_under(slack, notice, "Who takes this one?")
    assert len(slack.dm_calls(ANN)) == before  # nothing reached the customer
    [told] = [c for c in slack.api.calls_to("chat.postEphemeral") if c.params["user"] == BOB][-1:]
    assert "Not delivered" in told.params["text"] and told.params["thread_ts"] == notice


async def test_chatter_under_a_persons_message_stays_silent_and_costs_no_lookup(
    slack: Slack,
) -> None:
    await escalate(slack)
    ephemerals = len(slack.api.calls_to("chat.postEphemeral"))
    ts = slack.api.add_message(L2, BOB, "lunch?")
    await _reply_under(slack, ts, "yes", parent=BOB)
    assert len(slack.api.calls_to("chat.postEphemeral")) == ephemerals
    assert not _history_reads(slack.api)


# ---------------------------------------------------------------------- slow intake


async def _conversations(slack: Slack) -> int:
    async with slack.app.db.transaction() as s:
        return len((await s.execute(select(Conversation))).scalars().all())


async def test_slow_work_is_parked_before_the_ack_and_replayed_after_a_crash(
    slack: Slack,
) -> None:
    slack.channel.ack_budget = 0.05
    gate = slack.api.hold("users.info")
    status, _ = await slack.post(
        slack.requests.event(dm_event(ANN, "hello"), event_id="Ev0SLOW1"), settle=False
    )
    assert status == 200  # acknowledged while the work still waits for users.info ...
    parked = await inbox.parked(slack.app.db, "slack")
    assert [r.event_id for r in parked] == ["Ev0SLOW1"]
    assert parked[0].body["user"] == ANN  # what /forget finds it by
    # ... and then the process is killed: the work in flight is gone.
    for task in list(slack.channel._tasks):
        task.cancel()
    await asyncio.sleep(0.01)
    gate.set()
    assert await _conversations(slack) == 0
    # The next process replays what was acknowledged but never committed.
    fresh = SlackChannel(slack.app)
    assert await fresh.replay_parked() == 1
    assert await _conversations(slack) == 1
    await slack.dispatcher.drain()
    assert slack.dm_calls(ANN)
    assert await inbox.parked(slack.app.db, "slack") == []
    # Slack's own late retry of the event is still a no-op.
    replies = len(slack.dm_calls(ANN))
    await slack.post(slack.requests.event(dm_event(ANN, "hello"), event_id="Ev0SLOW1", retry_num=1))
    assert len(slack.dm_calls(ANN)) == replies


async def test_slow_work_that_finishes_leaves_nothing_parked(slack: Slack) -> None:
    slack.channel.ack_budget = 0.05
    gate = slack.api.hold("users.info")
    await slack.post(slack.requests.event(dm_event(ANN, "hello")), settle=False)
    assert len(await inbox.parked(slack.app.db, "slack")) == 1
    gate.set()
    await slack.settle()
    assert await _conversations(slack) == 1
    assert await inbox.parked(slack.app.db, "slack") == []
    assert await SlackChannel(slack.app).replay_parked() == 0


async def test_without_a_durable_park_the_ack_waits_for_the_work(
    slack: Slack, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def cannot_park(*_a: Any, **_kw: Any) -> None:
        raise OSError("database is locked")

    monkeypatch.setattr(inbox, "park", cannot_park)
    slack.channel.ack_budget = 0.05
    gate = slack.api.hold("users.info")
    posting = asyncio.ensure_future(
        slack.post(slack.requests.event(dm_event(ANN, "hello")), settle=False)
    )
    await asyncio.sleep(0.3)
    assert not posting.done()  # no "200" for work that is neither done nor parked
    gate.set()
    status, _ = await posting
    assert status == 200 and await _conversations(slack) == 1


async def _queries(slack: Slack) -> list[str]:
    async with slack.app.db.transaction() as s:
        return [q.query for q in (await s.execute(select(KbQuery).order_by(KbQuery.id))).scalars()]


async def test_a_parked_message_is_not_overtaken_by_the_next_one(slack: Slack) -> None:
    """Slack stays slow on the first users.info: the first message overruns the budget and is
    acknowledged; the user's next one, although fast, is handled after it."""
    slack.channel.ack_budget = 0.05
    first = [True]

    def slow_once(method: str, _p: dict[str, Any]) -> float:
        if method == "users.info" and first[0]:
            first[0] = False
            return 0.5
        return 0.0

    slack.api.delay = slow_once
    await slack.post(slack.requests.event(dm_event(ANN, "I forgot my password")), settle=False)
    await slack.post(slack.requests.event(dm_event(ANN, "how do I set up the vpn")))
    assert await _queries(slack) == ["I forgot my password", "how do I set up the vpn"]


async def test_after_a_crash_parked_messages_go_before_new_ones(slack: Slack) -> None:
    slack.channel.ack_budget = 0.05
    gate = slack.api.hold("users.info")
    await slack.post(slack.requests.event(dm_event(ANN, "I forgot my password")), settle=False)
    for task in list(slack.channel._tasks):  # the process dies with the work in flight
        task.cancel()
    await asyncio.sleep(0.01)
    gate.set()
    # The next process: the user's next message arrives while the parked one is replayed.
    fresh = SlackChannel(slack.app)
    nxt = dm_event(ANN, "how do I set up the vpn")
    try:
        await asyncio.gather(fresh._message(nxt, "Ev0NEXT"), fresh.start())
        await fresh.wait_idle()
    finally:
        await fresh.stop()
    assert await _queries(slack) == ["I forgot my password", "how do I set up the vpn"]


async def test_a_request_that_always_fails_is_retried_with_growing_waits_then_given_up(
    slack: Slack, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A parked request whose replay can never succeed (here: a body the handler cannot
    read) is retried later each time and given up after MAX_REPLAYS: kept for the admin,
    counted by ``firstline status``, and no longer in the way of the requests behind it."""
    await inbox.park(slack.app.db, "slack", "EvPoison", "message", {"bad": 1}, clock.now())
    channel = SlackChannel(slack.app)
    assert await channel.replay_parked() == 0  # failed once ...
    assert await channel.replay_parked() == 0
    [row] = await inbox.parked(slack.app.db, "slack")
    assert row.attempts == 1  # ... and not tried again before its wait is over
    for n in range(2, inbox.MAX_REPLAYS + 1):
        clock.advance(inbox.FIRST_RETRY * 2 ** (n - 1))
        await channel.replay_parked()
    assert await inbox.parked(slack.app.db, "slack") == []
    assert await inbox.inbox_stats(slack.app.db) == {"parked": 0, "given_up": 1}
    assert any("given up" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    # A request parked after it is replayed at once; the given-up one stays untouched.
    await inbox.park(
        slack.app.db,
        "slack",
        "EvLater",
        "message",
        {"event": dm_event(ANN, "second"), "user": ANN},
        clock.now(),
    )
    assert await channel.replay_parked() == 1
    assert await inbox.inbox_stats(slack.app.db) == {"parked": 0, "given_up": 1}
    report = await status_report(slack.app.db, clock.now())
    assert report["inbox"] == {"parked": 0, "given_up": 1}
    assert any("1 given up" in line for line in status_lines(report))
