"""Delivery of the outbox: every platform call, in order per chat, retried until it lands.

Rows are written by the engine in the same transaction as the change that needs them; the
dispatcher claims the oldest unsent row of each target (so one chat's messages never
overtake each other), hands it to the channel's :class:`Sender`, and records the outcome.
A crash between the call and the record re-sends that one row after the lock expires.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.clock import Clock
from bot.logs import log_context
from bot.metrics import Metrics
from bot.storage.db import Database
from bot.storage.models import MessageLink, Outbox, Ticket
from bot.storage.repo import log_event
from escalation.card import TicketCard, build_card
from escalation.desk import Desk

log = logging.getLogger(__name__)

LOCK_FOR = timedelta(seconds=60)
RECLAIM_EVERY = 5.0  # seconds between looks for rows left by a dead sender
MAX_ATTEMPTS = 25
TICKET_KINDS = ("ticket_card", "ticket_post", "agent_notice", "notify")

_UNSENT_BATCH = 500  # unsent rows a claim looks at
# The statements of every pass, built once (building one costs more than running it on
# SQLite) and run as plain Core: no ORM bookkeeping of the rows they change.
_UNSENT = (
    select(Outbox)
    .where(
        Outbox.status.in_(("pending", "sending")),
        Outbox.channel.in_(bindparam("channels", expanding=True)),
    )
    .order_by(Outbox.id)
    .limit(_UNSENT_BATCH)
)
_TAKE = (
    update(Outbox)
    .where(Outbox.id == bindparam("row"), Outbox.status == "pending")
    .values(status="sending", locked_by=bindparam("worker"), locked_until=bindparam("until"))
)
_MARK_SENT = (
    update(Outbox)
    .where(Outbox.id == bindparam("row"))
    .values(
        status="sent",
        sent_at=bindparam("at"),
        locked_by=None,
        locked_until=None,
        attempts=bindparam("attempts"),
        last_error=None,
    )
)


@dataclass
class OutboxItem:
    """One row to deliver, with what the sender needs to render it."""

    id: int
    channel: str
    target: str
    kind: str
    payload: dict[str, Any]
    attempts: int
    ticket_id: int | None = None
    card: TicketCard | None = None
    # Existing platform references of this ticket on this target: role -> message keys.
    links: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class SendResult:
    """The outcome of one platform call."""

    ok: bool = True
    retry_after: float | None = None  # seconds, from a 429 or our own backoff
    permanent: bool = False  # do not retry (400, 403...)
    deferred: bool = False  # not tried yet (our own rate limiter): no attempt is counted
    unreachable: bool = False  # the user blocked the bot / left
    error: str = ""
    # New platform references to remember: (role, message_key, ticket_message_id).
    links: list[tuple[str, str, int | None]] = field(default_factory=list)
    # Forget these roles' references for this ticket and target (a deleted topic).
    drop_roles: list[str] = field(default_factory=list)


class Sender(Protocol):
    """A platform's delivery side."""

    channel: str

    async def send(self, item: OutboxItem) -> SendResult:
        """Make the platform call for ``item``."""
        ...


def backoff(attempts: int) -> float:
    """Seconds to wait before the next try: 1, 2, 4 ... capped at 5 minutes."""
    return float(min(2 ** max(attempts - 1, 0), 300))


class Dispatcher:
    """Drains the outbox for the senders it has (optionally only some targets)."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        desk: Desk,
        senders: dict[str, Sender],
        *,
        target_filter: Callable[[str, str], bool] | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.desk = desk
        self.senders = senders
        self.target_filter = target_filter
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.metrics: Metrics | None = None
        self._next_reclaim = 0.0
        self._wake = asyncio.Event()
        self._more = False  # the last claim left due rows behind

    def wake(self) -> None:
        """Something was queued: deliver without waiting for the next poll."""
        self._wake.set()

    async def run_forever(self, stop: asyncio.Event, poll_seconds: float = 1.0) -> None:
        """Deliver until ``stop`` is set; sleeps on an event, not a busy loop.

        After a pass the next one starts at once only if the pass left due rows behind (a
        target's next row, or more than it takes at a time); otherwise it waits for a wake,
        which may have come during the pass, or for the poll (retries, other processes).
        """
        while not stop.is_set():
            self._wake.clear()  # what is queued from now on wakes the next pass
            try:
                sent = await self.run_once()
            except Exception:
                log.exception("outbox pass failed; retrying")
                sent = 0
            if sent and self._more:
                continue
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            _done, pending = await asyncio.wait(
                {waiter, stopper}, timeout=poll_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()

    async def _claim(self, now: datetime, limit: int) -> list[Outbox]:
        async with self.db.transaction(urgent=True) as s:
            # Rows whose sender died mid-call go back to the queue: looked for on the first
            # pass and then every few seconds, not on every pass of a busy dispatcher.
            if time.monotonic() >= self._next_reclaim:
                self._next_reclaim = time.monotonic() + RECLAIM_EVERY
                await s.execute(
                    update(Outbox)
                    .where(Outbox.status == "sending", Outbox.locked_until < now)
                    .values(status="pending", locked_by=None)
                )
                await self._reclaim_from_dead_workers(s)
            rows = list((await s.execute(_UNSENT, {"channels": list(self.senders)})).scalars())
            conn = await s.connection()
            chosen: list[Outbox] = []
            blocked: set[tuple[str, str]] = set()
            self._more = len(rows) == _UNSENT_BATCH
            for row in rows:
                key = (row.channel, row.target)
                if key in blocked:
                    self._more = True  # this target's next row, for a later pass
                    continue
                blocked.add(key)  # only the oldest unsent row of a target may go
                if self.target_filter is not None and not self.target_filter(
                    row.channel, row.target
                ):
                    continue
                if row.status != "pending" or row.next_attempt_at > now:
                    continue
                res = await conn.execute(
                    _TAKE, {"row": row.id, "worker": self.worker_id, "until": now + LOCK_FOR}
                )
                if res.rowcount == 1:
                    chosen.append(row)
                if len(chosen) >= limit:
                    self._more = True
                    break
            return chosen

    async def _reclaim_from_dead_workers(self, s: AsyncSession) -> None:
        """Rows locked by a process of this host that no longer runs go back at once.

        Otherwise a killed process would hold its chat's queue until the lock expires.
        """
        host = self.worker_id.rsplit(":", 1)[0]
        rows = await s.execute(
            select(Outbox.locked_by)
            .where(Outbox.status == "sending", Outbox.locked_by.like(f"{host}:%"))
            .distinct()
        )
        dead = [w for w in rows.scalars() if w and w != self.worker_id and not _alive(w)]
        if dead:
            await s.execute(
                update(Outbox)
                .where(Outbox.status == "sending", Outbox.locked_by.in_(dead))
                .values(status="pending", locked_by=None, locked_until=None)
            )

    async def run_once(self, limit: int = 50) -> int:
        """One pass: claim due rows (one per target), build them in one transaction, send
        them concurrently, and record each outcome as soon as its call returns."""
        now = self.clock.now()
        rows = await self._claim(now, limit)
        if not rows:
            return 0
        items = await self._items(rows)
        await asyncio.gather(*(self._send_and_record(row, items[row.id]) for row in rows))
        return len(rows)

    async def _send_and_record(self, row: Outbox, item: OutboxItem) -> None:
        # Each row is recorded as soon as its own call returns: a crash between the call and
        # the record re-sends only that row, not the whole pass.
        result = await self._send(row, item)
        await self._record([(row, result)])

    async def drain(self, max_passes: int = 1000) -> int:
        """Send everything that is due now (tests and one-shot tools)."""
        total = 0
        for _ in range(max_passes):
            n = await self.run_once()
            if n == 0:
                break
            total += n
        return total

    async def _items(self, rows: list[Outbox]) -> dict[int, OutboxItem]:
        items = {
            row.id: OutboxItem(
                id=row.id,
                channel=row.channel,
                target=row.target,
                kind=row.kind,
                payload=dict(row.payload or {}),
                attempts=row.attempts,
                ticket_id=row.ticket_id,
            )
            for row in rows
        }
        ticket_rows = [r for r in rows if r.kind in TICKET_KINDS and r.ticket_id is not None]
        if not ticket_rows:
            return items
        async with self.db.transaction(urgent=True) as s:
            now = self.clock.now()
            for row in ticket_rows:
                item = items[row.id]
                ticket = await s.get(Ticket, row.ticket_id)
                if ticket is not None:
                    item.card = await build_card(s, self.desk, ticket, now)
                links = await s.execute(
                    select(MessageLink)
                    .where(
                        MessageLink.ticket_id == row.ticket_id,
                        MessageLink.channel == row.channel,
                        MessageLink.chat_key == row.target,
                    )
                    .order_by(MessageLink.id)
                )
                for link in links.scalars():
                    item.links.setdefault(link.role, []).append(link.message_key)
        return items

    async def _send(self, row: Outbox, item: OutboxItem) -> SendResult:
        # Each send runs in its own task (gather), so this tags only its own log lines.
        log_context.set(
            {
                "channel": row.channel,
                "target": row.target,
                **({"ticket": item.card.number} if item.card else {}),
            }
        )
        sender = self.senders[row.channel]
        try:
            return await sender.send(item)
        except Exception as exc:  # a sender bug must not lose the row
            log.exception("sender %s failed on outbox row %s", row.channel, row.id)
            return SendResult(ok=False, error=f"{type(exc).__name__}: {exc}"[:500])

    async def _record(self, outcomes: list[tuple[Outbox, SendResult]]) -> None:
        now = self.clock.now()
        async with self.db.transaction(urgent=True) as s:
            for row, result in outcomes:
                await self._record_one(s, row, result, now)

    async def _record_one(
        self, s: AsyncSession, row: Outbox, result: SendResult, now: datetime
    ) -> None:
        if result.ok:
            if self.metrics is not None:
                self.metrics.deliveries.labels(row.channel, "sent").inc()
            await (await s.connection()).execute(
                _MARK_SENT, {"row": row.id, "at": now, "attempts": row.attempts + 1}
            )
            if result.drop_roles and row.ticket_id is not None:
                stale = await s.execute(
                    select(MessageLink).where(
                        MessageLink.ticket_id == row.ticket_id,
                        MessageLink.channel == row.channel,
                        MessageLink.chat_key == row.target,
                        MessageLink.role.in_(result.drop_roles),
                    )
                )
                for link in stale.scalars():
                    await s.delete(link)
            if row.ticket_id is not None:
                for role, key, tm_id in result.links:
                    s.add(
                        MessageLink(
                            ticket_id=row.ticket_id,
                            ticket_message_id=tm_id,
                            role=role,
                            channel=row.channel,
                            chat_key=row.target,
                            message_key=key,
                            created_at=now,
                        )
                    )
            return
        attempts = row.attempts if result.deferred else row.attempts + 1
        if self.metrics is not None:
            outcome = (
                "deferred"
                if result.deferred
                else ("failed" if result.permanent or attempts >= MAX_ATTEMPTS else "retry")
            )
            self.metrics.deliveries.labels(row.channel, outcome).inc()
            if not result.deferred:
                self.metrics.platform_errors.labels(row.channel).inc()
        if result.permanent or attempts >= MAX_ATTEMPTS:
            await s.execute(
                update(Outbox)
                .where(Outbox.id == row.id)
                .values(
                    status="failed",
                    attempts=attempts,
                    last_error=result.error[:2000],
                    locked_by=None,
                    locked_until=None,
                )
            )
            await log_event(
                s,
                "delivery_failed",
                actor="outbox",
                at=now,
                ticket_id=row.ticket_id,
                channel=row.channel,
                outbox_kind=row.kind,
                error=result.error[:300],
            )
            if result.unreachable and row.kind == "message":
                await self.desk.mark_unreachable(s, row.channel, row.target, result.error, now)
            return
        delay = result.retry_after if result.retry_after is not None else backoff(attempts)
        await s.execute(
            update(Outbox)
            .where(Outbox.id == row.id)
            .values(
                status="pending",
                attempts=attempts,
                last_error=result.error[:2000],
                next_attempt_at=now + timedelta(seconds=delay),
                locked_by=None,
                locked_until=None,
            )
        )


def _alive(worker_id: str) -> bool:
    """Whether the process named by a ``host:pid`` worker id still runs on this host."""
    pid_s = worker_id.rsplit(":", 1)[-1]
    if not pid_s.isdigit():
        return True  # not ours to judge
    try:
        os.kill(int(pid_s), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def outbox_stats(db: Database, now: datetime) -> dict[str, Any]:
    """Pending/failed counts and the age of the oldest unsent row (the outbox lag)."""
    async with db.transaction() as s:
        rows = (
            await s.execute(
                select(Outbox.status, func.count(), func.min(Outbox.created_at)).group_by(
                    Outbox.status
                )
            )
        ).all()
        oldest = (
            await s.execute(
                select(func.min(Outbox.created_at)).where(
                    or_(Outbox.status == "pending", Outbox.status == "sending")
                )
            )
        ).scalar_one_or_none()
    counts = {status: int(n) for status, n, _ in rows}
    lag = (now - oldest).total_seconds() if oldest is not None else 0.0
    return {"counts": counts, "lag_seconds": max(lag, 0.0)}
