"""The ticket card: the handoff packet L2 sees, built from the database at send time.

Adapters render a :class:`TicketCard` into Telegram HTML, Slack blocks or console text; the
content and the choice of buttons are decided here, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.i18n import t
from bot.storage.models import (
    ChecklistAnswer,
    Conversation,
    KbImpression,
    Ticket,
    TicketMessage,
    User,
)
from escalation.texts import lt

if TYPE_CHECKING:
    from escalation.desk import Desk

# Actions a card offers, in display order, with the statuses they apply to.
CARD_ACTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("claim", ("new", "open")),
    ("wait", ("in_progress",)),
    ("release", ("in_progress", "waiting")),
    ("resolve", ("open", "in_progress", "waiting")),
    ("l3", ("open", "in_progress", "waiting")),
    ("priority", ("new", "open", "in_progress", "waiting")),
    ("save_kb", ("in_progress", "waiting", "resolved")),
    ("l3_back", ("open", "in_progress", "waiting")),
    ("reopen", ("resolved",)),
)

ACTION_LABELS: dict[str, dict[str, str]] = {
    "claim": {"en": "✋ Take", "ru": "✋ Взять"},
    "wait": {"en": "⏸ Ask customer", "ru": "⏸ Запросить у клиента"},
    "resolve": {"en": "✅ Resolve", "ru": "✅ Решено"},
    "l3": {"en": "⬆️ Escalate to L3", "ru": "⬆️ На L3"},
    "priority": {"en": "🎚 Priority", "ru": "🎚 Приоритет"},
    "save_kb": {"en": "📚 Save to KB", "ru": "📚 В базу знаний"},
    "reopen": {"en": "🔁 Reopen", "ru": "🔁 Открыть снова"},
    "release": {"en": "↩️ Release", "ru": "↩️ Вернуть в очередь"},
    "l3_back": {"en": "⬇️ Back to L2", "ru": "⬇️ Вернуть на L2"},
}


@dataclass(frozen=True)
class Deadline:
    """One SLA clock as shown on the card."""

    name: str  # first_response, next_response, resolution, l3
    label: str
    due: datetime | None
    state: str  # human text: "due in 1h 05m", "OVERDUE by 3m", "paused", "met"
    overdue: bool = False


@dataclass
class TicketCard:
    """Everything L1 learned, plus the ticket's live state."""

    ticket_id: int
    number: str
    lang: str  # the desk's language
    status: str
    status_label: str
    level: str
    priority: str
    tier: str
    tier_title: str
    organisation: str | None
    category: str | None
    category_title: str
    user_name: str
    user_handle: str | None
    user_channel: str
    user_id: str
    user_lang: str
    user_unreachable: str | None
    user_banned: bool
    subject: str
    problem: str
    details: list[str] = field(default_factory=list)
    kb: list[tuple[str, str]] = field(default_factory=list)  # (article title, verdict)
    checklist: list[tuple[str, str]] = field(default_factory=list)  # (step, answer)
    attachments: list[dict[str, object]] = field(default_factory=list)
    deadlines: list[Deadline] = field(default_factory=list)
    owner_key: str | None = None
    owner_name: str | None = None
    csat: int | None = None
    created_at: datetime | None = None
    actions: list[tuple[str, str]] = field(default_factory=list)  # (action, label)

    def label(self, key: str) -> str:
        """A card label in the desk's language."""
        return lt(key, self.lang)


def human_delta(delta: timedelta) -> str:
    """``1d 2h``, ``3h 05m``, ``12m``."""
    total = int(abs(delta.total_seconds()) // 60)
    days, rest = divmod(total, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m"


async def build_card(s: AsyncSession, desk: Desk, ticket: Ticket, now: datetime) -> TicketCard:
    """Assemble the card of ``ticket`` as of ``now``."""
    lang = desk.l2_lang
    user = await s.get(User, ticket.user_id)
    conv = await s.get(Conversation, ticket.conversation_id)
    cat = desk.content.categories.get(ticket.category or "")
    tier = desk.content.sla.tiers.get(ticket.tier)
    card = TicketCard(
        ticket_id=ticket.id,
        number=desk.number(ticket),
        lang=lang,
        status=ticket.status,
        status_label=lt(f"status_{ticket.status}", lang),
        level=ticket.level,
        priority=ticket.priority,
        tier=ticket.tier,
        tier_title=tier.title.get(lang) if tier else ticket.tier,
        organisation=ticket.organisation,
        category=ticket.category,
        category_title=cat.title.get(lang) if cat else (ticket.category or "-"),
        user_name=(user.display_name if user else "") or "-",
        user_handle=user.username if user else None,
        user_channel=user.channel if user else "",
        user_id=user.external_id if user else "",
        user_lang=(user.language or ticket.lang) if user else ticket.lang,
        user_unreachable=user.unreachable_reason if user and user.unreachable else None,
        user_banned=bool(user and user.banned),
        subject=ticket.subject,
        problem=conv.problem if conv else ticket.subject,
        owner_key=ticket.owner_key,
        owner_name=ticket.owner_name,
        csat=ticket.csat,
        created_at=ticket.created_at,
    )
    if conv is not None:
        imps = await s.execute(
            select(KbImpression)
            .where(KbImpression.conversation_id == conv.id)
            .order_by(KbImpression.id)
        )
        for imp in imps.scalars():
            article = desk_article_title(desk, imp.article_id)
            verdict = lt(f"verdict_{imp.verdict}" if imp.verdict else "verdict_none", lang)
            card.kb.append((article, verdict))
        answers = await s.execute(
            select(ChecklistAnswer)
            .where(ChecklistAnswer.conversation_id == conv.id)
            .order_by(ChecklistAnswer.id)
        )
        for a in answers.scalars():
            step_cat = desk.content.categories.get(a.category)
            step = step_cat.step(a.step_id) if step_cat else None
            step_text = step.text.get(lang) if step else a.step_id
            option_label = a.option_id
            if step is not None:
                opt = next((o for o in step.options if o.id == a.option_id), None)
                if opt is not None:
                    option_label = opt.label.get(lang)
            if option_label == a.option_id and a.option_id in ("fixed", "not_helped", "cant"):
                option_label = t(f"opt_{a.option_id}", lang)
            card.checklist.append((step_text.split("\n")[0][:160], option_label))
    msgs = await s.execute(
        select(TicketMessage)
        .where(TicketMessage.ticket_id == ticket.id, TicketMessage.direction == "in")
        .order_by(TicketMessage.id)
        .limit(5)
    )
    for m in msgs.scalars():
        if m.text:
            card.details.append(m.text)
        card.attachments.extend(m.attachments or [])
    card.deadlines = _deadlines(ticket, now, lang)
    card.actions = [
        (action, ACTION_LABELS[action].get(lang, ACTION_LABELS[action]["en"]))
        for action, statuses in CARD_ACTIONS
        if ticket.status in statuses
        and not (action == "l3" and ticket.level == "l3")
        and not (action == "l3_back" and ticket.level != "l3")
    ]
    return card


def desk_article_title(desk: Desk, article_id: str) -> str:
    """The article's title if the KB still has it, else its id."""
    article = desk.kb.get(article_id) if desk.kb is not None else None
    return str(article.title) if article is not None else article_id


def _deadlines(ticket: Ticket, now: datetime, lang: str) -> list[Deadline]:
    out: list[Deadline] = []
    if ticket.status in ("resolved", "closed", "cancelled"):
        return out
    paused = ticket.status == "waiting"
    clocks = [
        ("first_response", ticket.first_response_due, ticket.first_response_at is not None),
        ("next_response", ticket.next_response_due, False),
        ("resolution", ticket.resolution_due, False),
    ]
    if ticket.level == "l3":
        clocks.append(("l3", ticket.l3_due, False))
    for name, due, met in clocks:
        label = lt(f"sla_{name}", lang)
        if met:
            if name == "first_response":
                continue
            out.append(Deadline(name, label, None, lt("sla_met", lang)))
        elif paused and due is None:
            out.append(Deadline(name, label, None, lt("sla_paused", lang)))
        elif due is not None:
            left = due - now
            if left.total_seconds() < 0:
                out.append(
                    Deadline(
                        name,
                        label,
                        due,
                        lt("sla_overdue", lang, left=human_delta(left)),
                        overdue=True,
                    )
                )
            else:
                out.append(
                    Deadline(name, label, due, lt("sla_due_in", lang, left=human_delta(left)))
                )
    return out


def render_plain(card: TicketCard) -> str:
    """The card as plain text (console, logs, and the fallback of richer renderers)."""
    L = card.label
    lines = [
        f"[{card.number}] {card.subject}",
        f"{L('label_status')}: {card.status_label} ({card.level.upper()})   "
        f"{L('label_priority')}: {card.priority}   "
        f"{L('label_owner')}: {card.owner_name or L('label_nobody')}",
        f"{L('label_user')}: {card.user_name}"
        + (f" (@{card.user_handle})" if card.user_handle else "")
        + f" [{card.user_channel}:{card.user_id}, {card.user_lang}]",
        f"{L('label_org')}: {card.organisation or '-'}   {L('label_tier')}: {card.tier_title}",
        f"{L('label_category')}: {card.category_title}",
    ]
    if card.user_unreachable:
        lines.append(lt("user_unreachable", card.lang, reason=card.user_unreachable))
    if card.user_banned:
        lines.append(lt("user_banned", card.lang))
    lines.append(f"{L('label_problem')}: {card.problem}")
    if card.details:
        lines.append(f"{L('label_details')}: " + " / ".join(card.details))
    if card.kb:
        lines.append(f"{L('label_kb')}: " + "; ".join(f"{a} — {v}" for a, v in card.kb))
    if card.checklist:
        lines.append(f"{L('label_checklist')}:")
        lines.extend(f"  • {step} — {answer}" for step, answer in card.checklist)
    if card.attachments:
        names = [str(a.get("name") or a.get("kind") or "file") for a in card.attachments]
        lines.append(f"{L('label_attachments')}: " + ", ".join(names))
    if card.deadlines:
        lines.append(
            f"{L('label_sla')}: " + "; ".join(f"{d.label} {d.state}" for d in card.deadlines)
        )
    if card.csat is not None:
        lines.append(f"{L('label_csat')}: {card.csat}/5")
    return "\n".join(lines)
