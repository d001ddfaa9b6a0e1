"""Housekeeping: delivered outbox rows are deleted after ``database.outbox_keep``."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from apscheduler.events import EVENT_JOB_EXECUTED
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import insert, select

from bot.app import App
from bot.clock import FakeClock
from bot.maintenance import prune_outbox
from bot.storage.models import Outbox
from config.settings import DatabaseSettings
from handlers.server import schedule_outbox_pruning


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
    ran = asyncio.Event()
    scheduler.add_listener(lambda _event: ran.set(), EVENT_JOB_EXECUTED)
    schedule_outbox_pruning(app, scheduler)  # first run now, then hourly
    scheduler.start()
    try:
        await asyncio.wait_for(ran.wait(), 10)
    finally:
        scheduler.shutdown(wait=False)
    assert await _texts(app) == ["kept"]


def test_the_keep_period_is_a_duration() -> None:
    assert DatabaseSettings(outbox_keep="36h").outbox_keep == timedelta(hours=36)
    assert DatabaseSettings().outbox_keep == timedelta(days=7)
