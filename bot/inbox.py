"""Durable intake for work acknowledged before it committed.

A platform that must hear "OK" within seconds (Slack: 3 s) gets it after the unit of work
commits, normally. When the work runs past the adapter's budget, the adapter *parks* the raw
request here, in its own short transaction, and only then acknowledges. The work goes on;
when it finishes the request is unparked. A crash in between leaves it parked, and the next
start replays it through the same handler: the event id's claim in ``processed_events``
makes a replay of work that did commit a no-op, so nothing is lost and nothing is doubled.

A replay that fails is tried again later, each wait twice the previous one (a platform or
database outage of hours still ends in a replay); after ``MAX_REPLAYS`` failures the request
is *given up*: kept for the admin (``firstline status`` counts it) but no longer replayed,
so one request that can never succeed neither floods the log nor holds up the others.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, func, select, update

from bot.storage.db import Database
from bot.storage.models import Inbox
from bot.storage.repo import insert_once

log = logging.getLogger(__name__)

MAX_REPLAYS = 10  # failed replays before a request is given up (about 8.5 h of retries)
FIRST_RETRY = timedelta(seconds=30)  # the wait after the first failure; doubles after each


async def park(
    db: Database, channel: str, event_id: str, kind: str, body: dict[str, Any], now: datetime
) -> None:
    """Keep a request whose work is still running (a second park of one id is a no-op)."""
    async with db.transaction() as s:
        await insert_once(
            s,
            Inbox,
            channel=channel,
            event_id=event_id,
            kind=kind,
            body=body,
            attempts=0,
            created_at=now,
        )


async def unpark(db: Database, channel: str, event_id: str) -> None:
    """The request's work is done (committed, or refused for good)."""
    async with db.transaction() as s:
        await s.execute(delete(Inbox).where(Inbox.channel == channel, Inbox.event_id == event_id))


def due(row: Inbox, now: datetime) -> bool:
    """Whether a parked request may be replayed at ``now``: at once if it never failed,
    else ``FIRST_RETRY * (2**attempts - 1)`` after it was parked; never once given up."""
    if row.attempts >= MAX_REPLAYS:
        return False
    wait: timedelta = FIRST_RETRY * (2**row.attempts - 1)
    return now - row.created_at >= wait


async def parked(
    db: Database, channel: str, limit: int = 100, now: datetime | None = None
) -> list[Inbox]:
    """Parked requests of ``channel`` still to be replayed, oldest first; with ``now``, only
    those due then. Requests given up on are left out (see ``given_up``)."""
    async with db.transaction() as s:
        rows = await s.execute(
            select(Inbox)
            .where(Inbox.channel == channel, Inbox.attempts < MAX_REPLAYS)
            .order_by(Inbox.id)
        )
        found = [r for r in rows.scalars() if now is None or due(r, now)]
    return found[:limit]


async def replay_failed(db: Database, row_id: int) -> int:
    """Count a replay that failed; the request's failures so far. At ``MAX_REPLAYS`` it is
    given up (kept, no longer replayed) and an ERROR says so."""
    async with db.transaction() as s:
        attempts = (
            await s.execute(
                update(Inbox)
                .where(Inbox.id == row_id)
                .values(attempts=Inbox.attempts + 1)
                .returning(Inbox.attempts, Inbox.channel, Inbox.event_id)
            )
        ).first()
    if attempts is None:
        return 0
    n, channel, event_id = attempts
    if n >= MAX_REPLAYS:
        log.error(
            "parked %s request %s failed %d replays: given up, kept in the inbox table",
            channel,
            event_id,
            n,
        )
    return int(n)


async def inbox_stats(db: Database) -> dict[str, int]:
    """How many requests are parked (still to be replayed) and how many were given up."""
    async with db.read() as s:
        total, given_up = (
            await s.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(case((Inbox.attempts >= MAX_REPLAYS, 1), else_=0)), 0),
                ).select_from(Inbox)
            )
        ).one()
    return {"parked": int(total) - int(given_up), "given_up": int(given_up)}
