"""SLA timers on APScheduler, rebuilt from the database; each notification fires once.

The scheduler holds no state of its own: every job is derived from a pending
``sla_notifications`` row and has the id ``sla:<row id>``. Firing claims the row with a
conditional UPDATE, so a job that runs twice, or in two processes, sends one message.
A periodic sweep fires whatever came due while no job was scheduled (a restart, downtime).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.clock import Clock
from bot.logs import log_context
from bot.storage.db import Database
from bot.storage.models import SlaNotification, Ticket
from bot.storage.repo import enqueue, log_event
from escalation.desk import OPEN_STATUSES, destination_split
from escalation.texts import lt

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from escalation.desk import Desk

log = logging.getLogger(__name__)

SWEEP_JOB_ID = "sla:sweep"
HORIZON = timedelta(hours=24)  # jobs further out are added by a later reschedule


def _fmt(at: datetime, tz: Any) -> str:
    local = at.astimezone(tz)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"


def _human(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m"


class SlaTimers:
    """Fires SLA warnings, breaches, manager escalations and owner-silence reminders."""

    def __init__(self, db: Database, desk: Desk, clock: Clock) -> None:
        self.db = db
        self.desk = desk
        self.clock = clock
        self.scheduler: AsyncIOScheduler | None = None
        # Called after a notification was queued, so delivery starts at once.
        self.after_fire: Callable[[], None] | None = None

    # ------------------------------------------------------------------ scheduling

    def attach(self, scheduler: AsyncIOScheduler, sweep_seconds: float = 30.0) -> None:
        """Use ``scheduler`` for exact jobs, plus a periodic sweep."""
        self.scheduler = scheduler
        scheduler.add_job(
            self.sweep,
            "interval",
            seconds=sweep_seconds,
            id=SWEEP_JOB_ID,
            replace_existing=True,
            max_instances=1,
            coalesce=True,
        )

    async def reschedule(self) -> int:
        """(Re)create a job per pending notification due within the horizon."""
        if self.scheduler is None:
            return 0
        now = self.clock.now()
        async with self.db.transaction() as s:
            rows = (
                await s.execute(
                    select(SlaNotification.id, SlaNotification.due_at).where(
                        SlaNotification.fired_at.is_(None),
                        SlaNotification.cancelled.is_(False),
                        SlaNotification.due_at <= now + HORIZON,
                    )
                )
            ).all()
        wanted = {f"sla:{row_id}": due for row_id, due in rows}
        for job in self.scheduler.get_jobs():
            if job.id.startswith("sla:") and job.id != SWEEP_JOB_ID and job.id not in wanted:
                job.remove()
        for job_id, due in wanted.items():
            self.scheduler.add_job(
                self.fire,
                "date",
                run_date=max(due, now),
                id=job_id,
                args=[int(job_id.split(":")[1])],
                replace_existing=True,
                misfire_grace_time=None,
            )
        return len(wanted)

    # ------------------------------------------------------------------ firing

    async def sweep(self) -> int:
        """Fire every notification that is due; return how many were sent."""
        now = self.clock.now()
        async with self.db.transaction() as s:
            ids = list(
                (
                    await s.execute(
                        select(SlaNotification.id)
                        .where(
                            SlaNotification.fired_at.is_(None),
                            SlaNotification.cancelled.is_(False),
                            SlaNotification.due_at <= now,
                        )
                        .order_by(SlaNotification.due_at, SlaNotification.id)
                    )
                ).scalars()
            )
        sent = 0
        for row_id in ids:
            sent += int(await self.fire(row_id))
        if await self.desk.close_stale(now) and self.after_fire is not None:
            self.after_fire()
        if self.scheduler is not None:
            await self.reschedule()
        return sent

    async def fire(self, row_id: int) -> bool:
        """Claim and send one notification; ``False`` if it was not due or already fired."""
        now = self.clock.now()
        async with self.db.transaction() as s:
            res = await s.execute(
                update(SlaNotification)
                .where(
                    SlaNotification.id == row_id,
                    SlaNotification.fired_at.is_(None),
                    SlaNotification.cancelled.is_(False),
                    SlaNotification.due_at <= now + timedelta(seconds=1),
                )
                .values(fired_at=now)
            )
            if getattr(res, "rowcount", 0) != 1:
                return False
            row = await s.get(SlaNotification, row_id)
            ticket = await s.get(Ticket, row.ticket_id) if row is not None else None
            if row is None or ticket is None or ticket.status not in OPEN_STATUSES:
                return False
            token = log_context.set({"ticket": self.desk.number(ticket), "sla": row.kind})
            try:
                await self._send(s, row, ticket, now)
            finally:
                log_context.reset(token)
        if self.after_fire is not None:
            self.after_fire()
        return True

    async def _send(
        self, s: AsyncSession, row: SlaNotification, ticket: Ticket, now: datetime
    ) -> None:
        desk = self.desk
        lang = desk.l2_lang
        number = desk.number(ticket)
        tz = desk.sla.calendar(ticket).tz
        target_name = lt(f"sla_{row.target}", lang) if row.target != "owner" else ""
        kind = row.kind
        if kind == "owner_silence":
            owner = ticket.owner_name or "-"
            text = lt(
                "owner_silent",
                lang,
                number=number,
                owner=owner,
                silence=_human(desk.content.sla.owner_silence_after),
            )
            await log_event(
                s, "owner_silence", actor="sla", at=now, ticket_id=ticket.id, owner=ticket.owner_key
            )
            ticket.owner_key = None
            ticket.owner_name = None
            ticket.claimed_at = None
            ticket.status = "open"
            ticket.updated_at = now
            await desk.notice(s, ticket, text, now)
            await desk.sla.refresh(s, ticket, now)
            await desk.update_card(s, ticket, now)
            return
        if ":warn:" in kind:
            percent = kind.rsplit(":", 1)[1]
            text = lt(
                "sla_warning",
                lang,
                number=number,
                target=target_name,
                percent=percent,
                due=_fmt(row.deadline, tz),
            )
            await log_event(
                s,
                "sla_warning",
                actor="sla",
                at=now,
                ticket_id=ticket.id,
                target=row.target,
                percent=int(percent),
                due=row.deadline.isoformat(),
            )
            await desk.notice(s, ticket, text, now)
        elif kind.endswith(":breach"):
            lead = desk.esc.l2_lead or ""
            text = lt(
                "sla_breach",
                lang,
                number=number,
                target=target_name,
                due=_fmt(row.deadline, tz),
                lead=lead,
            ).strip()
            await log_event(
                s,
                "sla_breach",
                actor="sla",
                at=now,
                ticket_id=ticket.id,
                target=row.target,
                due=row.deadline.isoformat(),
                owner=ticket.owner_key,
                priority=ticket.priority,
                tier=ticket.tier,
            )
            await desk.notice(s, ticket, text, now)
        elif kind.endswith(":manager"):
            text = lt(
                "sla_manager",
                lang,
                number=number,
                tier=ticket.tier,
                priority=ticket.priority,
                target=target_name,
                due=_fmt(row.deadline, tz),
                owner=ticket.owner_name or lt("label_nobody", lang),
            )
            await log_event(
                s,
                "sla_manager_escalation",
                actor="sla",
                at=now,
                ticket_id=ticket.id,
                target=row.target,
            )
            managers = desk.esc.managers or [desk._active_destination(ticket)]
            for dest in managers:
                channel, target = destination_split(dest)
                await enqueue(
                    s,
                    channel=channel,
                    target=target,
                    kind="notify",
                    payload={"text": text, "ticket_id": ticket.id},
                    now=now,
                    ticket_id=ticket.id,
                )
        await desk.update_card(s, ticket, now)
