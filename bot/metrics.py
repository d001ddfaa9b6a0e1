"""Prometheus metrics: per-process counters plus figures read from the database at scrape.

Counters (inbound events, turns, platform errors) count what this process did; gauges that
describe the whole desk (open tickets, outbox lag, SLA notices, deflections) are read from
the database when ``/metrics`` is scraped, so every instance reports the same truth.
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from sqlalchemy import func, select

from bot.storage.db import Database
from bot.storage.models import Conversation, Event, Ticket

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The process's registry; one per :class:`bot.app.App`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.inbound = Counter(
            "firstline_inbound_events",
            "Platform events received, by outcome.",
            ["channel", "kind", "outcome"],
            registry=r,
        )
        self.turns = Counter(
            "firstline_dialog_turns",
            "End-user events handled by the dialog engine.",
            ["channel"],
            registry=r,
        )
        self.deliveries = Counter(
            "firstline_deliveries",
            "Outbox deliveries by outcome (sent, retry, failed).",
            ["channel", "outcome"],
            registry=r,
        )
        self.platform_errors = Counter(
            "firstline_platform_errors",
            "Failed platform calls (retried or not).",
            ["channel"],
            registry=r,
        )
        self.open_tickets = Gauge(
            "firstline_open_tickets",
            "Tickets by state (database).",
            ["status"],
            registry=r,
        )
        self.outbox_rows = Gauge(
            "firstline_outbox_rows",
            "Outbox rows not delivered, by status: pending, sending, failed (database).",
            ["status"],
            registry=r,
        )
        self.outbox_lag = Gauge(
            "firstline_outbox_lag_seconds",
            "Age of the oldest undelivered outbox row.",
            registry=r,
        )
        self.sla_events = Gauge(
            "firstline_sla_notifications",
            "SLA warnings, breaches and manager escalations sent so far (database).",
            ["kind"],
            registry=r,
        )
        self.conversations = Gauge(
            "firstline_conversations",
            "Conversations by outcome; solved_kb and solved_checklist are deflections (database).",
            ["outcome"],
            registry=r,
        )

    async def refresh(self, db: Database, now: datetime) -> None:
        """Read the database-wide figures into the gauges."""
        async with db.read() as s:
            by_status = dict(
                (await s.execute(select(Ticket.status, func.count()).group_by(Ticket.status))).all()
            )
            sla = dict(
                (
                    await s.execute(
                        select(Event.kind, func.count())
                        .where(
                            Event.kind.in_(("sla_warning", "sla_breach", "sla_manager_escalation"))
                        )
                        .group_by(Event.kind)
                    )
                ).all()
            )
            outcomes = dict(
                (
                    await s.execute(
                        select(Conversation.outcome, func.count())
                        .where(Conversation.outcome.is_not(None))
                        .group_by(Conversation.outcome)
                    )
                ).all()
            )
        for status in ("open", "in_progress", "waiting", "resolved", "closed", "cancelled"):
            self.open_tickets.labels(status).set(int(by_status.get(status, 0)))
        from bot.outbox import UNDELIVERED, outbox_stats  # bot.outbox imports this module

        outbox = await outbox_stats(db, now)
        for status in UNDELIVERED:
            self.outbox_rows.labels(status).set(outbox["counts"].get(status, 0))
        self.outbox_lag.set(outbox["lag_seconds"])
        for kind in ("sla_warning", "sla_breach", "sla_manager_escalation"):
            self.sla_events.labels(kind).set(int(sla.get(kind, 0)))
        for outcome, n in outcomes.items():
            self.conversations.labels(str(outcome)).set(int(n))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
