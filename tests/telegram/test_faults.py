"""Platform and database faults on the Telegram side: each is retried or told to L2.

The fake Bot API injects the faults (``fail_next`` for HTTP answers, ``break_next`` for
timeouts and connection resets); the database outage is a SQLite file locked by another
connection beyond the busy timeout (``tests/fakes/db_outage.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from bot.app import App
from bot.clock import FakeClock
from bot.outbox import MAX_ATTEMPTS
from bot.storage.models import Outbox, ProcessedEvent
from handlers.telegram import MAX_HANDLE_ATTEMPTS, WEBHOOK_PATH, TelegramChannel
from handlers.telegram_sender import RateLimits
from tests.conftest import free_port
from tests.fakes.db_outage import SqliteLock, short_busy_timeout
from tests.fakes.telegram_api import FakeTelegramAPI
from tests.telegram.conftest import L2, MakeTg, Tg, serve_webhook, tg_settings


async def _rows(tg: Tg, status: str) -> list[Outbox]:
    async with tg.app.db.transaction() as s:
        return list((await s.execute(select(Outbox).where(Outbox.status == status))).scalars())


def _posts(tg: Tg, text: str) -> list[str]:
    """The user's messages relayed into the desk chat that contain ``text`` (not the card)."""
    return [t for t in tg.fake.texts(L2) if t.startswith("💬") and text in t]


async def _later(tg: Tg, seconds: float = 5) -> None:
    tg.clock.advance(timedelta(seconds=seconds))
    await tg.dispatcher.drain()


# ---------------------------------------------------------------------- the network


@pytest.mark.parametrize("how", ["timeout", "reset"])
async def test_timeouts_and_connection_resets_are_retried(make_tg: MakeTg, how: str) -> None:
    tg: Tg = await make_tg()
    tg.channel.bot.session.timeout = 0.3  # seconds: the client gives up on a silent server
    ann = tg.user("Ann", 5001)
    tg.fake.break_next("sendMessage", how, chat_id=ann.id)
    await tg.say(ann, "/start")
    assert tg.texts(ann) == []
    [row] = await _rows(tg, "pending")
    assert row.attempts == 1 and "TelegramNetworkError" in (row.last_error or "")
    await _later(tg)
    assert len(tg.texts(ann)) == 1 and "support" in tg.last(ann).lower()
    assert await _rows(tg, "failed") == []


@pytest.mark.parametrize("status", [502, 503])
async def test_gateway_errors_on_the_desk_are_retried(make_tg: MakeTg, status: int) -> None:
    tg: Tg = await make_tg()
    ann = tg.user("Ann", 5001)
    await tg.escalate(ann)
    tg.fake.fail_next("sendMessage", status, chat_id=L2, times=2)
    await tg.say(ann, "Any news?")
    assert _posts(tg, "Any news?") == []
    await _later(tg, 1)
    await _later(tg, 2)
    assert len(_posts(tg, "Any news?")) == 1


async def test_get_updates_failures_confirm_nothing_and_lose_nothing(
    make_tg: MakeTg, monkeypatch: pytest.MonkeyPatch
) -> None:
    """getUpdates answering 502, then losing its connection: the loop keeps polling from the
    same offset, and the user's message is handled once it gets through."""
    tg: Tg = await make_tg()
    channel = tg.channel
    pauses: list[float] = []

    async def no_real_sleep(seconds: float) -> bool:
        pauses.append(seconds)
        await asyncio.sleep(0)
        return channel._stopping.is_set()

    monkeypatch.setattr(channel, "_sleep", no_real_sleep)
    ann = tg.user("Ann", 5001)
    tg.fake.send_text(ann, "/start")
    first = tg.fake.updates[-1]["update_id"]
    tg.fake.fail_next("getUpdates", 502)
    tg.fake.break_next("getUpdates", "reset")
    channel.polling_timeout = 1
    polling = asyncio.create_task(channel.poll_forever())
    try:
        await tg.fake.wait_for(lambda: tg.fake.confirmed > first, what="the update confirmed")
    finally:
        channel._stopping.set()
        await polling
    assert pauses[:2] == [1.0, 2.0]  # backing off while Telegram fails
    failed = [c for c in tg.fake.calls if c.method == "getUpdates" and c.status != 200]
    assert [c.status for c in failed] == [502, 0]
    await tg.dispatcher.drain()
    assert len(tg.texts(ann)) == 1


# ---------------------------------------------------------------------- the desk and the user


async def test_a_deleted_desk_group_keeps_its_rows_until_an_admin_fixes_it(
    make_tg: MakeTg,
) -> None:
    tg: Tg = await make_tg()
    ann = tg.user("Ann", 5001)
    await tg.escalate(ann)
    group = tg.fake.chats.pop(L2)  # deleted, or the bot lost it: "chat not found"
    await tg.say(ann, "Any news?")
    waiting = await _rows(tg, "pending")  # the post, and the card update queued behind it
    assert {r.target for r in waiting} == {str(L2)}
    assert "chat not found" in (min(waiting, key=lambda r: r.id).last_error or "")
    for _ in range(5):
        await _later(tg, 300)
    assert await _rows(tg, "failed") == []
    tg.fake.chats[L2] = group  # the admin puts the bot back
    await _later(tg, 300)
    assert len(_posts(tg, "Any news?")) == 1
    assert await _rows(tg, "pending") == []


async def test_a_reply_telegram_refuses_for_good_is_reported_on_the_ticket(
    make_tg: MakeTg,
) -> None:
    tg: Tg = await make_tg()
    ann = tg.user("Ann", 5001)
    bob = tg.user("Bob", 9001)
    await tg.escalate(ann)
    before = len(tg.texts(ann))
    tg.fake.fail_next("sendMessage", 400, "Bad Request: TEXT_INVALID", chat_id=ann.id)
    await tg.in_thread(bob, "Try turning it off and on")
    assert len(tg.texts(ann)) == before
    [failed] = await _rows(tg, "failed")
    assert failed.target == str(ann.id)
    notices = [t for t in tg.fake.texts(L2) if "could not be delivered" in t]
    assert len(notices) == 1 and "TEXT_INVALID" in notices[0]


async def test_a_reply_that_never_gets_through_is_reported_after_the_last_retry(
    make_tg: MakeTg,
) -> None:
    tg: Tg = await make_tg()
    ann = tg.user("Ann", 5001)
    bob = tg.user("Bob", 9001)
    await tg.escalate(ann)
    tg.fake.fail_next("sendMessage", 500, chat_id=ann.id, times=None)
    await tg.in_thread(bob, "Please check the cable")
    # A 500 leaves the call in doubt: the first retry's probe waits (uncounted, once per row)
    # for a private-chat id allocated after it; none comes, so one more pass than attempts.
    for _ in range(MAX_ATTEMPTS):
        assert not any("could not be delivered" in t for t in tg.fake.texts(L2))
        await _later(tg, 300)
    [failed] = await _rows(tg, "failed")
    assert failed.attempts == MAX_ATTEMPTS and failed.target == str(ann.id)
    assert sum("could not be delivered" in t for t in tg.fake.texts(L2)) == 1


# ---------------------------------------------------------------------- the database


async def test_polling_waits_out_a_database_outage_without_skipping_the_update(
    make_tg: MakeTg,
) -> None:
    """More failed attempts than an update that keeps crashing is allowed: still not skipped,
    not confirmed; handled once the database is back."""
    tg: Tg = await make_tg()
    if not tg.app.db.sqlite:
        pytest.skip("the SQLite lock outage; PostgreSQL is covered in tests/test_db_outage.py")
    await short_busy_timeout(tg.app.db)
    ann = tg.user("Ann", 5001)
    tg.fake.send_text(ann, "/start")
    uid = tg.fake.updates[-1]["update_id"]
    lock = SqliteLock(tg.app.settings.database.url)
    try:
        with lock:
            for _ in range(MAX_HANDLE_ATTEMPTS + 2):
                await tg.channel.poll_once()
                assert tg.channel.offset == uid
            await tg.channel.poll_once()
            assert tg.fake.confirmed <= uid
        await tg.step()
    finally:
        lock.close()
    assert len(tg.texts(ann)) == 1
    assert tg.fake.confirmed == uid + 1


@pytest.fixture
async def hooked(
    fake: FakeTelegramAPI, database_url: str, clock: FakeClock
) -> AsyncIterator[tuple[TelegramChannel, App]]:
    """The channel in webhook mode on a local server, its app on a short busy timeout."""
    port = free_port()
    fake.add_group(L2)
    settings = tg_settings(
        fake, database_url, webhook_url=f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
    )
    app = await App.create(settings, clock, migrate=False)
    if not app.db.sqlite:
        await app.close()
        pytest.skip("the SQLite lock outage; PostgreSQL is covered in tests/test_db_outage.py")
    await short_busy_timeout(app.db)
    channel = TelegramChannel(app, limits=RateLimits.unlimited())
    runner = await serve_webhook(channel, port)
    await channel.setup()
    try:
        yield channel, app
    finally:
        await runner.cleanup()
        await channel.close()
        await app.close()


async def test_webhook_answers_503_during_a_database_outage_and_handles_the_retry(
    hooked: tuple[TelegramChannel, App], fake: FakeTelegramAPI
) -> None:
    channel, app = hooked
    dispatcher = app.dispatcher({"telegram": channel.sender})
    ann = fake.user(5001, "Ann")
    fake.send_text(ann, "/start")
    update = fake.updates.pop()
    lock = SqliteLock(app.settings.database.url)
    try:
        with lock:
            assert await fake.push(update) == 503  # Telegram keeps it and retries
        assert await fake.push(update) == 200
        assert await fake.push(update) == 200  # a late duplicate: nothing more
    finally:
        lock.close()
    await dispatcher.drain()
    assert len(fake.texts(ann.id)) == 1
    async with app.db.transaction() as s:
        n = (await s.execute(select(func.count()).select_from(ProcessedEvent))).scalar_one()
    assert n == 1
