"""``firstline export``: tickets and the event log as JSON lines, for backups and BI."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from sqlalchemy import select

from bot.storage.db import Database
from bot.storage.models import Event, Ticket


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


async def export_lines(
    db: Database, *, since: datetime | None = None, prefix: str = "FL"
) -> AsyncIterator[str]:
    """One JSON object per line: every ticket (``"type": "ticket"``), then every event
    (``"type": "event"``), oldest first; ``since`` limits both to changes after it."""
    async with db.read() as s:
        tickets = select(Ticket).order_by(Ticket.id)
        if since is not None:
            tickets = tickets.where(Ticket.updated_at >= since)
        for tk in (await s.execute(tickets)).scalars():
            row = {c.name: _plain(getattr(tk, c.key)) for c in Ticket.__table__.columns}
            yield json.dumps(
                {"type": "ticket", **row, "number": f"{prefix}-{tk.number}"}, ensure_ascii=False
            )
        events = select(Event).order_by(Event.id).execution_options(yield_per=1000)
        if since is not None:
            events = events.where(Event.at >= since)
        async for ev in await s.stream_scalars(events):
            yield json.dumps(
                {
                    "type": "event",
                    "id": ev.id,
                    "at": ev.at.isoformat(),
                    "kind": ev.kind,
                    "actor": ev.actor,
                    "ticket_id": ev.ticket_id,
                    "conversation_id": ev.conversation_id,
                    "data": ev.data,
                },
                ensure_ascii=False,
            )
