"""SLA deadlines on tickets and the notification rows the timers fire.

Deadlines are recomputed from scratch on every ticket change (priority, tier, pause, reply),
stored on the ticket, and mirrored as ``sla_notifications`` rows: warnings at fractions of
each target, the breach, the manager escalation, and the owner-silence reminder. A row is
fired at most once (conditional UPDATE in :mod:`escalation.timers`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.models import SlaNotification, Ticket, TicketPause
from config.settings import Settings
from escalation.calendar import BusinessCalendar, Pause
from escalation.policy import SlaConfig, compute_deadlines, compute_l3_deadlines

OPEN = ("new", "open", "in_progress", "waiting")


@dataclass(frozen=True)
class Planned:
    """A notification the current state of a ticket calls for."""

    kind: str
    target: str
    due_at: datetime
    deadline: datetime


async def ticket_pauses(s: AsyncSession, ticket_id: int) -> list[Pause]:
    """The ticket's "waiting for customer" intervals (the last one may be open)."""
    rows = await s.execute(
        select(TicketPause).where(TicketPause.ticket_id == ticket_id).order_by(TicketPause.id)
    )
    return [(p.started_at, p.ended_at) for p in rows.scalars()]


class SlaService:
    """Computes deadlines for tickets and keeps their notification rows in step."""

    def __init__(self, config: SlaConfig, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        # Set when notification rows were added: the app then reschedules timer jobs.
        self.changed = False

    def calendar(self, ticket: Ticket) -> BusinessCalendar:
        """The calendar the ticket's tier counts in."""
        return self.config.calendar_for(ticket.tier)

    async def refresh(self, s: AsyncSession, ticket: Ticket, now: datetime) -> None:
        """Recompute the ticket's deadlines and sync its pending notifications."""
        await s.flush()
        pauses = await ticket_pauses(s, ticket.id)
        planned: list[Planned] = []
        if ticket.status in OPEN:
            d = compute_deadlines(
                self.config,
                ticket.tier,
                ticket.priority,
                ticket.created_at,
                pauses,
                ticket.first_response_at,
                ticket.awaiting_reply_since,
            )
            ticket.first_response_due = (
                d["first_response"] if ticket.first_response_at is None else None
            )
            ticket.next_response_due = d["next_response"]
            ticket.resolution_due = d["resolution"]
            ticket.l3_due = None
            if ticket.level == "l3" and ticket.l3_since is not None:
                l3 = compute_l3_deadlines(
                    self.config, ticket.tier, ticket.priority, ticket.l3_since, pauses
                )
                ticket.l3_due = l3.get("resolution")
            planned = self._plan(ticket, pauses, now)
        else:
            ticket.first_response_due = None
            ticket.next_response_due = None
            ticket.l3_due = None
            if ticket.status != "resolved":
                ticket.resolution_due = None
        ticket.version = (ticket.version or 0) + 1
        await self._sync(s, ticket, planned, now)

    def _plan(self, ticket: Ticket, pauses: list[Pause], now: datetime) -> list[Planned]:
        cfg = self.config
        cal = self.calendar(ticket)
        targets = cfg.targets_for(ticket.tier, ticket.priority)
        clocks: list[tuple[str, datetime, timedelta, datetime | None, BusinessCalendar]] = []
        if ticket.first_response_at is None:
            clocks.append(
                (
                    "first_response",
                    ticket.created_at,
                    targets.first_response,
                    ticket.first_response_due,
                    cal,
                )
            )
        elif ticket.awaiting_reply_since is not None:
            clocks.append(
                (
                    "next_response",
                    ticket.awaiting_reply_since,
                    targets.next_response,
                    ticket.next_response_due,
                    cal,
                )
            )
        clocks.append(
            ("resolution", ticket.created_at, targets.resolution, ticket.resolution_due, cal)
        )
        if ticket.level == "l3" and ticket.l3_since is not None and ticket.l3_due is not None:
            l3_targets = cfg.l3_targets_for(ticket.priority)
            if l3_targets is not None:
                clocks.append(
                    (
                        "l3",
                        ticket.l3_since,
                        l3_targets.resolution,
                        ticket.l3_due,
                        cfg.l3_calendar_for(ticket.tier),
                    )
                )
        out: list[Planned] = []
        for name, start, target, deadline, calendar in clocks:
            if deadline is None:
                continue  # paused: nothing can fire until the customer answers
            for fraction in cfg.warn_fractions:
                due = calendar.deadline(start, target * fraction, pauses)
                if due is not None:
                    out.append(Planned(f"{name}:warn:{round(fraction * 100)}", name, due, deadline))
            out.append(Planned(f"{name}:breach", name, deadline, deadline))
            out.append(
                Planned(f"{name}:manager", name, deadline + cfg.manager_escalation_after, deadline)
            )
        customer_waits = ticket.first_response_at is None or ticket.awaiting_reply_since is not None
        if ticket.status == "in_progress" and ticket.owner_key and customer_waits:
            waiting_since = ticket.awaiting_reply_since or ticket.created_at
            since = max(waiting_since, ticket.claimed_at or waiting_since)
            due = cal.add(since, cfg.owner_silence_after)  # nobody is silent on a weekend
            out.append(Planned("owner_silence", "owner", due, due))
        return out

    async def _sync(
        self, s: AsyncSession, ticket: Ticket, planned: list[Planned], now: datetime
    ) -> None:
        rows = list(
            (
                await s.execute(
                    select(SlaNotification).where(SlaNotification.ticket_id == ticket.id)
                )
            ).scalars()
        )
        want = {(p.kind, p.due_at): p for p in planned}
        have = {(r.kind, r.due_at): r for r in rows}
        for key, row in have.items():
            if row.fired_at is None and not row.cancelled and key not in want:
                row.cancelled = True
        fired_kinds = {r.kind for r in rows if r.fired_at is not None}
        for key, p in want.items():
            existing = have.get(key)
            if existing is not None:
                if existing.cancelled and existing.fired_at is None:
                    existing.cancelled = False
                continue
            is_warning = ":warn:" in p.kind
            if is_warning and p.due_at < now and (p.deadline <= now or p.kind in fired_kinds):
                continue  # a stale warning after a recompute would only be noise
            if p.kind in fired_kinds and p.due_at <= now:
                continue  # already told about this clock's breach or warning
            self.changed = True
            s.add(
                SlaNotification(
                    ticket_id=ticket.id,
                    kind=p.kind,
                    target=p.target,
                    due_at=p.due_at,
                    deadline=p.deadline,
                    cancelled=False,
                )
            )
