"""Housekeeping the running bot does on its own: delivered outbox rows do not pile up.

Every dialog turn writes one or two outbox rows; kept forever they would make each
``/healthz`` and ``/metrics`` read slower (a count over a million delivered rows held the
SQLite event loop for half a second). Delivered rows are deleted once they are older than
``database.outbox_keep``; rows still waiting and rows given up on (``failed``, what
``firstline status`` lists) stay.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select

from bot.storage.db import Database
from bot.storage.models import Outbox

PRUNE_BATCH = 500  # ids per unit of work: the writer is never held for long


async def prune_outbox(db: Database, before: datetime, batch: int = PRUNE_BATCH) -> int:
    """Delete delivered outbox rows created before ``before``; the number deleted.

    Walks the ids upwards ``batch`` at a time (ids grow with ``created_at``; a range of ids
    is a cheap primary-key scan on any backend, where a filter on status and time would
    read every delivered row for each batch) and stops at the first range that holds a row
    from ``before`` or later.
    """
    async with db.transaction() as s:
        lo = (await s.execute(select(func.min(Outbox.id)))).scalar_one_or_none()
    total = 0
    while lo is not None:
        hi = lo + batch
        async with db.transaction() as s:
            rows = (
                await s.execute(
                    select(Outbox.id, Outbox.status, Outbox.created_at).where(
                        Outbox.id >= lo, Outbox.id < hi
                    )
                )
            ).all()
            old = [i for i, status, at in rows if status == "sent" and at < before]
            if old:
                # By id: a filter on status would lead the planner to the status index.
                await s.execute(delete(Outbox).where(Outbox.id.in_(old)))
            total += len(old)
            if any(at >= before for _, _, at in rows):
                return total
            lo = (
                await s.execute(select(func.min(Outbox.id)).where(Outbox.id >= hi))
            ).scalar_one_or_none()
    return total
