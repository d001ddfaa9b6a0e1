"""Per-user flood control: a user who writes faster than a person reads is slowed down.

The counters live on the ``users`` row (a fixed window and the number of events in it), so
the limit holds across restarts and across processes that share the database. Within a
window the first :data:`LIMIT` events are handled normally. Beyond that the bot answers
once ("you're writing too fast"), keeps every message (in the ticket as *held* messages,
or in the conversation's details) and stops answering each one. Held ticket messages reach
L2 as one coalesced post per ticket: when the user's next window starts, or when
:func:`flush_held` runs after the window ended (a scheduler job; it holds no state).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.clock import Clock
from bot.storage.db import Database
from bot.storage.models import Ticket, TicketMessage, User
from bot.storage.repo import log_event

if TYPE_CHECKING:
    from escalation.desk import Desk

LIMIT = 10  # user events per window handled normally
# What counts: everything the user types. Button presses answer a prompt the bot offered
# (one per prompt: a stale press is refused for free), so a checklist walked quickly is
# never throttled.
COUNTED_KINDS = frozenset({"message", "edit", "command", "unsupported"})
WINDOW = timedelta(seconds=10)
# The coalesced L2 post quotes this many held messages, each cut to PREVIEW_CHARS, and the
# whole post stays under POST_CHARS (Slack and Telegram both cut long messages).
PREVIEW_MESSAGES = 20
PREVIEW_CHARS = 300
POST_CHARS = 3500


@dataclass(frozen=True)
class FloodState:
    """The outcome of counting one event."""

    over: bool  # beyond the limit: keep, do not answer
    warn: bool  # the first event beyond the limit in this window: say "too fast" once
    new_window: bool  # this event opened a new window (held messages may go out now)
    # The window this event closed went over the limit, so it may have held messages: only
    # then does the new window look for them (the periodic flush_held catches the rest).
    held_before: bool = False


def count_event(user: User, now: datetime) -> FloodState:
    """Count one event of ``user`` at ``now`` (mutates the row; the caller's unit of work
    commits it together with the event's effects)."""
    start = user.flood_window_start
    # A clock that went backwards (another host, a test) starts a fresh window too.
    if start is None or now - start >= WINDOW or now < start:
        # Messages are held only beyond the limit, and each new window relays the previous
        # one's: held ones can only come from the window closing now.
        held_before = start is not None and (
            (user.flood_count or 0) > LIMIT or bool(user.flood_warned)
        )
        user.flood_window_start = now
        user.flood_count = 1
        user.flood_warned = False
        return FloodState(over=False, warn=False, new_window=True, held_before=held_before)
    user.flood_count = (user.flood_count or 0) + 1
    if user.flood_count <= LIMIT:
        return FloodState(over=False, warn=False, new_window=False)
    warn = not user.flood_warned
    user.flood_warned = True
    return FloodState(over=True, warn=warn, new_window=False)


def coalesced_text(texts: list[str], attachments: int) -> str:
    """``+N more messages:`` with the texts, each and all truncated sensibly."""
    lines = [f"+{len(texts)} more message(s):"]
    size = len(lines[0])
    shown = 0
    for text in texts[:PREVIEW_MESSAGES]:
        one = " ".join(text.split())  # newlines of a pasted log would eat the post
        if len(one) > PREVIEW_CHARS:
            one = one[: PREVIEW_CHARS - 1] + "…"
        line = f"• {one}" if one else "• (—)"
        if size + len(line) + 1 > POST_CHARS:
            break
        lines.append(line)
        size += len(line) + 1
        shown += 1
    if shown < len(texts):
        lines.append(f"… {len(texts) - shown} more in the ticket history")
    if attachments:
        lines.append(f"📎 {attachments}")
    return "\n".join(lines)


async def flush_ticket(s: AsyncSession, desk: Desk, ticket: Ticket, now: datetime) -> int:
    """Post the ticket's held messages as one coalesced post; return how many it carried."""
    if not desk.db.sqlite:
        # Two processes flushing at once: the second waits, then finds nothing held.
        await s.refresh(ticket, with_for_update=True)
    rows = list(
        (
            await s.execute(
                select(TicketMessage)
                .where(TicketMessage.ticket_id == ticket.id, TicketMessage.held.is_(True))
                .order_by(TicketMessage.id)
            )
        ).scalars()
    )
    if not rows:
        return 0
    attachments: list[object] = []
    for tm in rows:
        tm.held = False
        attachments.extend(tm.attachments or [])
    user = await s.get(User, ticket.user_id)
    await desk.post(
        s,
        ticket,
        "ticket_post",
        {
            "role": "user",
            "message_id": rows[-1].id,
            "author": user.display_name if user is not None else "",
            "text": coalesced_text([tm.text for tm in rows], len(attachments)),
            "attachments": attachments[-10:],
            "coalesced": len(rows),
        },
        now,
    )
    await log_event(s, "flood_relayed", actor="bot", at=now, ticket_id=ticket.id, count=len(rows))
    return len(rows)


async def flush_user(s: AsyncSession, desk: Desk, user: User, now: datetime) -> int:
    """Flush the held messages of every ticket of ``user``."""
    ids = (
        await s.execute(
            select(TicketMessage.ticket_id)
            .join(Ticket, Ticket.id == TicketMessage.ticket_id)
            .where(Ticket.user_id == user.id, TicketMessage.held.is_(True))
            .distinct()
        )
    ).scalars()
    total = 0
    for ticket_id in sorted(set(ids)):
        ticket = await s.get(Ticket, ticket_id)
        if ticket is not None:
            total += await flush_ticket(s, desk, ticket, now)
    return total


async def flush_held(db: Database, desk: Desk, clock: Clock) -> int:
    """Relay held messages whose flood window has ended (a periodic job, safe to run twice
    or in two processes: the rows it flushes are marked in the same transaction)."""
    now = clock.now()
    async with db.transaction() as s:
        users = list(
            (
                await s.execute(
                    select(User)
                    .join(Ticket, Ticket.user_id == User.id)
                    .join(TicketMessage, TicketMessage.ticket_id == Ticket.id)
                    .where(TicketMessage.held.is_(True))
                    .distinct()
                )
            ).scalars()
        )
        total = 0
        for user in users:
            start = user.flood_window_start
            if start is not None and start <= now < start + WINDOW:
                continue  # still flooding: one post when the window is over
            total += await flush_user(s, desk, user, now)
    return total
