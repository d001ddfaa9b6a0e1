"""Durable intake for work acknowledged before it committed.

A platform that must hear "OK" within seconds (Slack: 3 s) gets it after the unit of work
commits, normally. When the work runs past the adapter's budget, the adapter *parks* the raw
request here, in its own short transaction, and only then acknowledges. The work goes on;
when it finishes the request is unparked. A crash in between leaves it parked, and the next
start replays it through the same handler: the event id's claim in ``processed_events``
makes a replay of work that did commit a no-op, so nothing is lost and nothing is doubled.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update

from bot.storage.db import Database
from bot.storage.models import Inbox
from bot.storage.repo import insert_once


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


async def parked(db: Database, channel: str, limit: int = 100) -> list[Inbox]:
    """Parked requests of ``channel``, oldest first."""
    async with db.transaction() as s:
        rows = await s.execute(
            select(Inbox).where(Inbox.channel == channel).order_by(Inbox.id).limit(limit)
        )
        return list(rows.scalars())


async def replay_failed(db: Database, row_id: int) -> None:
    """Count a replay that failed (it stays parked for the next try)."""
    async with db.transaction() as s:
        await s.execute(
            update(Inbox).where(Inbox.id == row_id).values(attempts=Inbox.attempts + 1)
        )
