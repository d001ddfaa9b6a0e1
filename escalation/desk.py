"""Tickets and the L2 desk: open, claim, reply, note, ask the customer, resolve, L3, reopen.

Every change is one event in the append-only log and, where someone must hear of it, an
outbox row; SLA deadlines are recomputed on every change (:mod:`escalation.sla`).
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.clock import Clock
from bot.domain import AgentEvent, Attachment, HandleResult, OutMessage, csat_rows
from bot.i18n import t
from bot.logs import log_context
from bot.storage.db import Database
from bot.storage.models import (
    Chat,
    Conversation,
    Customer,
    KbDraft,
    MessageLink,
    Ticket,
    TicketMessage,
    TicketPause,
    User,
)
from bot.storage.repo import claim_event, enqueue, log_event, next_value
from config.categories import PRIORITIES, Category
from config.settings import Settings
from escalation.sla import SlaService
from escalation.texts import lt

if TYPE_CHECKING:
    from bot.content import Content

log = logging.getLogger(__name__)

OPEN_STATUSES = ("new", "open", "in_progress", "waiting")
FINAL_STATUSES = ("closed", "cancelled")
_NUMBER = re.compile(r"(?:[A-Za-z]{1,8}-)?(\d{1,9})")


def destination_split(dest: str) -> tuple[str, str]:
    """``"telegram:-100123"`` -> ``("telegram", "-100123")``."""
    channel, _, target = dest.partition(":")
    return channel, target


class Desk:
    """Ticket lifecycle and the L2 consultant's actions; platform-independent."""

    def __init__(
        self,
        db: Database,
        content: Content,
        clock: Clock,
        settings: Settings,
    ) -> None:
        self.db = db
        self.content = content
        self.clock = clock
        self.settings = settings
        self.esc = settings.escalation
        self.l2_lang = settings.escalation.language
        self.sla = SlaService(content.sla, settings)
        self.kb: Any = None  # set by the app: card titles of shown articles

    # ------------------------------------------------------------------ naming and lookup

    def number(self, ticket: Ticket) -> str:
        """The human-friendly number, e.g. ``FL-1042``."""
        return f"{self.esc.ticket_prefix}-{ticket.number}"

    def parse_number(self, text: str) -> int | None:
        """``"FL-1042"``, ``"fl-1042"`` or ``"1042"`` -> 1042."""
        m = _NUMBER.fullmatch(text.strip())
        return int(m.group(1)) if m else None

    async def by_number(self, s: AsyncSession, text: str) -> Ticket | None:
        """The ticket named by ``text``, if any."""
        n = self.parse_number(text)
        if n is None:
            return None
        return (await s.execute(select(Ticket).where(Ticket.number == n))).scalar_one_or_none()

    async def user_tickets(self, s: AsyncSession, user_id: int) -> list[Ticket]:
        """The user's open and recently resolved tickets, newest first."""
        rows = await s.execute(
            select(Ticket)
            .where(Ticket.user_id == user_id, Ticket.status.in_([*OPEN_STATUSES, "resolved"]))
            .order_by(Ticket.id.desc())
            .limit(10)
        )
        return list(rows.scalars())

    def default_destination(self) -> str:
        """Where tickets go when no route matches: the configured platform, else the console."""
        if self.esc.default_destination:
            return self.esc.default_destination
        if self.settings.telegram.bot_token and self.settings.telegram.l2_chat_id is not None:
            return f"telegram:{self.settings.telegram.l2_chat_id}"
        if self.settings.slack.bot_token and self.settings.slack.l2_channel:
            return f"slack:{self.settings.slack.l2_channel}"
        return "console:l2"

    def route(self, category: Category | None) -> str:
        """The L2 destination for a category (routing rule), else the default."""
        if category is not None:
            if category.id in self.esc.routes:
                return self.esc.routes[category.id]
            if category.l2_route and category.l2_route in self.esc.routes:
                return self.esc.routes[category.l2_route]
        return self.default_destination()

    def l3_destination(self) -> str:
        """Where L3 escalations go."""
        if self.esc.l3_destination:
            return self.esc.l3_destination
        if self.settings.telegram.bot_token and self.settings.telegram.l3_chat_id is not None:
            return f"telegram:{self.settings.telegram.l3_chat_id}"
        if self.settings.slack.bot_token and self.settings.slack.l3_channel:
            return f"slack:{self.settings.slack.l3_channel}"
        return "console:l3"

    async def customer(self, s: AsyncSession, user: User) -> tuple[str | None, str]:
        """(organisation, tier): the database directory, then the file, then the default."""
        row = (
            await s.execute(
                select(Customer).where(
                    Customer.channel == user.channel, Customer.external_id == user.external_id
                )
            )
        ).scalar_one_or_none()
        if row is not None and row.tier in self.content.sla.tiers:
            return row.organisation, row.tier
        entry = self.content.customers.lookup(user.channel, user.external_id)
        if entry is not None and entry.tier in self.content.sla.tiers:
            return entry.organisation, entry.tier
        return None, self.content.sla.default_tier

    async def import_customers(self, rows: list[tuple[str, str, str, str]]) -> int:
        """Upsert directory rows ``(platform, user_id, organisation, tier)``; they win over
        the file. Tickets keep the tier fixed when they opened."""
        now = self.clock.now()
        async with self.db.transaction() as s:
            for platform, user_id, org, tier in rows:
                row = (
                    await s.execute(
                        select(Customer).where(
                            Customer.channel == platform, Customer.external_id == user_id
                        )
                    )
                ).scalar_one_or_none()
                if row is None:
                    s.add(
                        Customer(
                            channel=platform,
                            external_id=user_id,
                            organisation=org,
                            tier=tier,
                            updated_at=now,
                        )
                    )
                else:
                    row.organisation, row.tier, row.updated_at = org, tier, now
            await log_event(s, "customers_imported", actor="admin", at=now, count=len(rows))
        return len(rows)

    # ------------------------------------------------------------------ outbox helpers

    async def post(
        self,
        s: AsyncSession,
        ticket: Ticket,
        kind: str,
        payload: dict[str, Any],
        now: datetime,
        *,
        destination: str | None = None,
    ) -> None:
        """Queue something for the ticket's L2 thread (or another destination)."""
        channel, target = destination_split(destination or self._active_destination(ticket))
        await enqueue(
            s,
            channel=channel,
            target=target,
            kind=kind,
            payload={"ticket_id": ticket.id, **payload},
            now=now,
            ticket_id=ticket.id,
        )

    def _active_destination(self, ticket: Ticket) -> str:
        return (
            ticket.l3_destination
            if ticket.level == "l3" and ticket.l3_destination
            else (ticket.destination)
        )

    async def notice(self, s: AsyncSession, ticket: Ticket, text: str, now: datetime) -> None:
        """A system line in the ticket's thread."""
        await self.post(s, ticket, "ticket_post", {"role": "system", "text": text}, now)

    async def update_card(self, s: AsyncSession, ticket: Ticket, now: datetime) -> None:
        """Queue a re-render of the ticket card (it is built from the database at send time)."""
        await self.post(s, ticket, "ticket_card", {}, now)
        if ticket.level == "l3" and ticket.l3_destination:
            await self.post(s, ticket, "ticket_card", {}, now, destination=ticket.destination)

    async def to_user(
        self, s: AsyncSession, ticket: Ticket, msg: OutMessage, now: datetime
    ) -> None:
        """Queue a message to the ticket owner's (the end user's) chat."""
        chat = await s.get(Chat, ticket.chat_id)
        if chat is None:
            return
        await enqueue(
            s,
            channel=chat.channel,
            target=chat.chat_key,
            kind="message",
            payload=msg.to_payload(),
            now=now,
            ticket_id=ticket.id,
        )

    async def user_lang(self, s: AsyncSession, ticket: Ticket) -> str:
        """The language to speak to the ticket's user in (their current choice)."""
        user = await s.get(User, ticket.user_id)
        if user is not None and user.language:
            return user.language
        return ticket.lang

    # ------------------------------------------------------------------ SLA texts for users

    def first_response_eta(
        self, ticket: Ticket, lang: str, user_tz: str | None = None
    ) -> tuple[str | None, bool]:
        """The first-response deadline in the user's time zone (else the desk's), and
        whether L2 is closed right now."""
        due = ticket.first_response_due
        if due is None:
            return None, False
        cal = self.content.sla.calendar_for(ticket.tier)
        closed_now = not cal.is_open(ticket.created_at)
        return _format_local(due, _zone(user_tz) or cal.tz, lang), closed_now

    def eta_text(self, ticket: Ticket, lang: str) -> str | None:
        """A line about the next deadline for ``/status``."""
        if ticket.status not in OPEN_STATUSES or ticket.status == "waiting":
            return None
        due = ticket.first_response_due or ticket.next_response_due
        if due is None:
            return None
        cal = self.content.sla.calendar_for(ticket.tier)
        when = _format_local(due, cal.tz, lang)
        return f"⏱ {when}"

    # ------------------------------------------------------------------ opening

    async def open_ticket(
        self,
        s: AsyncSession,
        conv: Conversation,
        user: User,
        chat: Chat,
        *,
        priority: str,
        category: Category | None,
        now: datetime,
    ) -> Ticket:
        """Create a ticket from a conversation, fix its tier, post the card, start the SLA."""
        organisation, tier = await self.customer(s, user)
        number = await next_value(s, "ticket", self.esc.first_ticket_number)
        problem = conv.problem.strip() or conv.details.strip() or "(no description)"
        subject = problem.splitlines()[0][:300]
        ticket = Ticket(
            number=number,
            conversation_id=conv.id,
            user_id=user.id,
            chat_id=chat.id,
            status="open",
            level="l2",
            priority=priority,
            tier=tier,
            organisation=organisation,
            category=category.id if category else None,
            subject=subject,
            lang=conv.lang,
            destination=self.route(category),
            created_at=now,
            updated_at=now,
            last_customer_at=now,
            reopen_count=0,
            version=0,
        )
        s.add(ticket)
        await s.flush()
        attachments = conv.data.get("attachments", [])
        if conv.details or attachments:
            s.add(
                TicketMessage(
                    ticket_id=ticket.id,
                    direction="in",
                    author_key=f"{user.channel}:{user.external_id}",
                    author_name=user.display_name,
                    text=conv.details,
                    attachments=list(attachments),
                    created_at=now,
                )
            )
        await log_event(
            s,
            "ticket_opened",
            actor=f"{user.channel}:{user.external_id}",
            at=now,
            ticket_id=ticket.id,
            conversation_id=conv.id,
            number=self.number(ticket),
            priority=priority,
            tier=tier,
            category=ticket.category,
            destination=ticket.destination,
            organisation=organisation,
        )
        await self.sla.refresh(s, ticket, now)
        await self.post(s, ticket, "ticket_card", {"new": True}, now)
        return ticket

    # ------------------------------------------------------------------ the user's side

    async def user_message(
        self,
        s: AsyncSession,
        conv: Conversation,
        user: User,
        text: str,
        attachments: list[Attachment],
        message_id: str | None,
        now: datetime,
        *,
        reopen_from_csat: bool = False,
        hold: bool = False,
    ) -> str | None:
        """Relay a user message into the ticket; reopen within the window. ``None`` when the
        ticket cannot take it (closed, cancelled, window passed) — it is a new problem then.

        With ``hold`` (a flooding user) the message is stored and counted for the SLA but
        not posted: :mod:`bot.flood` relays the held ones later as one coalesced post.
        """
        if conv.ticket_id is None:
            return None
        ticket = await s.get(Ticket, conv.ticket_id)
        if ticket is None or ticket.status in FINAL_STATUSES:
            return None
        actor = f"{user.channel}:{user.external_id}"
        if ticket.status == "resolved":
            resolved_at = ticket.resolved_at or ticket.updated_at
            if now - resolved_at > self.esc.reopen_window:
                return None
            await self.reopen(s, ticket, now, actor=actor)
        if ticket.status == "waiting":
            await self._end_pause(s, ticket, now)
            ticket.status = "in_progress" if ticket.owner_key else "open"
            await log_event(s, "customer_replied", actor=actor, at=now, ticket_id=ticket.id)
        tm = TicketMessage(
            ticket_id=ticket.id,
            direction="in",
            author_key=actor,
            author_name=user.display_name,
            text=text,
            attachments=[a.to_json() for a in attachments],
            source_channel=user.channel,
            source_message_id=message_id,
            created_at=now,
            held=hold,
        )
        s.add(tm)
        await s.flush()
        ticket.last_customer_at = now
        if ticket.first_response_at is not None and ticket.awaiting_reply_since is None:
            ticket.awaiting_reply_since = now
        ticket.updated_at = now
        await log_event(
            s,
            "user_message",
            actor=actor,
            at=now,
            ticket_id=ticket.id,
            chars=len(text),
            attachments=len(attachments),
        )
        if hold:
            await self.sla.refresh(s, ticket, now)
            return self.number(ticket)
        await self.post(
            s,
            ticket,
            "ticket_post",
            {
                "role": "user",
                "message_id": tm.id,
                "author": user.display_name,
                "text": text,
                "attachments": [a.to_json() for a in attachments],
            },
            now,
        )
        await self.sla.refresh(s, ticket, now)
        await self.update_card(s, ticket, now)
        return self.number(ticket)

    async def user_edit(
        self,
        s: AsyncSession,
        conv: Conversation,
        user: User,
        message_id: str,
        text: str,
        now: datetime,
        *,
        relay: bool = True,
    ) -> bool:
        """Relay an edit of a message already relayed to L2 (only store it without
        ``relay``: a flooding user's edits wait like their messages)."""
        if conv.ticket_id is None:
            return False
        tm = (
            await s.execute(
                select(TicketMessage).where(
                    TicketMessage.ticket_id == conv.ticket_id,
                    TicketMessage.source_channel == user.channel,
                    TicketMessage.source_message_id == message_id,
                )
            )
        ).scalar_one_or_none()
        ticket = await s.get(Ticket, conv.ticket_id)
        if tm is None or ticket is None:
            return False
        tm.text = text
        tm.edited_at = now
        await log_event(
            s,
            "user_edit",
            actor=f"{user.channel}:{user.external_id}",
            at=now,
            ticket_id=ticket.id,
        )
        if not relay or tm.held:
            return True  # a held message goes out with its newest text
        await self.post(
            s,
            ticket,
            "ticket_post",
            {"role": "user_edit", "message_id": tm.id, "author": user.display_name, "text": text},
            now,
        )
        return True

    async def cancel_by_user(
        self, s: AsyncSession, ticket: Ticket, now: datetime, *, actor: str
    ) -> None:
        """The user withdrew the ticket."""
        await self._end_pause(s, ticket, now)
        ticket.status = "cancelled"
        ticket.closed_at = now
        ticket.updated_at = now
        await log_event(s, "ticket_cancelled", actor=actor, at=now, ticket_id=ticket.id)
        await self.notice(
            s, ticket, lt("cancelled_by_user", self.l2_lang, number=self.number(ticket)), now
        )
        await self.sla.refresh(s, ticket, now)
        await self.update_card(s, ticket, now)

    async def cancel_for_erasure(
        self, s: AsyncSession, ticket: Ticket, now: datetime, *, actor: str
    ) -> None:
        """The user erased their data (``/forget``): cancel the ticket and tell L2 why."""
        if ticket.status in OPEN_STATUSES:
            await self.cancel_by_user(s, ticket, now, actor=actor)
        await self.notice(
            s, ticket, lt("user_forgot", self.l2_lang, number=self.number(ticket)), now
        )
        conv = await s.get(Conversation, ticket.conversation_id)
        if conv is not None and conv.ended_at is None:
            conv.state = "done"
            conv.ended_at = now
            if conv.outcome is None:
                conv.outcome = "escalated"
            await log_event(
                s,
                "conversation_ended",
                actor=actor,
                at=now,
                conversation_id=conv.id,
                outcome=conv.outcome,
                category=conv.category,
            )

    async def record_csat(
        self, s: AsyncSession, conv: Conversation, score: int, now: datetime, *, actor: str
    ) -> None:
        """Store the user's 1-5 rating on the conversation's ticket."""
        if conv.ticket_id is None:
            return
        ticket = await s.get(Ticket, conv.ticket_id)
        if ticket is None:
            return
        ticket.csat = score
        ticket.csat_at = now
        await log_event(s, "csat", actor=actor, at=now, ticket_id=ticket.id, score=score)
        await self.update_card(s, ticket, now)

    async def close_stale(self, now: datetime) -> int:
        """Close resolved tickets whose reopen window has passed; return how many."""
        cutoff = now - self.esc.reopen_window
        closed = 0
        async with self.db.transaction() as s:
            rows = await s.execute(
                select(Ticket).where(Ticket.status == "resolved", Ticket.resolved_at <= cutoff)
            )
            for ticket in rows.scalars():
                ticket.status = "closed"
                ticket.closed_at = now
                ticket.updated_at = now
                await log_event(s, "ticket_closed", actor="bot", at=now, ticket_id=ticket.id)
                conv = await s.get(Conversation, ticket.conversation_id)
                if conv is not None and conv.state in ("csat", "ticket") and conv.ended_at is None:
                    conv.state = "done"
                    conv.ended_at = now
                await self.update_card(s, ticket, now)
                closed += 1
        return closed

    async def reopen(self, s: AsyncSession, ticket: Ticket, now: datetime, *, actor: str) -> None:
        """Back to work after a resolution."""
        ticket.status = "in_progress" if ticket.owner_key else "open"
        ticket.resolved_at = None
        ticket.reopen_count += 1
        ticket.updated_at = now
        conv = await s.get(Conversation, ticket.conversation_id)
        if conv is not None and conv.state in ("csat", "done"):
            conv.state = "ticket"
            conv.ended_at = None
        await log_event(s, "ticket_reopened", actor=actor, at=now, ticket_id=ticket.id)
        await self.notice(s, ticket, lt("reopened", self.l2_lang, number=self.number(ticket)), now)

    # ------------------------------------------------------------------ the consultant's side

    def authorized(self, ev: AgentEvent) -> bool:
        """Configured consultants, or members the platform vouches for, may act."""
        if ev.is_member:
            return True
        if ev.channel == "console":
            allowed = self.esc.console_consultants
            return not allowed or ev.agent.user_id in allowed
        if ev.channel == "telegram":
            return ev.agent.user_id in {str(c) for c in self.settings.telegram.consultants}
        if ev.channel == "slack":
            return ev.agent.user_id in set(self.settings.slack.consultants)
        return ev.channel == "memory" and ev.agent.user_id.startswith("agent")

    async def knows_thread(self, channel: str, destination: str, thread_ref: str) -> bool:
        """Whether a thread (card, topic, relayed post) in ``destination`` is a ticket's.

        Lets an adapter skip asking its platform about a thread's root message when the
        thread is known anyway (read-only, its own short transaction)."""
        async with self.db.transaction() as s:
            found = (
                await s.execute(
                    select(MessageLink.id)
                    .where(
                        MessageLink.channel == channel,
                        MessageLink.chat_key == destination_split(destination)[1],
                        MessageLink.message_key == thread_ref,
                    )
                    .limit(1)
                )
            ).scalar_one_or_none()
        return found is not None

    async def find_ticket(self, s: AsyncSession, ev: AgentEvent) -> Ticket | None:
        """The ticket an agent event is about: named, or found by its thread or topic."""
        if ev.ticket:
            return await self.by_number(s, ev.ticket)
        if ev.thread_ref:
            link = (
                await s.execute(
                    select(MessageLink)
                    .where(
                        MessageLink.channel == ev.channel,
                        MessageLink.chat_key == destination_split(ev.destination)[1],
                        MessageLink.message_key == ev.thread_ref,
                    )
                    .order_by(MessageLink.id.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            if link is not None:
                return await s.get(Ticket, link.ticket_id)
        return None

    async def handle_agent(self, ev: AgentEvent) -> HandleResult:
        """Process one consultant action exactly once."""
        async with self.db.transaction() as s:
            now = self.clock.now()
            if not await claim_event(s, ev.channel, ev.event_id, now):
                return HandleResult(duplicate=True)
            actor = ev.agent.key
            ticket = await self.find_ticket(s, ev)
            adopted = False
            if ticket is None and ev.root_ticket:
                # A thread under a card the database does not know (a copy left by a crash):
                # the card itself says which ticket it shows.
                ticket = await self.by_number(s, ev.root_ticket)
                adopted = ticket is not None
            if ticket is None and ev.action == "message" and not ev.root_is_bot:
                # Chatter in the L2 room that is not about a ticket: nobody's business,
                # whoever wrote it (no refusal notices in reply to small talk).
                return HandleResult()
            if not self.authorized(ev):
                await log_event(s, "agent_refused", actor=actor, at=now, action=ev.action)
                text = lt("not_consultant", self.l2_lang)
                await self._tell_agent(s, ev, text, now)
                return HandleResult(ack=text, refused=True)
            if ticket is None:
                # Under one of the bot's posts that is no ticket's card: never lost in silence.
                key = "reply_not_delivered" if ev.action == "message" else "ticket_not_found"
                if ev.action == "message":
                    await log_event(
                        s,
                        "agent_reply_unrouted",
                        actor=actor,
                        at=now,
                        channel=ev.channel,
                        thread=ev.thread_ref,
                    )
                text = lt(key, self.l2_lang)
                await self._tell_agent(s, ev, text, now)
                return HandleResult(ack=text, refused=True)
            if adopted and ev.thread_ref:
                await self._adopt_thread(s, ev, ticket, now)
            if ev.reply_chain and ev.message_id and ev.action in ("message", "reply", "note"):
                self._link_thread(s, ev, ticket, ev.message_id, now)
            log_context.set({**(log_context.get() or {}), "ticket": self.number(ticket)})
            if not self.db.sqlite:
                await s.refresh(ticket, with_for_update=True)
            return await self._agent_action(s, ev, ticket, now)

    async def _adopt_thread(
        self, s: AsyncSession, ev: AgentEvent, ticket: Ticket, now: datetime
    ) -> None:
        """Remember an unknown thread of ``ticket`` so later replies in it are found directly."""
        assert ev.thread_ref is not None
        self._link_thread(s, ev, ticket, ev.thread_ref, now)
        await log_event(
            s, "thread_adopted", actor=ev.agent.key, at=now, ticket_id=ticket.id,
            thread=ev.thread_ref,
        )

    @staticmethod
    def _link_thread(
        s: AsyncSession, ev: AgentEvent, ticket: Ticket, message_key: str, now: datetime
    ) -> None:
        """Replies to ``message_key`` in the event's chat belong to ``ticket`` from now on."""
        s.add(
            MessageLink(
                ticket_id=ticket.id,
                role="thread",
                channel=ev.channel,
                chat_key=destination_split(ev.destination)[1],
                message_key=message_key,
                created_at=now,
            )
        )

    async def _tell_agent(self, s: AsyncSession, ev: AgentEvent, text: str, now: datetime) -> None:
        channel, target = destination_split(ev.destination)
        await enqueue(
            s,
            channel=channel,
            target=target,
            kind="agent_notice",
            payload={"text": text, "agent": ev.agent.user_id, "thread_ref": ev.thread_ref},
            now=now,
        )

    def _agent_name(self, ev: AgentEvent) -> str:
        return ev.agent.display_name or ev.agent.username or ev.agent.user_id

    async def _agent_action(
        self, s: AsyncSession, ev: AgentEvent, ticket: Ticket, now: datetime
    ) -> HandleResult:
        action = ev.action
        number = self.number(ticket)
        lang = self.l2_lang
        actor = ev.agent.key
        name = self._agent_name(ev)
        if action in ("message", "reply", "note"):
            text = ev.text
            if action == "message" and text.startswith(self.esc.note_prefix):
                action = "note"
                text = text[len(self.esc.note_prefix) :].strip()
            elif action == "message":
                action = "reply"
            if action == "note":
                return await self._note(s, ev, ticket, text, now)
            return await self._reply(s, ev, ticket, text, now)
        if action == "claim":
            if (closed := await self._refuse_if_closed(s, ev, ticket, now)) is not None:
                return closed
            if ticket.owner_key == actor:
                return HandleResult(ack=lt("already_yours", lang, number=number))
            if ticket.owner_key is not None:
                return await self._refuse(
                    s, ev, lt("already_owned", lang, number=number, owner=ticket.owner_name), now
                )
            await self._assign(s, ticket, actor, name, now, by=actor)
            text = lt("claimed", lang, agent=name, number=number)
            await self.notice(s, ticket, text, now)
            ulang = await self.user_lang(s, ticket)
            shown = self._public_name(name, ulang)
            await self.to_user(
                s, ticket, OutMessage(t("ticket_claimed", ulang, agent=shown, number=number)), now
            )
            await self.update_card(s, ticket, now)
            return HandleResult(ack=text)
        if action == "release":
            if ticket.owner_key != actor:
                return await self._refuse(
                    s, ev, lt("not_owner", lang, number=number, owner=ticket.owner_name or "-"), now
                )
            ticket.owner_key = None
            ticket.owner_name = None
            if ticket.status == "in_progress":
                ticket.status = "open"
            ticket.updated_at = now
            await log_event(s, "ticket_released", actor=actor, at=now, ticket_id=ticket.id)
            await self.notice(s, ticket, lt("released", lang, agent=name, number=number), now)
            await self.sla.refresh(s, ticket, now)
            await self.update_card(s, ticket, now)
            return HandleResult()
        if action == "reassign":
            target_key, _, target_name = ev.value.partition("|")
            if not target_key:
                return await self._refuse(s, ev, lt("ticket_not_found", lang), now)
            await self._assign(s, ticket, target_key, target_name or target_key, now, by=actor)
            await self.notice(
                s,
                ticket,
                lt("reassigned", lang, number=number, agent=target_name or target_key),
                now,
            )
            await self.update_card(s, ticket, now)
            return HandleResult()
        if action == "wait":
            return await self._wait(s, ev, ticket, now)
        if action == "resolve":
            return await self._resolve(s, ev, ticket, now)
        if action == "reopen":
            if ticket.status != "resolved":
                return HandleResult(ack=lt(f"status_{ticket.status}", lang))
            await self.reopen(s, ticket, now, actor=actor)
            await self.sla.refresh(s, ticket, now)
            await self.update_card(s, ticket, now)
            return HandleResult()
        if action == "l3":
            return await self._to_l3(s, ev, ticket, now)
        if action == "l3_back":
            if ticket.level != "l3":
                return HandleResult()
            ticket.level = "l2"
            ticket.l3_since = None
            ticket.updated_at = now
            await log_event(s, "ticket_l3_back", actor=actor, at=now, ticket_id=ticket.id)
            await self.notice(s, ticket, lt("from_l3", lang, number=number), now)
            await self.sla.refresh(s, ticket, now)
            await self.update_card(s, ticket, now)
            return HandleResult()
        if action == "priority":
            value = ev.value.strip().lower()
            if value not in PRIORITIES:
                return await self._refuse(s, ev, lt("bad_priority", lang, value=value), now)
            old = ticket.priority
            if old != value:
                ticket.priority = value
                ticket.updated_at = now
                await log_event(
                    s,
                    "priority_changed",
                    actor=actor,
                    at=now,
                    ticket_id=ticket.id,
                    old=old,
                    new=value,
                )
                await self.notice(
                    s, ticket, lt("priority_changed", lang, number=number, old=old, new=value), now
                )
                await self.sla.refresh(s, ticket, now)
                await self.update_card(s, ticket, now)
            return HandleResult(ack=lt("priority_changed", lang, number=number, old=old, new=value))
        if action == "tier":
            value = ev.value.strip().lower()
            if value not in self.content.sla.tiers:
                known = ", ".join(sorted(self.content.sla.tiers))
                return await self._refuse(
                    s, ev, lt("bad_tier", lang, value=value, known=known), now
                )
            old = ticket.tier
            if old != value:
                ticket.tier = value
                ticket.updated_at = now
                await log_event(
                    s, "tier_changed", actor=actor, at=now, ticket_id=ticket.id, old=old, new=value
                )
                text = lt("tier_changed", lang, number=number, old=old, new=value)
                await self.notice(s, ticket, text, now)
                await self.sla.refresh(s, ticket, now)
                await self.update_card(s, ticket, now)
            return HandleResult()
        if action in ("ban", "unban"):
            return await self._ban(s, ev, ticket, now, banned=action == "ban")
        if action == "save_kb":
            return await self._save_kb(s, ev, ticket, now)
        if action == "edit":
            return await self._agent_edit(s, ev, ticket, now)
        return HandleResult()

    async def _ban(
        self, s: AsyncSession, ev: AgentEvent, ticket: Ticket, now: datetime, *, banned: bool
    ) -> HandleResult:
        """Ban or unban the ticket's user. A banned user's messages are kept, answered
        politely by the bot, and never reach L2; the ticket itself stays as it is."""
        user = await s.get(User, ticket.user_id)
        if user is None:
            return await self._refuse(s, ev, lt("ticket_not_found", self.l2_lang), now)
        number = self.number(ticket)
        if user.banned == banned:
            key = "already_banned" if banned else "not_banned"
            return HandleResult(ack=lt(key, self.l2_lang, number=number))
        user.banned = banned
        user.updated_at = now
        await log_event(
            s,
            "user_banned" if banned else "user_unbanned",
            actor=ev.agent.key,
            at=now,
            ticket_id=ticket.id,
            user=f"{user.channel}:{user.external_id}",
        )
        key = "banned_by" if banned else "unbanned_by"
        text = lt(key, self.l2_lang, agent=self._agent_name(ev), number=number)
        await self.notice(s, ticket, text, now)
        await self.update_card(s, ticket, now)
        return HandleResult(ack=text)

    async def _refuse(
        self, s: AsyncSession, ev: AgentEvent, text: str, now: datetime
    ) -> HandleResult:
        await log_event(
            s, "agent_refused", actor=ev.agent.key, at=now, action=ev.action, reason=text
        )
        await self._tell_agent(s, ev, text, now)
        return HandleResult(ack=text, refused=True)

    async def _refuse_if_closed(
        self,
        s: AsyncSession,
        ev: AgentEvent,
        ticket: Ticket,
        now: datetime,
        *,
        final_only: bool = False,
    ) -> HandleResult | None:
        """Refuse an action on a ticket that is not open (or, with ``final_only``, closed
        for good); ``None`` when the action may go on."""
        stopped = (
            ticket.status in FINAL_STATUSES if final_only else (ticket.status not in OPEN_STATUSES)
        )
        if not stopped:
            return None
        lang = self.l2_lang
        text = lt(
            "ticket_closed",
            lang,
            number=self.number(ticket),
            status=lt(f"status_{ticket.status}", lang),
        )
        return await self._refuse(s, ev, text, now)

    async def _take_over(
        self, s: AsyncSession, ev: AgentEvent, ticket: Ticket, now: datetime
    ) -> HandleResult | None:
        """The start of "ask the customer" and "resolve": refuse on a closed ticket, claim an
        unowned one for the consultant, and relay the text that came with the action."""
        if (closed := await self._refuse_if_closed(s, ev, ticket, now)) is not None:
            return closed
        if ticket.owner_key is None:
            await self._assign(s, ticket, ev.agent.key, self._agent_name(ev), now, by=ev.agent.key)
        if ev.text.strip():
            await self._relay_to_user(s, ev, ticket, ev.text, now)
        return None

    async def _assign(
        self, s: AsyncSession, ticket: Ticket, key: str, name: str, now: datetime, *, by: str
    ) -> None:
        ticket.owner_key = key
        ticket.owner_name = name[:200]
        ticket.claimed_at = now
        if ticket.status in ("new", "open"):
            ticket.status = "in_progress"
        ticket.updated_at = now
        await log_event(
            s, "ticket_claimed", actor=by, at=now, ticket_id=ticket.id, owner=key, owner_name=name
        )
        await self.sla.refresh(s, ticket, now)

    def _public_name(self, name: str, lang: str) -> str:
        return t("agent_anonymous", lang) if self.esc.anonymous_consultants else name

    async def _note(
        self, s: AsyncSession, ev: AgentEvent, ticket: Ticket, text: str, now: datetime
    ) -> HandleResult:
        s.add(
            TicketMessage(
                ticket_id=ticket.id,
                direction="note",
                author_key=ev.agent.key,
                author_name=self._agent_name(ev),
                text=text,
                attachments=[a.to_json() for a in ev.attachments],
                source_channel=ev.channel,
                source_message_id=ev.message_id,
                created_at=now,
            )
        )
        await log_event(s, "internal_note", actor=ev.agent.key, at=now, ticket_id=ticket.id)
        ack = lt("note_saved", self.l2_lang)
        return HandleResult(ack=ack)

    async def _reply(
        self, s: AsyncSession, ev: AgentEvent, ticket: Ticket, text: str, now: datetime
    ) -> HandleResult:
        lang = self.l2_lang
        number = self.number(ticket)
        if (
            closed := await self._refuse_if_closed(s, ev, ticket, now, final_only=True)
        ) is not None:
            return closed
        if not text.strip() and not ev.attachments:
            return HandleResult()
        if ticket.owner_key is None:
            await self._assign(s, ticket, ev.agent.key, self._agent_name(ev), now, by=ev.agent.key)
        elif ticket.owner_key != ev.agent.key:
            return await self._refuse(
                s, ev, lt("not_owner", lang, number=number, owner=ticket.owner_name or "-"), now
            )
        await self._relay_to_user(s, ev, ticket, text, now)
        await self.sla.refresh(s, ticket, now)
        await self.update_card(s, ticket, now)
        return HandleResult()

    async def _relay_to_user(
        self, s: AsyncSession, ev: AgentEvent, ticket: Ticket, text: str, now: datetime
    ) -> None:
        tm = TicketMessage(
            ticket_id=ticket.id,
            direction="out",
            author_key=ev.agent.key,
            author_name=self._agent_name(ev),
            text=text,
            attachments=[a.to_json() for a in ev.attachments],
            source_channel=ev.channel,
            source_message_id=ev.message_id,
            created_at=now,
        )
        s.add(tm)
        await s.flush()
        ulang = await self.user_lang(s, ticket)
        shown = self._public_name(self._agent_name(ev), ulang)
        body = t("agent_says", ulang, agent=shown, text=text) if text else shown
        await self.to_user(
            s,
            ticket,
            OutMessage(text=body, attachments=list(ev.attachments)),
            now,
        )
        if ticket.first_response_at is None:
            ticket.first_response_at = now
            await log_event(s, "first_response", actor=ev.agent.key, at=now, ticket_id=ticket.id)
        ticket.last_agent_at = now
        ticket.awaiting_reply_since = None
        ticket.updated_at = now
        await log_event(
            s,
            "agent_reply",
            actor=ev.agent.key,
            at=now,
            ticket_id=ticket.id,
            message=tm.id,
            chars=len(text),
        )

    async def _wait(
        self, s: AsyncSession, ev: AgentEvent, ticket: Ticket, now: datetime
    ) -> HandleResult:
        lang = self.l2_lang
        number = self.number(ticket)
        if (stop := await self._take_over(s, ev, ticket, now)) is not None:
            return stop
        if ticket.status != "waiting":
            ticket.status = "waiting"
            ticket.waiting_since = now
            s.add(TicketPause(ticket_id=ticket.id, started_at=now))
            await log_event(
                s, "waiting_for_customer", actor=ev.agent.key, at=now, ticket_id=ticket.id
            )
            ulang = await self.user_lang(s, ticket)
            await self.to_user(
                s, ticket, OutMessage(t("ticket_waiting", ulang, number=number)), now
            )
        await self.notice(s, ticket, lt("asked_customer", lang, number=number), now)
        await s.flush()
        await self.sla.refresh(s, ticket, now)
        await self.update_card(s, ticket, now)
        return HandleResult()

    async def _end_pause(
        self, s: AsyncSession, ticket: Ticket, now: datetime, *, actor: str = "bot"
    ) -> None:
        rows = await s.execute(
            select(TicketPause).where(
                TicketPause.ticket_id == ticket.id, TicketPause.ended_at.is_(None)
            )
        )
        for pause in rows.scalars():
            pause.ended_at = now
            await log_event(
                s,
                "waiting_ended",
                actor=actor,
                at=now,
                ticket_id=ticket.id,
                since=pause.started_at.isoformat(),
            )
        ticket.waiting_since = None

    async def _resolve(
        self, s: AsyncSession, ev: AgentEvent, ticket: Ticket, now: datetime
    ) -> HandleResult:
        lang = self.l2_lang
        number = self.number(ticket)
        if (stop := await self._take_over(s, ev, ticket, now)) is not None:
            return stop
        await self._end_pause(s, ticket, now, actor=ev.agent.key)
        await log_event(
            s,
            "ticket_resolved",
            actor=ev.agent.key,
            at=now,
            ticket_id=ticket.id,
            level=ticket.level,  # the level that solved it, before the reset below
        )
        ticket.status = "resolved"
        ticket.resolved_at = now
        ticket.level = "l2"
        ticket.awaiting_reply_since = None  # a reopening starts a fresh next-response clock
        ticket.updated_at = now
        await self.notice(
            s, ticket, lt("resolved", lang, agent=self._agent_name(ev), number=number), now
        )
        ulang = await self.user_lang(s, ticket)
        conv = await s.get(Conversation, ticket.conversation_id)
        chat = await s.get(Chat, ticket.chat_id)
        await self.to_user(s, ticket, OutMessage(t("ticket_resolved", ulang, number=number)), now)
        if self.settings.dialog.csat and conv is not None and chat is not None:
            # CSAT buttons belong to the conversation's prompt only while it is current.
            if chat.conversation_id == conv.id:
                chat.prompt_nonce = (chat.prompt_nonce or 0) + 1
                nonce = chat.prompt_nonce
                conv.state = "csat"
                await log_event(s, "csat_asked", actor="bot", at=now, ticket_id=ticket.id)
                await self.to_user(
                    s, ticket, OutMessage(t("csat_ask", ulang), csat_rows(nonce)), now
                )
            else:
                conv.state = "done"
        elif conv is not None:
            conv.state = "done"
        await self.sla.refresh(s, ticket, now)
        await self.update_card(s, ticket, now)
        return HandleResult()

    async def _to_l3(
        self, s: AsyncSession, ev: AgentEvent, ticket: Ticket, now: datetime
    ) -> HandleResult:
        lang = self.l2_lang
        number = self.number(ticket)
        if (closed := await self._refuse_if_closed(s, ev, ticket, now)) is not None:
            return closed
        if ticket.level == "l3":
            return HandleResult()
        ticket.level = "l3"
        ticket.l3_since = now
        ticket.l3_destination = self.l3_destination()
        ticket.updated_at = now
        await log_event(
            s,
            "ticket_l3",
            actor=ev.agent.key,
            at=now,
            ticket_id=ticket.id,
            destination=ticket.l3_destination,
            reason=ev.text,
        )
        text = lt("to_l3", lang, number=number, agent=self._agent_name(ev))
        await self.notice(s, ticket, text, now)  # now goes to the L3 destination: the card first
        await self.post(
            s, ticket, "ticket_card", {"new": True}, now, destination=ticket.l3_destination
        )
        await self.post(
            s,
            ticket,
            "ticket_post",
            {"role": "system", "text": text},
            now,
            destination=ticket.destination,
        )
        ulang = await self.user_lang(s, ticket)
        await self.to_user(s, ticket, OutMessage(t("ticket_l3", ulang, number=number)), now)
        await self.sla.refresh(s, ticket, now)
        await self.update_card(s, ticket, now)
        return HandleResult()

    async def _save_kb(
        self, s: AsyncSession, ev: AgentEvent, ticket: Ticket, now: datetime
    ) -> HandleResult:
        answer = ev.text.strip()
        if not answer:
            last = (
                await s.execute(
                    select(TicketMessage)
                    .where(TicketMessage.ticket_id == ticket.id, TicketMessage.direction == "out")
                    .order_by(TicketMessage.id.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            answer = last.text if last is not None else ""
        if not answer:
            return await self._refuse(s, ev, lt("kb_draft_empty", self.l2_lang), now)
        conv = await s.get(Conversation, ticket.conversation_id)
        question = (conv.problem if conv is not None else ticket.subject).strip()
        draft = KbDraft(
            ticket_id=ticket.id,
            question=question[:2000],
            answer=answer,
            category=ticket.category,
            lang=ticket.lang,
            author_key=ev.agent.key,
            status="draft",
            created_at=now,
        )
        s.add(draft)
        await s.flush()
        await log_event(
            s, "kb_draft_saved", actor=ev.agent.key, at=now, ticket_id=ticket.id, draft=draft.id
        )
        text = lt("kb_draft_saved", self.l2_lang, draft=draft.id)
        await self.notice(s, ticket, text, now)
        return HandleResult(ack=text)

    async def _agent_edit(
        self, s: AsyncSession, ev: AgentEvent, ticket: Ticket, now: datetime
    ) -> HandleResult:
        tm = (
            await s.execute(
                select(TicketMessage).where(
                    TicketMessage.ticket_id == ticket.id,
                    TicketMessage.source_channel == ev.channel,
                    TicketMessage.source_message_id == ev.message_id,
                    TicketMessage.author_key == ev.agent.key,
                )
            )
        ).scalar_one_or_none()
        if tm is None or tm.direction != "out":
            return HandleResult()
        tm.text = ev.text
        tm.edited_at = now
        ulang = await self.user_lang(s, ticket)
        shown = self._public_name(self._agent_name(ev), ulang)
        await log_event(
            s, "agent_edit", actor=ev.agent.key, at=now, ticket_id=ticket.id, message=tm.id
        )
        await self.to_user(
            s,
            ticket,
            OutMessage(text="✏️ " + t("agent_says", ulang, agent=shown, text=ev.text)),
            now,
        )
        return HandleResult()

    # ------------------------------------------------------------------ delivery feedback

    async def mark_unreachable(
        self, s: AsyncSession, channel: str, chat_key: str, reason: str, now: datetime
    ) -> None:
        """A user blocked the bot: flag them, and tell L2 on each of their open tickets."""
        chat = (
            await s.execute(select(Chat).where(Chat.channel == channel, Chat.chat_key == chat_key))
        ).scalar_one_or_none()
        if chat is None:
            return
        user = await s.get(User, chat.user_id)
        if user is None or user.unreachable:
            return
        user.unreachable = True
        user.unreachable_reason = reason[:200]
        await log_event(s, "user_unreachable", actor="bot", at=now, reason=reason[:200])
        rows = await s.execute(
            select(Ticket).where(Ticket.user_id == user.id, Ticket.status.in_(OPEN_STATUSES))
        )
        for ticket in rows.scalars():
            await self.notice(
                s, ticket, lt("user_unreachable", self.l2_lang, reason=reason[:200]), now
            )
            await self.update_card(s, ticket, now)

    async def delivery_failed(
        self, s: AsyncSession, ticket_id: int, reason: str, now: datetime
    ) -> None:
        """A message for the ticket's user was given up on (refused for good, or still failing
        after every retry): say so in the ticket's thread, so L2 does not assume it arrived."""
        ticket = await s.get(Ticket, ticket_id)
        if ticket is not None:
            text = lt("delivery_failed", self.l2_lang, reason=reason[:200])
            await self.notice(s, ticket, text, now)

    async def mark_reachable(self, s: AsyncSession, user: User) -> None:
        """The user wrote again: they can be reached."""
        if user.unreachable:
            user.unreachable = False
            user.unreachable_reason = None


def _zone(name: str | None) -> ZoneInfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _format_local(at: datetime, tz: ZoneInfo | Any, lang: str) -> str:
    local = at.astimezone(tz)
    zone = local.tzname() or str(tz)
    if lang == "ru":
        return f"{local:%d.%m.%Y %H:%M} ({zone})"
    return f"{local:%Y-%m-%d %H:%M} ({zone})"
