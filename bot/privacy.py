"""Erasure of personal data: a user's ``/forget`` and the admin's retention period.

Both keep the SLA statistics: ticket rows keep their times, tier, priority, category and
status; events keep their kinds, times, actors' platform ids and the non-personal fields
the reports read (:data:`KEEP_KEYS`). What people wrote, their names, usernames and file
references become :data:`ERASED`.

Two deliberate exceptions, both to keep the figures of :mod:`escalation.report` exact:

* ``conversations.problem`` becomes empty, not ``[erased]``: the recontact rule compares
  problem texts, and two ``[erased]`` texts would look like "the same problem".
* Platform ids (``users.external_id``, ``chats.chat_key``, event actors) stay while the user
  still talks to the bot: replies, bans and idempotent intake need them. Retention erases the
  names of users who have been silent for the whole period.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.clock import Clock
from bot.storage.db import Database
from bot.storage.models import (
    Chat,
    Conversation,
    Event,
    Inbox,
    KbDraft,
    KbImpression,
    KbQuery,
    Outbox,
    ProcessedEvent,
    Ticket,
    TicketMessage,
    User,
)
from bot.storage.models import Counter as NamedValue

ERASED = "[erased]"
OPEN_STATUSES = ("new", "open", "in_progress", "waiting", "resolved")  # not yet final
FINAL_STATUSES = ("closed", "cancelled")
_CHUNK = 500

# JSON keys whose values are never personal: statistics, ids, enums, counts, times.
KEEP_KEYS = frozenset(
    {
        # events
        "target",
        "percent",
        "priority",
        "tier",
        "score",
        "outcome",
        "category",
        "decision",
        "article",
        "articles",
        "top_article",
        "top_score",
        "verdict",
        "lang",
        "number",
        "destination",
        "chars",
        "count",
        "owner",
        "owner_name",  # a consultant's name, shown in the managers' report
        "old",
        "new",
        "level",
        "step",
        "option",
        "since",
        "due",
        "deadline",
        "action",
        "draft",
        "channel",
        "outbox_kind",
        "day",
        "event_id",
        "source_channel",
        "direction",
        "created_at",
        "organisation",  # the customer company from the admin's directory
        # conversation data
        "shown",
        "suggested",
        "suggested_scores",
        "steps_done",
        "priority_floor",
        "impression",
        "cancel_return",
        # outbox payloads and attachments
        "ticket_id",
        "message_id",
        "role",
        "markdown",
        "kind",
        "mime",
        "size",
        "data",
        "label",
        "coalesced",
        "erased",
        "event_kind",
        "command",
    }
)


def scrub(value: Any, key: str | None = None) -> Any:
    """``value`` with every string under a key not in :data:`KEEP_KEYS` erased (recursive;
    numbers, booleans and ``None`` stay, so counts and flags survive)."""
    if isinstance(value, dict):
        return {k: scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, key) for v in value]
    if isinstance(value, str) and value and key not in KEEP_KEYS:
        return ERASED
    return value


def _erase_text(text: str | None) -> str | None:
    return ERASED if text else text


def _chunks(ids: Sequence[int], size: int = _CHUNK) -> Iterable[list[int]]:
    for i in range(0, len(ids), size):
        yield list(ids[i : i + size])


async def _rows(s: AsyncSession, model: Any, column: Any, ids: Iterable[int]) -> list[Any]:
    out: list[Any] = []
    for chunk in _chunks(sorted(set(ids))):
        out += (await s.execute(select(model).where(column.in_(chunk)))).scalars()
    return out


async def erase_records(
    s: AsyncSession,
    conversation_ids: Iterable[int],
    ticket_ids: Iterable[int],
    *,
    actor: str | None = None,
    events_before: datetime | None = None,
) -> Counter[str]:
    """Anonymise what belongs to these conversations and tickets (and, with ``actor``, the
    events that person caused). Returns the number of rows touched per kind."""
    counts: Counter[str] = Counter()
    conv_ids = sorted(set(conversation_ids))
    tk_ids = sorted(set(ticket_ids))
    for conv in await _rows(s, Conversation, Conversation.id, conv_ids):
        conv.problem = ""  # empty, not ERASED: see the module docstring
        conv.details = _erase_text(conv.details) or ""
        counts["attachments"] += len(conv.data.get("attachments", []) or [])
        conv.data = {**scrub(conv.data), "erased": True}
        counts["conversations"] += 1
    for q in await _rows(s, KbQuery, KbQuery.conversation_id, conv_ids):
        if q.query != ERASED:
            q.query = ERASED
            counts["kb_queries"] += 1
    for imp in await _rows(s, KbImpression, KbImpression.conversation_id, conv_ids):
        imp.query = ERASED
    for tk in await _rows(s, Ticket, Ticket.id, tk_ids):
        tk.subject = ERASED
        counts["tickets"] += 1
    for tm in await _rows(s, TicketMessage, TicketMessage.ticket_id, tk_ids):
        if tm.text and tm.text != ERASED:
            counts["messages"] += 1
        tm.text = _erase_text(tm.text) or ""
        if tm.direction == "in":
            tm.author_name = _erase_text(tm.author_name) or ""
        counts["attachments"] += len(tm.attachments or [])
        tm.attachments = scrub(tm.attachments or [])
        tm.held = False
    for draft in await _rows(s, KbDraft, KbDraft.ticket_id, tk_ids):
        draft.question = ERASED
    events: dict[int, Event] = {}
    for e in await _rows(s, Event, Event.conversation_id, conv_ids):
        events[e.id] = e
    for e in await _rows(s, Event, Event.ticket_id, tk_ids):
        events[e.id] = e
    if actor is not None:
        stmt = select(Event).where(Event.actor == actor)
        if events_before is not None:
            stmt = stmt.where(Event.at < events_before)
        for e in (await s.execute(stmt)).scalars():
            events[e.id] = e
    for e in events.values():
        clean = scrub(e.data or {})
        if clean != e.data:
            e.data = clean
            counts["events"] += 1
    for row in await _rows(s, Outbox, Outbox.ticket_id, tk_ids):
        row.payload = scrub(row.payload or {})
        counts["outbox"] += 1
    return counts


async def user_records(s: AsyncSession, user: User) -> tuple[list[int], list[int]]:
    """The ids of every conversation and ticket of ``user``."""
    convs = (
        await s.execute(select(Conversation.id).where(Conversation.user_id == user.id))
    ).scalars()
    tickets = (await s.execute(select(Ticket.id).where(Ticket.user_id == user.id))).scalars()
    return list(convs), list(tickets)


def erase_user_row(user: User) -> None:
    """Forget the person's name, handle and time zone (the platform id stays: see above)."""
    user.display_name = ""
    user.username = None
    user.timezone = None
    user.unreachable_reason = _erase_text(user.unreachable_reason)


async def erase_user(s: AsyncSession, user: User, now: datetime) -> Counter[str]:
    """``/forget``: erase everything personal of ``user`` in the caller's unit of work.

    Open tickets should be cancelled by the caller first (L2 must hear of it). Messages
    still waiting in the outbox for the user's own chat are left alone: they go to the
    very person they are about.
    """
    conv_ids, ticket_ids = await user_records(s, user)
    counts = await erase_records(
        s, conv_ids, ticket_ids, actor=f"{user.channel}:{user.external_id}"
    )
    chats = list((await s.execute(select(Chat).where(Chat.user_id == user.id))).scalars())
    for chat in chats:
        rows = await s.execute(
            select(Outbox).where(
                Outbox.channel == chat.channel,
                Outbox.target == chat.chat_key,
                Outbox.status.not_in(("pending", "sending")),
            )
        )
        for row in rows.scalars():
            row.payload = scrub(row.payload or {})
            counts["outbox"] += 1
    # Requests of the user still parked for replay hold their raw text; a replay after the
    # erasure would also bring back what came before it.
    parked = await s.execute(select(Inbox).where(Inbox.channel == user.channel))
    for request in parked.scalars():
        if (request.body or {}).get("user") == user.external_id:
            await s.delete(request)
            counts["inbox"] += 1
    erase_user_row(user)
    user.erased_at = now
    user.updated_at = now
    return counts


RETENTION_MARK = "retention_mark"  # counters row: the cut-off of the last completed run (µs)


async def apply_retention(
    db: Database, clock: Clock, older_than: timedelta, batch: int = _CHUNK
) -> dict[str, int]:
    """Anonymise everything older than ``older_than``: conversations that ended (or were
    left) before the cut-off, closed or cancelled tickets, their events and sent messages;
    names of users silent since then; and drop processed event ids from before it.

    Open tickets and live conversations are never touched. Safe to run again, and cheap
    to run daily: tickets already erased are skipped, and the scans by time only cover the
    stretch since the previous run's cut-off (kept in ``counters``). The work is split into
    units of ``batch`` tickets, conversations or rows, so no transaction runs long.
    """
    cutoff = clock.now() - older_than
    counts: Counter[str] = Counter()
    async with db.read() as s:
        raw = await s.get(NamedValue, RETENTION_MARK)
        mark = _from_micros(raw.value) if raw is not None else None
        not_erased = or_(Ticket.subject.is_(None), Ticket.subject != ERASED)
        old_tickets = (
            await s.execute(
                select(Ticket.id, Ticket.conversation_id).where(
                    Ticket.status.in_(FINAL_STATUSES), Ticket.closed_at < cutoff, not_erased
                )
            )
        ).all()
        ticket_ids = {int(tid) for tid, _ in old_tickets}
        # A conversation whose ticket is still alive stays readable for L2.
        live_ticket_convs = set(
            (
                await s.execute(
                    select(Ticket.conversation_id).where(
                        not_erased,
                        or_(
                            Ticket.status.not_in(FINAL_STATUSES),
                            Ticket.closed_at.is_(None),
                            Ticket.closed_at >= cutoff,
                        ),
                    )
                )
            ).scalars()
        )
        ended = or_(
            Conversation.ended_at < cutoff,
            (Conversation.ended_at.is_(None)) & (Conversation.updated_at < cutoff),
        )
        since_mark = (
            or_(
                Conversation.ended_at >= mark,
                (Conversation.ended_at.is_(None)) & (Conversation.updated_at >= mark),
            )
            if mark is not None
            else None
        )
        # Conversations that ended since the last run, and older ones held back then
        # because their ticket was alive (it is being erased now).
        held_back = {int(c) for _, c in old_tickets if c is not None}
        window = select(Conversation.id).where(ended)
        if since_mark is not None:
            window = window.where(or_(since_mark, Conversation.id.in_(held_back)))
        candidates = {int(c) for c in (await s.execute(window)).scalars()}
        conv_ids = sorted(candidates - live_ticket_convs)
    for chunk in _chunks(sorted(ticket_ids), batch):
        async with db.transaction() as s:
            counts += await erase_records(s, [], chunk)
    for chunk in _chunks(conv_ids, batch):
        async with db.transaction() as s:
            counts += await erase_records(s, chunk, [])
    # Events that belong to no conversation and no ticket (those that do were scrubbed
    # with them above, or wait for theirs to end), and delivered messages, since the mark.
    counts["events"] += await _scrub_window(
        db, Event, Event.data, Event.at, mark, cutoff, batch,
        Event.ticket_id.is_(None), Event.conversation_id.is_(None),
    )
    counts["outbox"] += await _scrub_window(
        db, Outbox, Outbox.payload, Outbox.created_at, mark, cutoff, batch,
        Outbox.status.not_in(("pending", "sending")),
    )
    async with db.transaction() as s:
        counts["users"] += await _retire_silent_users(s, cutoff)
        res = await s.execute(delete(ProcessedEvent).where(ProcessedEvent.processed_at < cutoff))
        counts["processed_events"] = int(getattr(res, "rowcount", 0) or 0)
        # A request parked for replay for the whole period will not be replayed usefully;
        # its raw text must not outlive the period.
        res = await s.execute(delete(Inbox).where(Inbox.created_at < cutoff))
        if stale := int(getattr(res, "rowcount", 0) or 0):
            counts["inbox"] = stale
        if mark is None or cutoff > mark:
            await s.merge(NamedValue(name=RETENTION_MARK, value=_micros(cutoff)))
    return {k: counts[k] for k in _ALWAYS_SHOWN} | {k: v for k, v in counts.items() if v}


_ALWAYS_SHOWN = ("conversations", "tickets", "users", "processed_events")


def _micros(at: datetime) -> int:
    return int(at.astimezone(UTC).timestamp() * 1_000_000)


def _from_micros(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1_000_000, UTC)


async def _scrub_window(
    db: Database,
    model: Any,
    field: Any,
    at: Any,
    since: datetime | None,
    until: datetime,
    batch: int,
    *where: Any,
) -> int:
    """Scrub the JSON ``field`` of ``model`` rows with ``since <= at < until``, ``batch``
    rows per unit of work (walking the ids upwards); the number of rows changed."""
    name = field.key
    changed = 0
    last = 0
    while True:
        stmt = select(model).where(at < until, model.id > last, *where)
        if since is not None:
            stmt = stmt.where(at >= since)
        async with db.transaction() as s:
            rows = list((await s.execute(stmt.order_by(model.id).limit(batch))).scalars())
            for row in rows:
                value = getattr(row, name) or {}
                clean = scrub(value)
                if clean != value:
                    setattr(row, name, clean)
                    changed += 1
        if len(rows) < batch:
            return changed
        last = rows[-1].id


async def _retire_silent_users(s: AsyncSession, cutoff: datetime) -> int:
    """Erase the names of users with no chat activity and no live ticket since ``cutoff``."""
    last_seen = (
        select(Chat.user_id, func.max(Chat.updated_at).label("seen"))
        .group_by(Chat.user_id)
        .subquery()
    )
    busy = select(Ticket.user_id).where(Ticket.status.in_(OPEN_STATUSES))
    rows = await s.execute(
        select(User)
        .outerjoin(last_seen, last_seen.c.user_id == User.id)
        .where(
            # Not erased yet: a daily run does not walk every retired user again.
            or_(
                func.coalesce(User.display_name, "") != "",
                User.username.is_not(None),
                User.timezone.is_not(None),
            ),
            User.updated_at < cutoff,
            or_(last_seen.c.seen.is_(None), last_seen.c.seen < cutoff),
            User.id.not_in(busy),
        )
    )
    n = 0
    for user in rows.scalars():
        if user.display_name or user.username or user.timezone:
            erase_user_row(user)
            n += 1
    return n
