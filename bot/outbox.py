"""Delivery of the outbox: every platform call, in order per chat, retried until it lands.

Rows are written by the engine in the same transaction as the change that needs them; the
dispatcher claims the oldest unsent row of each target (so one chat's messages never
overtake each other), hands it to the channel's :class:`Sender`, and records the outcome.

Exactly once through crashes. The claim itself is the durable "attempt started" marker
(``result.inflight``); every call of a row goes through :meth:`OutboxItem.step`, which
persists what earlier calls returned before it makes the next one. So after a crash the
next attempt knows which calls were made, and that the one after them is *in doubt*: it
may have reached the platform without being recorded. A sender that can ask the platform
(Slack: message metadata) looks first and records what it finds instead of sending again;
one that cannot (Telegram) sends that one call again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.clock import Clock
from bot.logs import log_context
from bot.metrics import Metrics
from bot.storage.db import Database
from bot.storage.models import MessageLink, Outbox, Ticket
from bot.storage.prepared import Prepared, columns_of, load_all
from bot.storage.repo import log_event
from escalation.card import TicketCard, build_card
from escalation.desk import Desk

log = logging.getLogger(__name__)

LOCK_FOR = timedelta(seconds=60)
RECLAIM_EVERY = 5.0  # seconds between looks for rows left by a dead sender
MAX_ATTEMPTS = 25
TICKET_KINDS = ("ticket_card", "ticket_post", "agent_notice", "notify")

T = TypeVar("T")
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


@functools.cache
def _unsent_prepared(channels: int) -> Prepared:
    """:data:`_UNSENT` for ``channels`` channels, its list as plain parameters."""
    stmt = (
        select(*columns_of(Outbox))
        .where(
            Outbox.status.in_([bindparam("pending", "pending"), bindparam("sending", "sending")]),
            Outbox.channel.in_([bindparam(f"ch{i}") for i in range(channels)]),
        )
        .order_by(Outbox.id)
        .limit(_UNSENT_BATCH)
    )
    return Prepared(stmt, tuple(f"ch{i}" for i in range(channels)))


async def _unsent(s: AsyncSession, channels: list[str]) -> list[Outbox]:
    """The unsent rows of ``channels``, oldest first (at most :data:`_UNSENT_BATCH`)."""
    prepared = _unsent_prepared(len(channels))
    loaded = await load_all(s, prepared, Outbox, {f"ch{i}": c for i, c in enumerate(channels)})
    if loaded is not None:
        return loaded
    return list((await s.execute(_UNSENT, {"channels": channels})).scalars())


# First attempts (no state yet) are claimed together; RETURNING says which rows this
# dispatcher won (another one may have taken some since the SELECT, on PostgreSQL).
_TAKE_FRESH = (
    update(Outbox)
    .where(Outbox.id.in_(bindparam("rows", expanding=True)), Outbox.status == "pending")
    .values(
        status="sending",
        locked_by=bindparam("worker"),
        locked_until=bindparam("until"),
        result={"inflight": True},
    )
    .returning(Outbox.id)
)
# A retry keeps what its earlier attempts recorded: one statement per row.
_TAKE = Prepared(
    update(Outbox)
    .where(Outbox.id == bindparam("row"), Outbox.status == "pending")
    .values(
        status="sending",
        locked_by=bindparam("worker"),
        locked_until=bindparam("until"),
        result=bindparam("result"),
    ),
    ("row", "worker", "until", "result"),
)
_MARK_SENT = Prepared(
    update(Outbox)
    .where(Outbox.id == bindparam("row"))
    .values(
        status="sent",
        sent_at=bindparam("at"),
        locked_by=None,
        locked_until=None,
        attempts=bindparam("attempts"),
        last_error=None,
        result=bindparam("result"),
    ),
    ("row", "at", "attempts", "result"),
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
    # Calls of this row that already succeeded, kept in the database across retries and
    # restarts: step key -> what the call returned (JSON: a message id or ts, a list...).
    done: dict[str, Any] = field(default_factory=dict)
    # An earlier attempt may have made the next call without recording it (the process
    # died, or the call failed in a way that may still have reached the platform).
    in_doubt: bool = False
    # Persists ``done`` (the dispatcher's; ``None`` keeps progress in memory only).
    save: Callable[[dict[str, Any]], Awaitable[None]] | None = field(default=None, repr=False)
    # Steps found already made on the platform / made again without being able to look.
    recovered: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    _unsaved: bool = field(default=False, repr=False)

    async def step(
        self,
        key: str,
        call: Callable[[], Awaitable[T]],
        *,
        find: Callable[[], Awaitable[T | None]] | None = None,
        idempotent: bool = False,
    ) -> T:
        """Make one platform call of this row at most once per success, across restarts.

        A step already made returns its recorded result. Before a new call, the results of
        the calls before it are saved, so a crash re-makes only the call that was running.
        If that call is in doubt, ``find`` (when the platform can tell) looks for what it
        left; a result found is recorded instead of calling again. An ``idempotent`` call
        (an edit to a fixed state) is simply made again. ``call`` and ``find`` must return
        JSON values.
        """
        if key in self.done:
            done: T = self.done[key]
            return done
        if self._unsaved and self.save is not None:
            await self.save(dict(self.done))
            self._unsaved = False
        if self.in_doubt and idempotent:
            self.in_doubt = False  # doing it twice shows the same thing
        if self.in_doubt:
            if find is not None:
                found = await find()
                self.in_doubt = False
                if found is not None:
                    log.info("outbox row %s: %s was already delivered; recorded", self.id, key)
                    self.recovered.append(key)
                    self.done[key] = found
                    self._unsaved = True
                    return found
            else:
                log.warning(
                    "outbox row %s: %s may have been delivered before a crash and cannot be "
                    "checked on %s; sending it again",
                    self.id,
                    key,
                    self.channel,
                )
                self.resent.append(key)
                self.in_doubt = False
        result = await call()
        self.done[key] = result
        self._unsaved = True
        return result


@dataclass
class SendResult:
    """The outcome of one platform call."""

    ok: bool = True
    retry_after: float | None = None  # seconds, from a 429 or our own backoff
    permanent: bool = False  # do not retry (400, 403...)
    deferred: bool = False  # not tried yet (our own rate limiter): no attempt is counted
    unreachable: bool = False  # the user blocked the bot / left
    # The failed call may still have reached the platform (timeout, lost connection, 5xx):
    # the next attempt treats it as in doubt.
    maybe_sent: bool = False
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


# A claimed row, what the sender worked with, and how its call ended.
Outcome = tuple[Outbox, OutboxItem, SendResult]


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
        # Outcomes of this pass waiting for their record (see _send_and_record).
        self._unrecorded: list[Outcome] = []
        self._recording = asyncio.Lock()

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
                sent = await self.run_once(50)
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

    async def _claim(self, now: datetime, limit: int) -> list[tuple[Outbox, bool]]:
        """Claim due rows; each with whether its previous attempt may have sent something."""
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
            rows = await _unsent(s, list(self.senders))
            candidates: list[tuple[Outbox, bool]] = []
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
                if len(candidates) >= limit:
                    self._more = True
                    break
                state = row.result or {}
                # Still marked in flight: the attempt that claimed it last never recorded.
                candidates.append((row, bool(state.get("inflight") or state.get("doubt"))))
            taken = await self._take(s, candidates, now)
        return [(row, doubt) for row, doubt in candidates if row.id in taken]

    async def _take(
        self, s: AsyncSession, candidates: list[tuple[Outbox, bool]], now: datetime
    ) -> set[int]:
        """Mark the candidates as being sent by this worker; the ids it won.

        The claim writes the durable "attempt started" marker (``inflight``), cleared by the
        record. Rows without earlier state are taken in one statement.
        """
        conn = await s.connection()
        until = now + LOCK_FOR
        fresh = [row.id for row, _ in candidates if not row.result]
        taken: set[int] = set()
        if fresh:
            res = await conn.execute(
                _TAKE_FRESH, {"rows": fresh, "worker": self.worker_id, "until": until}
            )
            taken.update(res.scalars())
        for row, _ in candidates:
            if row.result:
                changed = await _TAKE.execute(
                    s,
                    {
                        "row": row.id,
                        "worker": self.worker_id,
                        "until": until,
                        "result": {**row.result, "inflight": True},
                    },
                )
                if changed == 1:
                    taken.add(row.id)
        return taken

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
        them concurrently, each recorded as soon as its call returned; the rows claimed.

        Until its outcome is recorded, each row keeps the claim's in-flight marker, so after
        a crash the next attempt knows that its next call may already have been made.
        """
        now = self.clock.now()
        claimed = await self._claim(now, limit)
        if not claimed:
            return 0
        rows = [row for row, _ in claimed]
        items = await self._items(rows)
        for row, doubt in claimed:
            items[row.id].in_doubt = doubt
        await asyncio.gather(*(self._send_and_record(row, items[row.id]) for row in rows))
        return len(rows)

    async def _send_and_record(self, row: Outbox, item: OutboxItem) -> None:
        """Send one row and record its outcome as soon as its call returned.

        The record is what turns "sent, maybe" into "sent": until it commits, a crash leaves
        the row in doubt (a lookup on Slack, a probe or a second copy on Telegram), so it is
        not kept waiting for the slowest call of the pass. Rows of the pass that finish
        while a record is being written are recorded together in the next one.
        """
        result = await self._send(row, item)
        self._unrecorded.append((row, item, result))
        await asyncio.sleep(0)  # calls that returned in the same loop turn join this record
        async with self._recording:
            if not self._unrecorded:
                return  # recorded with another row's outcome while this one waited
            batch, self._unrecorded = self._unrecorded, []
            async with self.db.transaction(urgent=True) as s:
                await self._record(s, batch, self.clock.now())

    async def _save_progress(self, row_id: int, done: dict[str, Any]) -> None:
        """Persist the calls a row has made so far (between two calls of one row)."""
        async with self.db.transaction() as s:
            await s.execute(
                update(Outbox)
                .where(Outbox.id == row_id, Outbox.locked_by == self.worker_id)
                .values(result={"inflight": True, "done": done})
                .execution_options(synchronize_session=False)
            )

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
                done=dict((row.result or {}).get("done") or {}),
                save=functools.partial(self._save_progress, row.id),
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

    async def _record(self, s: AsyncSession, outcomes: list[Outcome], now: datetime) -> None:
        """Record a pass's outcomes in the caller's unit of work; the rows that went out
        are marked sent with one statement (one parameter set per row)."""
        sent: list[dict[str, Any]] = []
        for row, item, result in outcomes:
            if result.ok:
                sent.append(
                    {
                        "row": row.id,
                        "at": now,
                        "attempts": row.attempts + 1,
                        "result": {"done": item.done} if item.done else None,
                    }
                )
        if sent:
            await _MARK_SENT.executemany(s, sent)
        for row, item, result in outcomes:
            await self._record_one(s, row, item, result, now)

    async def _record_one(
        self, s: AsyncSession, row: Outbox, item: OutboxItem, result: SendResult, now: datetime
    ) -> None:
        if self.metrics is not None:
            if item.recovered:
                self.metrics.deliveries.labels(row.channel, "recovered").inc(len(item.recovered))
            if item.resent:
                self.metrics.deliveries.labels(row.channel, "resent_in_doubt").inc(len(item.resent))
        if result.ok:
            if self.metrics is not None:
                self.metrics.deliveries.labels(row.channel, "sent").inc()
            # The row itself was marked sent by _record, with the others of its pass.
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
        # What the calls so far returned, and whether the next one may already have landed.
        state: dict[str, Any] = {"done": item.done, "doubt": item.in_doubt or result.maybe_sent}
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
                    result=state,
                )
                .execution_options(synchronize_session=False)
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
            elif row.kind == "message" and row.ticket_id is not None:
                # Never silently: L2 learns on the ticket that the user did not get it.
                await self.desk.delivery_failed(s, row.ticket_id, result.error, now)
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
                result=state,
            )
            .execution_options(synchronize_session=False)
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


UNDELIVERED = ("pending", "sending", "failed")


async def outbox_stats(db: Database, now: datetime) -> dict[str, Any]:
    """Counts of the rows not delivered (pending, sending, failed) and the age of the oldest
    unsent one (the outbox lag). Delivered rows are not counted: there can be millions, and
    this runs for every health check (the status index makes these counts cheap)."""
    async with db.read() as s:
        rows = (
            await s.execute(
                select(Outbox.status, func.count(), func.min(Outbox.created_at))
                .where(Outbox.status.in_(UNDELIVERED))
                .group_by(Outbox.status)
            )
        ).all()
    counts = {status: int(n) for status, n, _ in rows}
    waiting = [at for status, _, at in rows if status in ("pending", "sending") and at]
    lag = (now - min(waiting)).total_seconds() if waiting else 0.0
    return {"counts": counts, "lag_seconds": max(lag, 0.0)}
