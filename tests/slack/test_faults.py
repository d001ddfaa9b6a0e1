"""Platform and database faults on the Slack side: each is retried or told to L2.

HTTP answers come from the fake Web API (``FakeSlackApi.fail`` for 429/5xx; a per-channel
refusal is patched onto one fake method in the test); timeouts and connection resets from a
TCP proxy in front of it (``tests/fakes/tcp_proxy.py``); the database outage is a SQLite file
locked by another connection beyond the busy timeout.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import func, select

from bot import inbox
from bot.clock import FakeClock
from bot.outbox import Dispatcher
from bot.storage.models import Outbox, ProcessedEvent, User
from handlers.slack import NOT_NOW
from handlers.slack_sender import SlackSender
from tests.fakes.db_outage import SqliteLock, short_busy_timeout
from tests.fakes.slack_api import dm_event, slash_command
from tests.fakes.tcp_proxy import FaultyProxy
from tests.slack.conftest import ANN, BOB, L2, Slack, blocks_text
from tests.slack.test_flow import escalate


async def _rows(slack: Slack, status: str) -> list[Outbox]:
    async with slack.app.db.transaction() as s:
        return list((await s.execute(select(Outbox).where(Outbox.status == status))).scalars())


async def _later(slack: Slack, clock: FakeClock, seconds: float = 5) -> None:
    clock.advance(timedelta(seconds=seconds))
    await slack.settle()


def _refuse_posts_to(
    slack: Slack, monkeypatch: pytest.MonkeyPatch, channel: str, error: str
) -> Callable[[], None]:
    """``chat.postMessage`` to ``channel`` answers ``ok: false, error``; returns the undo."""
    real = slack.api._m_chat_postMessage

    def refusing(p: dict[str, Any]) -> dict[str, Any]:
        if p.get("channel") == channel:
            return {"ok": False, "error": error}
        return real(p)

    monkeypatch.setattr(slack.api, "_m_chat_postMessage", refusing)
    return lambda: monkeypatch.setattr(slack.api, "_m_chat_postMessage", real)


def _notices(slack: Slack, words: str) -> list[str]:
    """Bot posts under the newest card that contain ``words``."""
    return [t for t in slack.thread_texts() if words in t]


# ---------------------------------------------------------------------- HTTP answers


@pytest.mark.parametrize(("status", "error"), [(500, "fatal_error"), (503, "service_unavailable")])
async def test_5xx_is_retried_then_delivered_once(
    slack: Slack, clock: FakeClock, status: int, error: str
) -> None:
    slack.api.fail("chat.postMessage", status=status, error=error, retry_after=None, times=2)
    await slack.dm(ANN, "hello")
    assert not slack.dm_calls(ANN)
    [row] = await _rows(slack, "pending")
    assert row.attempts == 1 and str(status) in (row.last_error or "")
    await _later(slack, clock, 1)
    await _later(slack, clock, 2)
    assert len(slack.dm_calls(ANN)) == 1
    assert await _rows(slack, "failed") == []


async def test_a_deactivated_user_is_marked_unreachable_and_l2_is_told(
    slack: Slack, monkeypatch: pytest.MonkeyPatch
) -> None:
    await escalate(slack)
    _refuse_posts_to(slack, monkeypatch, "D" + ANN, "account_inactive")
    await slack.reply(BOB, "Hello Ann, are you there?")
    [failed] = await _rows(slack, "failed")
    assert failed.target == "D" + ANN and "account_inactive" in (failed.last_error or "")
    async with slack.app.db.transaction() as s:
        user = (await s.execute(select(User).where(User.external_id == ANN))).scalar_one()
    assert user.unreachable
    assert len(_notices(slack, "cannot be reached")) == 1


async def test_a_reply_slack_refuses_for_good_is_reported_on_the_ticket(
    slack: Slack, monkeypatch: pytest.MonkeyPatch
) -> None:
    await escalate(slack)
    before = len(slack.dm_calls(ANN))
    _refuse_posts_to(slack, monkeypatch, "D" + ANN, "invalid_blocks")
    await slack.reply(BOB, "Try this")
    assert len(slack.dm_calls(ANN)) == before
    notices = _notices(slack, "could not be delivered")
    assert len(notices) == 1 and "invalid_blocks" in notices[0]


@pytest.mark.parametrize("error", ["is_archived", "channel_not_found", "not_in_channel"])
async def test_a_desk_channel_that_is_gone_keeps_its_rows_until_fixed(
    slack: Slack, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, error: str
) -> None:
    await escalate(slack)
    undo = _refuse_posts_to(slack, monkeypatch, L2, error)
    await slack.dm(ANN, "Any news?")
    waiting = await _rows(slack, "pending")
    assert waiting and {r.target for r in waiting} == {L2}
    for _ in range(5):
        await _later(slack, clock, 300)
    assert await _rows(slack, "failed") == []
    undo()  # the admin restores the channel / invites the bot again
    await _later(slack, clock, 300)
    assert len(_notices(slack, "Any news?")) == 1
    assert await _rows(slack, "pending") == []


# ---------------------------------------------------------------------- the network


@pytest.fixture
async def proxied(slack: Slack) -> AsyncIterator[tuple[FaultyProxy, Dispatcher]]:
    """A second sender whose Web API calls go through a fault-injecting TCP proxy."""
    proxy = await FaultyProxy("127.0.0.1", slack.api.port).start()
    client = AsyncWebClient(
        token="xoxb-test-token",
        base_url=f"{proxy.url}/api/",
        timeout=0.3,  # type: ignore[arg-type]  # typed int; aiohttp takes float seconds
    )
    dispatcher = slack.app.dispatcher({"slack": SlackSender(client)})
    try:
        yield proxy, dispatcher
    finally:
        await proxy.close()


@pytest.mark.parametrize("mode", ["reset", "stall"])
async def test_connection_resets_and_timeouts_are_retried(
    slack: Slack,
    clock: FakeClock,
    proxied: tuple[FaultyProxy, Dispatcher],
    mode: Any,
) -> None:
    proxy, dispatcher = proxied
    await slack.post(slack.requests.event(dm_event(ANN, "hello")), settle=False)
    await slack.channel.wait_idle()
    proxy.set_mode(mode)
    await dispatcher.drain()
    assert not slack.dm_calls(ANN)
    [row] = await _rows(slack, "pending")
    assert row.attempts == 1
    assert ("Timeout" if mode == "stall" else "Client") in (row.last_error or "")
    proxy.set_mode("pass")
    clock.advance(timedelta(seconds=5))
    await dispatcher.drain()
    assert len(slack.dm_calls(ANN)) == 1


# ---------------------------------------------------------------------- commands


async def test_support_command_says_so_when_the_dm_cannot_be_opened(slack: Slack) -> None:
    slack.api.fail("conversations.open", status=503, error="service_unavailable", retry_after=None)
    status, body = await slack.post(slack.requests.command(slash_command(ANN, "printer jam")))
    assert status == 200 and NOT_NOW["en"] in body
    status, body = await slack.post(slack.requests.command(slash_command(ANN, "printer jam")))
    assert status == 200 and NOT_NOW["en"] not in body
    assert slack.dm_calls(ANN)


# ---------------------------------------------------------------------- the database


@pytest.fixture
async def outage(slack: Slack) -> AsyncIterator[SqliteLock]:
    """A lock on the app's SQLite file (not held yet); the app gives up on it quickly."""
    if not slack.app.db.sqlite:
        pytest.skip("the SQLite lock outage; PostgreSQL is covered in tests/test_db_outage.py")
    await short_busy_timeout(slack.app.db)
    # The lock is taken synchronously: let the channel's first inbox round finish first, or
    # its open transaction could wait on the blocked event loop.
    await slack.channel._replayed.wait()
    lock = SqliteLock(slack.app.settings.database.url)
    try:
        yield lock
    finally:
        lock.close()


async def _processed(slack: Slack) -> int:
    async with slack.app.db.transaction() as s:
        return int((await s.execute(select(func.count()).select_from(ProcessedEvent))).scalar_one())


async def test_an_event_during_a_database_outage_is_refused_and_slacks_retry_handled(
    slack: Slack, outage: SqliteLock
) -> None:
    req = slack.requests.event(dm_event(ANN, "hello"), event_id="EvOutage1")
    with outage:
        status, _ = await slack.post(req, settle=False)
    assert status >= 500  # not acknowledged: Slack delivers it again
    retry = slack.requests.event(dm_event(ANN, "hello"), event_id="EvOutage1", retry_num=1)
    status, _ = await slack.post(retry)
    assert status == 200
    assert await _processed(slack) == 1 and len(slack.dm_calls(ANN)) == 1


async def test_work_acknowledged_before_an_outage_is_replayed_once_the_database_is_back(
    slack: Slack, outage: SqliteLock
) -> None:
    """Past the ack budget Slack has its 200 and never re-sends: the request was parked in
    the inbox first, so work that then meets a database outage is replayed from there."""
    slack.channel.ack_budget = 0.05
    gate = slack.api.hold("users.info")
    status, _ = await slack.post(slack.requests.event(dm_event(ANN, "hello")), settle=False)
    assert status == 200
    assert len(await inbox.parked(slack.app.db, "slack")) == 1
    with outage:
        gate.set()
        await slack.channel.wait_idle()  # the work failed on the locked database
    assert await _processed(slack) == 0
    assert await slack.channel.replay_parked() == 1
    await slack.settle()
    assert await _processed(slack) == 1 and len(slack.dm_calls(ANN)) == 1
    assert "Which area" in blocks_text(slack.dm_calls(ANN)[0].params.get("blocks") or [])
    assert await inbox.parked(slack.app.db, "slack") == []


async def test_a_command_during_an_outage_tells_the_user_to_try_again(
    slack: Slack, outage: SqliteLock
) -> None:
    with outage:
        command = slack.requests.command(slash_command(ANN, "printer"))
        status, body = await slack.post(command, settle=False)
    assert status == 200 and NOT_NOW["en"] in body
    assert await _processed(slack) == 0
