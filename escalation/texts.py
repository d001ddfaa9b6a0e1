"""Words the L2 desk sees: card labels, notices and refusals, in the desk's language."""

from __future__ import annotations

from typing import Any

from bot.i18n import lookup

L2_MESSAGES: dict[str, dict[str, str]] = {
    "new_ticket": {"en": "🆕 New ticket {number}", "ru": "🆕 Новая заявка {number}"},
    "status_new": {"en": "new", "ru": "новая"},
    "status_open": {"en": "open, unclaimed", "ru": "открыта, не взята"},
    "status_in_progress": {"en": "in progress", "ru": "в работе"},
    "status_waiting": {"en": "waiting for customer", "ru": "ждём клиента"},
    "status_resolved": {"en": "resolved", "ru": "решена"},
    "status_closed": {"en": "closed", "ru": "закрыта"},
    "status_cancelled": {"en": "cancelled by the user", "ru": "отменена пользователем"},
    "label_status": {"en": "Status", "ru": "Статус"},
    "label_owner": {"en": "Owner", "ru": "Исполнитель"},
    "label_nobody": {"en": "nobody", "ru": "никто"},
    "label_priority": {"en": "Priority", "ru": "Приоритет"},
    "label_user": {"en": "User", "ru": "Пользователь"},
    "label_org": {"en": "Organisation", "ru": "Организация"},
    "label_tier": {"en": "Tier", "ru": "Тариф"},
    "label_category": {"en": "Category", "ru": "Категория"},
    "label_problem": {"en": "Problem (user's words)", "ru": "Проблема (словами пользователя)"},
    "label_details": {"en": "Details", "ru": "Подробности"},
    "label_kb": {"en": "KB articles shown", "ru": "Показанные статьи БЗ"},
    "label_checklist": {"en": "Checklist", "ru": "Чек-лист"},
    "label_attachments": {"en": "Attachments", "ru": "Вложения"},
    "label_sla": {"en": "SLA", "ru": "SLA"},
    "label_level": {"en": "Level", "ru": "Линия"},
    "label_csat": {"en": "CSAT", "ru": "Оценка"},
    "verdict_helped": {"en": "helped", "ru": "помогла"},
    "verdict_not_helped": {"en": "didn't help", "ru": "не помогла"},
    "verdict_none": {"en": "no answer", "ru": "без ответа"},
    "sla_first_response": {"en": "first response", "ru": "первый ответ"},
    "sla_next_response": {"en": "next response", "ru": "следующий ответ"},
    "sla_resolution": {"en": "resolution", "ru": "решение"},
    "sla_l3": {"en": "L3", "ru": "L3"},
    "sla_paused": {"en": "paused (waiting for customer)", "ru": "на паузе (ждём клиента)"},
    "sla_met": {"en": "met", "ru": "выполнено"},
    "sla_due_in": {"en": "due in {left}", "ru": "осталось {left}"},
    "sla_overdue": {"en": "OVERDUE by {left}", "ru": "ПРОСРОЧЕНО на {left}"},
    "user_unreachable": {
        "en": "⛔ The user cannot be reached (blocked the bot?): {reason}",
        "ru": "⛔ Пользователь недоступен (заблокировал бота?): {reason}",
    },
    "delivery_failed": {
        "en": "⚠️ A message to the user could not be delivered, they have not seen it: {reason}",
        "ru": "⚠️ Сообщение пользователю не доставлено, он его не видел: {reason}",
    },
    "msg_from_user": {"en": "💬 {user}: {text}", "ru": "💬 {user}: {text}"},
    "msg_edited": {"en": "✏️ {user} edited: {text}", "ru": "✏️ {user} исправил(а): {text}"},
    "claimed": {"en": "✋ {agent} took {number}", "ru": "✋ {agent} взял(а) {number}"},
    "released": {
        "en": "↩️ {agent} released {number}",
        "ru": "↩️ {agent} вернул(а) {number} в очередь",
    },
    "reassigned": {
        "en": "🔀 {number} reassigned to {agent}",
        "ru": "🔀 {number} передана: {agent}",
    },
    "already_owned": {
        "en": "{number} is already owned by {owner}.",
        "ru": "{number} уже в работе у {owner}.",
    },
    "already_yours": {"en": "{number} is already yours.", "ru": "{number} уже ваша."},
    "not_owner": {
        "en": "{number} is owned by {owner}; take it over with reassign first.",
        "ru": "{number} в работе у {owner}; сначала переназначьте заявку.",
    },
    "note_saved": {
        "en": "📝 Internal note saved (not sent to the user).",
        "ru": "📝 Внутренняя заметка сохранена (пользователю не отправлена).",
    },
    "asked_customer": {
        "en": "⏸ {number}: waiting for the customer; SLA paused.",
        "ru": "⏸ {number}: ждём клиента, SLA на паузе.",
    },
    "resolved": {"en": "✅ {agent} resolved {number}", "ru": "✅ {agent} решил(а) {number}"},
    "reopened": {"en": "🔁 {number} reopened", "ru": "🔁 {number} открыта снова"},
    "cancelled_by_user": {
        "en": "🚫 The user cancelled {number}.",
        "ru": "🚫 Пользователь отменил {number}.",
    },
    "to_l3": {
        "en": "⬆️ {number} escalated to L3 by {agent}",
        "ru": "⬆️ {agent} передал(а) {number} на L3",
    },
    "from_l3": {"en": "⬇️ {number} is back at L2", "ru": "⬇️ {number} вернулась на L2"},
    "priority_changed": {
        "en": "🎚 {number}: priority {old} → {new}",
        "ru": "🎚 {number}: приоритет {old} → {new}",
    },
    "tier_changed": {
        "en": "🏷 {number}: license tier {old} → {new}; deadlines recomputed",
        "ru": "🏷 {number}: тариф {old} → {new}; сроки пересчитаны",
    },
    "bad_tier": {
        "en": "Unknown tier {value!r}; known: {known}.",
        "ru": "Неизвестный тариф {value!r}; есть: {known}.",
    },
    "kb_draft_saved": {
        "en": "📚 Saved to the KB as draft #{draft}; an admin approves it with "
        "`firstline kb drafts approve {draft}`.",
        "ru": "📚 Сохранено в БЗ как черновик #{draft}; админ одобряет его командой "
        "`firstline kb drafts approve {draft}`.",
    },
    "kb_draft_empty": {
        "en": "Nothing to save: reply to the user first, or give the answer text.",
        "ru": "Нечего сохранять: сначала ответьте пользователю или укажите текст ответа.",
    },
    "not_consultant": {
        "en": "Only support consultants can do this. Ask an admin to add you.",
        "ru": "Это могут делать только консультанты поддержки. Попросите админа добавить вас.",
    },
    "ticket_not_found": {
        "en": "No ticket found here. Reply in a ticket's thread or name the ticket (FL-1042).",
        "ru": "Заявка не найдена. Отвечайте в ветке заявки или укажите номер (FL-1042).",
    },
    "reply_not_delivered": {
        "en": "Not delivered: this thread is not linked to a ticket, so nobody received your "
        "message. Reply in the thread of the ticket's card.",
        "ru": "Не доставлено: эта ветка не связана с заявкой, ваше сообщение никто не получил. "
        "Ответьте в ветке карточки заявки.",
    },
    "ticket_closed": {
        "en": "{number} is {status}; reopen it first.",
        "ru": "{number}: {status}; сначала откройте её снова.",
    },
    "bad_priority": {
        "en": "Unknown priority {value!r}; use critical, high, normal or low.",
        "ru": "Неизвестный приоритет {value!r}; используйте critical, high, normal или low.",
    },
    "sla_warning": {
        "en": "⏳ {number}: {target} SLA {percent}% used — due {due}.",
        "ru": "⏳ {number}: израсходовано {percent}% SLA ({target}) — срок {due}.",
    },
    "sla_breach": {
        "en": "🚨 {number}: {target} SLA breached (was due {due}). {lead}",
        "ru": "🚨 {number}: нарушен SLA ({target}), срок был {due}. {lead}",
    },
    "sla_manager": {
        "en": "📣 Escalation to managers: {number} ({tier}, {priority}) breached its {target} "
        "SLA at {due}; owner: {owner}.",
        "ru": "📣 Эскалация руководителям: {number} ({tier}, {priority}) нарушила SLA "
        "({target}) в {due}; исполнитель: {owner}.",
    },
    "owner_silent": {
        "en": "🔔 {number}: {owner} has been silent for {silence}; the ticket is back in the "
        "queue — take it.",
        "ru": "🔔 {number}: {owner} молчит уже {silence}; заявка вернулась в очередь — "
        "возьмите её.",
    },
    "user_banned": {"en": "🔒 The user is banned.", "ru": "🔒 Пользователь заблокирован."},
    "banned_by": {
        "en": "🔒 {agent} banned the user of {number}: their messages no longer reach L2.",
        "ru": "🔒 {agent} заблокировал(а) пользователя заявки {number}: его сообщения "
        "больше не приходят на L2.",
    },
    "unbanned_by": {
        "en": "🔓 {agent} unbanned the user of {number}.",
        "ru": "🔓 {agent} разблокировал(а) пользователя заявки {number}.",
    },
    "already_banned": {
        "en": "The user of {number} is already banned.",
        "ru": "Пользователь заявки {number} уже заблокирован.",
    },
    "not_banned": {
        "en": "The user of {number} is not banned.",
        "ru": "Пользователь заявки {number} не заблокирован.",
    },
    "user_forgot": {
        "en": "🗑 The user of {number} erased their personal data (/forget): the ticket is "
        "cancelled and its texts are erased.",
        "ru": "🗑 Пользователь заявки {number} удалил свои персональные данные (/forget): "
        "заявка отменена, её тексты стёрты.",
    },
}


def lt(key: str, lang: str, **kwargs: Any) -> str:
    """The L2 phrase ``key`` in ``lang``."""
    return lookup(L2_MESSAGES, key, lang, **kwargs)
