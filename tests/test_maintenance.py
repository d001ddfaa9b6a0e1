"""Housekeeping: delivered outbox rows are deleted after ``database.outbox_keep``; the
retention period (``privacy.retention``) is applied by the running bot."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from apscheduler.events import EVENT_JOB_EXECUTED
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import insert, select

from bot.app import App
from bot.clock import FakeClock
from bot.maintenance import prune_outbox
from bot.privacy import ERASED
from bot.storage.models import Outbox, Ticket
from config.settings import DatabaseSettings, PrivacySettings
from handlers.memory import MemoryChannel
from handlers.server import schedule_outbox_pruning, schedule_retention
from tests.test_engine_flow import _escalate


async def _add(app: App, status: str, age: timedelta, text: str) -> None:
    now = app.clock.now()
    async with app.db.transaction() as s:
        await s.execute(
            insert(Outbox).values(
                channel="memory", target="ann", kind="message", payload={"text": text},
                status=status, attempts=1, next_attempt_at=now, created_at=now - age,
            )
        )


async def _texts(app: App) -> list[str]:
    async with app.db.transaction() as s:
        rows = await s.execute(select(Outbox.payload).order_by(Outbox.id))
        return [p["text"] for p in rows.scalars()]


async def _run_first_job(scheduler: AsyncIOScheduler) -> None:
    ran = asyncio.Event()
    scheduler.add_listener(lambda _event: ran.set(), EVENT_JOB_EXECUTED)
    scheduler.start()
    try:
        await asyncio.wait_for(ran.wait(), 10)
    finally:
        scheduler.shutdown(wait=False)


async def test_only_old_delivered_rows_go(app: App, clock: FakeClock) -> None:
    old, new = timedelta(days=9), timedelta(days=1)
    for i in range(5):
        await _add(app, "sent", old, f"old sent {i}")
    await _add(app, "pending", old, "old pending")  # still to deliver
    await _add(app, "failed", old, "old failed")  # what `firstline status` lists
    await _add(app, "sent", old, "old sent 5")
    await _add(app, "sent", new, "new sent")  # ids 9 and 10: the walk stops at them
    await _add(app, "sent", new, "new sent")
    await _add(app, "sent", old, "old sent after new ones")  # left for a later round

    assert await prune_outbox(app.db, clock.now() - timedelta(days=7), batch=2) == 6
    assert await _texts(app) == [
        "old pending", "old failed", "new sent", "new sent", "old sent after new ones"
    ]
    assert await prune_outbox(app.db, clock.now() - timedelta(days=7), batch=2) == 0


async def test_the_running_bot_prunes_on_its_own(app: App) -> None:
    await _add(app, "sent", timedelta(days=8), "old")
    await _add(app, "sent", timedelta(days=6), "kept")
    scheduler = AsyncIOScheduler()
    schedule_outbox_pruning(app, scheduler)  # first run now, then hourly
    await _run_first_job(scheduler)
    assert await _texts(app) == ["kept"]


def test_the_keep_period_is_a_duration() -> None:
    assert DatabaseSettings(outbox_keep="36h").outbox_keep == timedelta(hours=36)
    assert DatabaseSettings().outbox_keep == timedelta(days=7)


async def test_the_running_bot_applies_the_retention_period(
    app: App, mem: MemoryChannel, clock: FakeClock
) -> None:
    ticket = await _escalate(mem, "ann")
    await mem.agent("agent1", "claim", f"FL-{ticket.number}")
    await mem.agent("agent1", "resolve", f"FL-{ticket.number}", text="fixed")
    clock.advance(timedelta(days=4))
    assert await app.desk.close_stale(clock.now()) == 1
    clock.advance(timedelta(days=40))
    app.settings.privacy = PrivacySettings(retention="30d")
    scheduler = AsyncIOScheduler()
    schedule_retention(app, scheduler)  # first run now, then daily
    assert [j.id for j in scheduler.get_jobs()] == ["privacy:retention"]
    await _run_first_job(scheduler)
    async with app.db.transaction() as s:
        tk = await s.get(Ticket, ticket.id)
    assert tk is not None and tk.subject == ERASED


def test_no_retention_period_schedules_nothing(app: App) -> None:
    scheduler = AsyncIOScheduler()
    schedule_retention(app, scheduler)
    assert scheduler.get_jobs() == []


def test_the_retention_period_is_a_duration_of_a_day_or_more() -> None:
    assert PrivacySettings().retention is None
    assert PrivacySettings(retention="365d").retention == timedelta(days=365)
    with pytest.raises(ValueError, match="shorter than a day"):
        PrivacySettings(retention="12h")
    with pytest.raises(ValueError, match="not a duration"):
        PrivacySettings(retention="soon")
