"""The bot's own words in English and Russian.

Content (categories, checklists, KB articles) carries its own translations; this catalogue
holds the dialog's fixed phrases. A test checks that every key has both languages and the
same placeholders.
"""

from __future__ import annotations

from typing import Any

MESSAGES: dict[str, dict[str, str]] = {
    "greeting": {
        "en": "Hi{name}! I'm the support bot. Describe your problem in a few words "
        "and I'll try to solve it right away — or pick a category below.",
        "ru": "Здравствуйте{name}! Я бот поддержки. Опишите проблему в паре слов — "
        "постараюсь решить её сразу, — или выберите категорию ниже.",
    },
    "help": {
        "en": "I answer from the knowledge base, walk you through the usual checks, and "
        "hand the problem to an engineer if it remains.\n\n"
        "/new — start a new request\n/status — your open tickets\n"
        "/cancel — cancel the current request\n/lang — switch language\n"
        "/forget — erase my personal data\n/help — this help",
        "ru": "Я отвечаю по базе знаний, провожу по типовым проверкам и, если проблема "
        "осталась, передаю её инженеру.\n\n"
        "/new — новое обращение\n/status — ваши открытые заявки\n"
        "/cancel — отменить текущее обращение\n/lang — сменить язык\n"
        "/forget — удалить мои персональные данные\n/help — эта справка",
    },
    "ask_problem": {
        "en": "Describe the problem in a few words, or pick a category.",
        "ru": "Опишите проблему в паре слов или выберите категорию.",
    },
    "choose_category": {
        "en": "I couldn't find a ready answer. Which area is the problem in?",
        "ru": "Готового ответа не нашлось. К какой области относится проблема?",
    },
    "kb_found": {
        "en": "Here is what should help:",
        "ru": "Вот что должно помочь:",
    },
    "kb_helped_q": {"en": "Did this solve the problem?", "ru": "Это решило проблему?"},
    "btn_yes_solved": {"en": "✅ Yes, solved", "ru": "✅ Да, решено"},
    "btn_no": {"en": "❌ Didn't help", "ru": "❌ Не помогло"},
    "kb_suggest": {
        "en": "These articles look relevant — pick the one that fits:",
        "ru": "Похоже, подойдёт одна из этих статей — выберите:",
    },
    "btn_none_of_these": {"en": "None of these", "ru": "Ничего не подходит"},
    "solved": {
        "en": "Great, glad it's solved! Write any time if something else comes up.",
        "ru": "Отлично, рад, что получилось! Пишите, если возникнет что-то ещё.",
    },
    "checklist_intro": {
        "en": "Let's check the usual causes ({category}).",
        "ru": "Давайте проверим типичные причины ({category}).",
    },
    "checklist_step": {"en": "Step {n} of {total}", "ru": "Шаг {n} из {total}"},
    "opt_fixed": {"en": "✅ Fixed it", "ru": "✅ Помогло"},
    "opt_not_helped": {"en": "➡️ Didn't help", "ru": "➡️ Не помогло"},
    "opt_cant": {"en": "🤷 Can't do this", "ru": "🤷 Не могу это сделать"},
    "use_buttons": {
        "en": "I've noted that for the engineer. Please answer with the buttons above, "
        "or /new to start over.",
        "ru": "Записал это для инженера. Ответьте, пожалуйста, кнопками выше "
        "или начните заново командой /new.",
    },
    "details_ask": {
        "en": "Let's hand this to an engineer. Please describe what happens: the exact error "
        "text, when it started, what you've already tried. You can attach screenshots or "
        "files. Press «Done» when you've finished.",
        "ru": "Передадим проблему инженеру. Опишите, что происходит: точный текст ошибки, "
        "когда началось, что уже пробовали. Можно приложить скриншоты или файлы. "
        "Когда закончите, нажмите «Готово».",
    },
    "details_more": {
        "en": "Got it. Add more, or press «Done».",
        "ru": "Принято. Добавьте ещё что-нибудь или нажмите «Готово».",
    },
    "btn_done": {"en": "✅ Done", "ru": "✅ Готово"},
    "urgency_ask": {"en": "How urgent is it?", "ru": "Насколько это срочно?"},
    "urg_critical": {
        "en": "🔥 Down for everyone / data at risk",
        "ru": "🔥 Не работает у всех / риск потери данных",
    },
    "urg_high": {"en": "⚠️ Blocks my work", "ru": "⚠️ Мешает работать"},
    "urg_normal": {"en": "Normal", "ru": "Обычная"},
    "urg_low": {"en": "A question, not urgent", "ru": "Вопрос, не срочно"},
    "escalated": {
        "en": "Ticket {number} is created and handed to an engineer; the reply will come "
        "here. Expected first response: {eta}.",
        "ru": "Заявка {number} создана и передана инженеру, ответ придёт сюда. "
        "Ожидаемое время первого ответа: {eta}.",
    },
    "escalated_closed": {
        "en": "Ticket {number} is created. Our engineers are off now; the first response "
        "is expected by {eta}.",
        "ru": "Заявка {number} создана. Сейчас нерабочее время; первый ответ ожидается до {eta}.",
    },
    "eta_unknown": {"en": "as soon as possible", "ru": "в ближайшее время"},
    "attachment_saved": {
        "en": "📎 Attached — the engineer will see it.",
        "ru": "📎 Прикрепил — инженер это увидит.",
    },
    "agent_says": {"en": "{agent}: {text}", "ru": "{agent}: {text}"},
    "agent_anonymous": {"en": "Support engineer", "ru": "Инженер поддержки"},
    "ticket_claimed": {
        "en": "{agent} is now working on your ticket {number}.",
        "ru": "{agent} взял(а) вашу заявку {number} в работу.",
    },
    "ticket_waiting": {
        "en": "The engineer is waiting for your answer on ticket {number}.",
        "ru": "Инженер ждёт вашего ответа по заявке {number}.",
    },
    "ticket_resolved": {
        "en": "Ticket {number} is resolved. If the problem comes back, just write here "
        "and the ticket will be reopened.",
        "ru": "Заявка {number} решена. Если проблема вернётся, просто напишите сюда — "
        "заявка откроется снова.",
    },
    "ticket_reopened": {
        "en": "Ticket {number} is reopened; the engineer will see your message.",
        "ru": "Заявка {number} снова открыта, инженер увидит ваше сообщение.",
    },
    "ticket_l3": {
        "en": "Ticket {number} needs a deeper look and was passed to our senior engineers.",
        "ru": "Заявка {number} требует более глубокого разбора и передана старшим инженерам.",
    },
    "csat_ask": {
        "en": "How would you rate the support? 1 — poor, 5 — excellent.",
        "ru": "Оцените, пожалуйста, поддержку: 1 — плохо, 5 — отлично.",
    },
    "csat_thanks": {"en": "Thank you for the rating!", "ru": "Спасибо за оценку!"},
    "status_none": {
        "en": "You have no open tickets.",
        "ru": "У вас нет открытых заявок.",
    },
    "status_head": {"en": "Your tickets:", "ru": "Ваши заявки:"},
    "status_line": {
        "en": "{number} — {status}: {subject}",
        "ru": "{number} — {status}: {subject}",
    },
    "btn_write_to": {"en": "✍️ Write to {number}", "ru": "✍️ Написать в {number}"},
    "switched_to_ticket": {
        "en": "Your messages now go to ticket {number}.",
        "ru": "Ваши сообщения теперь идут в заявку {number}.",
    },
    "cancelled": {
        "en": "Cancelled. Write any time to start again.",
        "ru": "Отменено. Пишите, когда понадобится.",
    },
    "nothing_to_cancel": {
        "en": "There is nothing to cancel. Describe a problem to start.",
        "ru": "Отменять нечего. Опишите проблему, чтобы начать.",
    },
    "cancel_ticket_q": {
        "en": "Cancel ticket {number}? The engineer will stop working on it.",
        "ru": "Отменить заявку {number}? Инженер прекратит работу над ней.",
    },
    "btn_cancel_ticket": {"en": "Yes, cancel it", "ru": "Да, отменить"},
    "btn_keep_ticket": {"en": "No, keep it", "ru": "Нет, оставить"},
    "ticket_cancelled": {
        "en": "Ticket {number} is cancelled.",
        "ru": "Заявка {number} отменена.",
    },
    "ticket_kept": {
        "en": "OK, ticket {number} stays open.",
        "ru": "Хорошо, заявка {number} остаётся открытой.",
    },
    "new_request": {
        "en": "New request: describe the problem, or pick a category.",
        "ru": "Новое обращение: опишите проблему или выберите категорию.",
    },
    "new_request_ticket_open": {
        "en": "Ticket {number} stays open, and the engineer's replies will still come here "
        "(use /status to write to it). Now describe the new problem.",
        "ru": "Заявка {number} остаётся открытой, ответы инженера по-прежнему придут сюда "
        "(/status — чтобы написать в неё). Теперь опишите новую проблему.",
    },
    "lang_choose": {"en": "Choose the language:", "ru": "Выберите язык:"},
    "lang_set": {"en": "OK, I'll speak English.", "ru": "Хорошо, буду говорить по-русски."},
    "unsupported": {
        "en": "I can't read {what}. Please describe the problem in words, or attach a "
        "screenshot or a file.",
        "ru": "Я не умею читать {what}. Опишите проблему словами или приложите скриншот или файл.",
    },
    "empty_message": {
        "en": "The message is empty. Describe the problem in words, please.",
        "ru": "Сообщение пустое. Опишите, пожалуйста, проблему словами.",
    },
    "truncated": {
        "en": "Your message was very long; I kept the first {limit} characters.",
        "ru": "Сообщение очень длинное; я сохранил первые {limit} символов.",
    },
    "stale_button": {
        "en": "This button is no longer active.",
        "ru": "Эта кнопка уже неактивна.",
    },
    "edit_noted": {
        "en": "✏️ The engineer will see your edit.",
        "ru": "✏️ Инженер увидит исправление.",
    },
    "banned": {
        "en": "Your access to support has been restricted. Contact your account manager.",
        "ru": "Доступ к поддержке ограничен. Обратитесь к вашему менеджеру.",
    },
    "too_fast": {
        "en": "You're writing too fast — I'll read everything, give me a moment.",
        "ru": "Вы пишете слишком быстро — я всё прочитаю, дайте мне немного времени.",
    },
    "forget_q": {
        "en": "Erase your personal data? I'll delete your name and username, everything you "
        "wrote to support (messages, problem descriptions, questions) and the references "
        "to your files. Open tickets will be cancelled. Anonymous statistics (times, "
        "priorities, categories) stay. This cannot be undone.",
        "ru": "Удалить ваши персональные данные? Я сотру ваше имя и имя пользователя, всё, "
        "что вы писали в поддержку (сообщения, описания проблем, вопросы), и ссылки на "
        "ваши файлы. Открытые заявки будут отменены. Обезличенная статистика (время, "
        "приоритеты, категории) останется. Отменить это нельзя.",
    },
    "btn_forget_yes": {"en": "🗑 Yes, erase my data", "ru": "🗑 Да, удалить мои данные"},
    "btn_forget_no": {"en": "No, keep it", "ru": "Нет, оставить"},
    "forget_kept": {
        "en": "OK, nothing was erased.",
        "ru": "Хорошо, ничего не удалено.",
    },
    "forget_done": {
        "en": "Done: your personal data is erased — your name and username, the texts of "
        "{conversations} request(s) and {tickets} ticket(s), {messages} message(s), "
        "{queries} knowledge-base question(s) and {files} file reference(s). "
        "Cancelled open tickets: {cancelled}. Only anonymous statistics remain.",
        "ru": "Готово: ваши персональные данные удалены — имя и имя пользователя, тексты "
        "обращений: {conversations}, заявок: {tickets}, сообщений: {messages}, вопросов к "
        "базе знаний: {queries}, ссылок на файлы: {files}. Отменено открытых заявок: "
        "{cancelled}. Осталась только обезличенная статистика.",
    },
    "internal_error": {
        "en": "Sorry, something went wrong on our side. Your message is saved; please try "
        "again in a minute.",
        "ru": "Извините, у нас что-то пошло не так. Сообщение сохранено; попробуйте, "
        "пожалуйста, через минуту.",
    },
    "status_new": {"en": "new", "ru": "новая"},
    "status_open": {"en": "waiting for an engineer", "ru": "ожидает инженера"},
    "status_in_progress": {"en": "in progress", "ru": "в работе"},
    "status_waiting": {"en": "waiting for your answer", "ru": "ждёт вашего ответа"},
    "status_resolved": {"en": "resolved", "ru": "решена"},
    "status_closed": {"en": "closed", "ru": "закрыта"},
    "status_cancelled": {"en": "cancelled", "ru": "отменена"},
    "what_sticker": {"en": "stickers", "ru": "стикеры"},
    "what_location": {"en": "locations", "ru": "геолокацию"},
    "what_contact": {"en": "contacts", "ru": "контакты"},
    "what_poll": {"en": "polls", "ru": "опросы"},
    "what_other": {"en": "this kind of message", "ru": "такие сообщения"},
}


Catalogue = dict[str, dict[str, str]]


def lookup(catalogue: Catalogue, key: str, lang: str, **kwargs: Any) -> str:
    """``key`` from ``catalogue`` in ``lang`` (English if missing), formatted with ``kwargs``.
    The bot's, the L2 desk's and the digest's catalogues all read through this."""
    entry = catalogue[key]
    text = entry.get(lang) or entry["en"]
    return text.format(**kwargs) if kwargs else text


def t(key: str, lang: str, **kwargs: Any) -> str:
    """The bot's phrase ``key`` in ``lang``."""
    return lookup(MESSAGES, key, lang, **kwargs)
