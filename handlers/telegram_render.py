"""Telegram rendering: HTML escaping, Markdown to Telegram HTML, long-text splitting, the
ticket card, and signed callback data for the L2 desk's buttons.

Pure functions only — no network, no database — so every rule here is unit-tested cheaply.
Everything a user or consultant typed goes through :func:`esc` before it meets a tag.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from config.categories import PRIORITIES
from escalation.card import TicketCard

MAX_TEXT = 4096  # Telegram's limit for a message, counted after entity parsing (UTF-16)
MAX_CAPTION = 1024
MAX_TOPIC_NAME = 128
MAX_CALLBACK_DATA = 64
ALERT_LIMIT = 200  # answerCallbackQuery text

_TAG = re.compile(r"<[^>]*>")


def esc(text: object) -> str:
    """Escape any text for Telegram HTML (``<``, ``>``, ``&``); quotes are harmless in text."""
    return html.escape(str(text), quote=False)


def esc_attr(text: object) -> str:
    """Escape a value for an HTML attribute (a link's href)."""
    return html.escape(str(text), quote=True)


def utf16_len(text: str) -> int:
    """Length as Telegram counts it: UTF-16 code units (an emoji may count twice)."""
    return len(text.encode("utf-16-le")) // 2


def visible(html_text: str) -> str:
    """The text a reader sees for ``html_text`` (tags dropped, entities decoded)."""
    return html.unescape(_TAG.sub("", html_text))


# ---------------------------------------------------------------------- Markdown -> HTML

_SAFE_URL = re.compile(r"^(https?://|tg://|mailto:)[^\s<>\"]+$", re.IGNORECASE)
_INLINE = re.compile(
    r"`(?P<code>[^`\n]+)`"
    r"|\[(?P<ltext>[^\]\n]+)\]\((?P<url>[^)\s]+)\)"
    r"|\*\*(?P<b2>[^*\n]+?)\*\*"
    r"|__(?P<b3>[^_\n]+?)__"
    r"|(?<![\w*])\*(?P<b1>[^*\n]+?)\*(?![\w*])"
    r"|(?<![\w_])_(?P<i1>[^_\n]+?)_(?![\w_])"
)


def _inline(text: str) -> str:
    """Inline Markdown of one line to HTML; everything that is not markup is escaped."""
    out: list[str] = []
    pos = 0
    for m in _INLINE.finditer(text):
        out.append(esc(text[pos : m.start()]))
        pos = m.end()
        if m.group("code") is not None:
            out.append(f"<code>{esc(m.group('code'))}</code>")
        elif m.group("ltext") is not None:
            url = m.group("url")
            label = _inline(m.group("ltext"))
            if _SAFE_URL.match(url):
                out.append(f'<a href="{esc_attr(url)}">{label}</a>')
            else:  # javascript: and friends stay plain text
                out.append(f"{label} ({esc(url)})")
        elif m.group("i1") is not None:
            out.append(f"<i>{_inline(m.group('i1'))}</i>")
        else:
            inner = m.group("b2") or m.group("b3") or m.group("b1") or ""
            out.append(f"<b>{_inline(inner)}</b>")
    out.append(esc(text[pos:]))
    return "".join(out)


def markdown_to_html(text: str) -> str:
    """KB-article Markdown (bold, italic, code, fences, links, headings, lists) to Telegram HTML.

    Unbalanced markers stay literal; the result always parses.
    """
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^\s*```\s*([\w+-]*)\s*$", line)
        if fence:
            lang = fence.group(1)
            body: list[str] = []
            i += 1
            while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
                body.append(lines[i])
                i += 1
            i += 1  # the closing fence (or the end of an unterminated block)
            code = esc("\n".join(body))
            if lang:
                out.append(f'<pre><code class="language-{esc_attr(lang)}">{code}</code></pre>')
            else:
                out.append(f"<pre>{code}</pre>")
            continue
        heading = re.match(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        bullet = re.match(r"^(\s*)[-*+]\s+(.*)$", line)
        if heading:
            out.append(f"<b>{_inline(heading.group(1))}</b>")
        elif bullet:
            out.append(f"{bullet.group(1)}• {_inline(bullet.group(2))}")
        else:
            out.append(_inline(line))
        i += 1
    return "\n".join(out)


def render_text(text: str, *, markdown: bool) -> str:
    """A message body as Telegram HTML."""
    return markdown_to_html(text) if markdown else esc(text)


# ---------------------------------------------------------------------- splitting


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Split source text into pieces of at most ``limit`` UTF-16 units, at paragraph, line,
    then word boundaries. Escaping only adds markup, not visible characters, so a piece that
    fits here fits Telegram's limit after rendering; Markdown rendering only shrinks it.
    """
    if utf16_len(text) <= limit:
        return [text]
    pieces: list[str] = []
    rest = text
    while utf16_len(rest) > limit:
        # The longest prefix that fits, in characters.
        lo, hi = 0, len(rest)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if utf16_len(rest[:mid]) <= limit:
                lo = mid
            else:
                hi = mid - 1
        window = rest[:lo]
        cut = -1
        for sep in ("\n\n", "\n", " "):
            at = window.rfind(sep)
            if at > lo // 3:  # do not leave a tiny first piece
                cut = at + len(sep)
                break
        if cut <= 0:
            cut = lo
        pieces.append(rest[:cut].rstrip("\n"))
        rest = rest[cut:]
    if rest.strip():
        pieces.append(rest)
    return [p for p in pieces if p.strip()] or [text[:limit]]


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis."""
    text = text.strip()
    return text if len(text) <= limit else text[: max(limit - 1, 0)].rstrip() + "…"


# ---------------------------------------------------------------------- callback data

# Short action codes keep the signed data well inside 64 bytes.
ACTION_CODES: dict[str, str] = {
    "claim": "c",
    "wait": "w",
    "resolve": "r",
    "l3": "3",
    "priority": "p",  # the chosen priority is the value
    "save_kb": "k",
    "reopen": "o",
    "release": "x",
    "l3_back": "2",
    "prio_menu": "m",  # UI only: show the priority keyboard
    "prio_back": "b",  # UI only: back to the card's keyboard
}
CODE_ACTIONS = {v: k for k, v in ACTION_CODES.items()}
CARD_PREFIX = "fl"


@dataclass(frozen=True)
class CardPress:
    """A verified press of a card button."""

    action: str
    number: str  # the ticket number as the desk names it, e.g. "1042"
    value: str


class CallbackSigner:
    """Signs card-button data with an HMAC keyed by the bot token.

    A client can send any callback data it likes; only data this bot signed for this chat
    is turned into a desk action, so a forged press never reaches the desk.
    """

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"firstline-telegram-callback\x00" + secret.encode()).digest()

    def _mac(self, chat_id: int | str, body: str) -> str:
        digest = hmac.new(self._key, f"{chat_id}|{body}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:12]).decode().rstrip("=")

    def sign(self, chat_id: int | str, action: str, number: str, value: str = "") -> str:
        """``fl:<code>:<number>:<value>:<mac>`` for a card button in ``chat_id``."""
        body = f"{CARD_PREFIX}:{ACTION_CODES[action]}:{number}:{value}"
        data = f"{body}:{self._mac(chat_id, body)}"
        if len(data.encode()) > MAX_CALLBACK_DATA:
            raise ValueError(f"callback data too long: {data!r}")
        return data

    def verify(self, chat_id: int | str, data: str) -> CardPress | None:
        """The press encoded in ``data`` if this bot signed it for ``chat_id``, else ``None``."""
        parts = data.split(":")
        if len(parts) != 5 or parts[0] != CARD_PREFIX:
            return None
        body, mac = ":".join(parts[:4]), parts[4]
        if not hmac.compare_digest(mac, self._mac(chat_id, body)):
            return None
        action = CODE_ACTIONS.get(parts[1])
        if action is None or not parts[2].isdecimal():
            return None
        return CardPress(action=action, number=parts[2], value=parts[3])


def is_card_data(data: str) -> bool:
    """Whether callback data claims to be a card button (signed or forged)."""
    return data.startswith(CARD_PREFIX + ":")


# ---------------------------------------------------------------------- keyboards


def user_keyboard(rows: Iterable[Iterable[dict[str, Any]]]) -> InlineKeyboardMarkup | None:
    """The engine's buttons (``[[{label, data}]]``) as an inline keyboard."""
    keyboard = [
        [
            InlineKeyboardButton(text=str(b.get("label", ""))[:64], callback_data=str(b["data"]))
            for b in row
            if b.get("data")
        ]
        for row in rows
    ]
    keyboard = [row for row in keyboard if row]
    return InlineKeyboardMarkup(inline_keyboard=keyboard) if keyboard else None


def ticket_short(number: str) -> str:
    """``"FL-1042"`` -> ``"1042"`` (the digits the desk parses)."""
    m = re.search(r"(\d+)$", number)
    return m.group(1) if m else number


def card_keyboard(
    card: TicketCard, signer: CallbackSigner, chat_id: int | str
) -> InlineKeyboardMarkup | None:
    """The card's actions as buttons, two per row; "Priority" opens a second keyboard."""
    number = ticket_short(card.number)
    buttons: list[InlineKeyboardButton] = []
    for action, label in card.actions:
        if action not in ACTION_CODES:
            continue
        code_action = "prio_menu" if action == "priority" else action
        buttons.append(
            InlineKeyboardButton(
                text=label, callback_data=signer.sign(chat_id, code_action, number)
            )
        )
    rows = [buttons[i : i + 2] for i in range(0, len(buttons), 2)]
    return InlineKeyboardMarkup(inline_keyboard=rows) if rows else None


PRIORITY_MARKS = {"critical": "🔴", "high": "🟠", "normal": "🟢", "low": "⚪"}


def priority_keyboard(
    number: str, current: str | None, signer: CallbackSigner, chat_id: int | str, back: str
) -> InlineKeyboardMarkup:
    """The second keyboard: one button per priority, and "back"."""
    rows = [
        [
            InlineKeyboardButton(
                text=f"{PRIORITY_MARKS.get(p, '')} {p}" + (" ✓" if p == current else ""),
                callback_data=signer.sign(chat_id, "priority", number, p),
            )
        ]
        for p in PRIORITIES
    ]
    rows.append(
        [InlineKeyboardButton(text=back, callback_data=signer.sign(chat_id, "prio_back", number))]
    )
    return InlineKeyboardMarkup(inline_keyboard=rows)


# ---------------------------------------------------------------------- the ticket card

STATUS_ICONS = {
    "new": "🆕",
    "open": "🆕",
    "in_progress": "🛠",
    "waiting": "⏸",
    "resolved": "✅",
    "closed": "🔒",
    "cancelled": "🚫",
}


def topic_name(card: TicketCard) -> str:
    """``"FL-1042 · open · Ann"``: what the forum topic is called (≤ 128 characters)."""
    status = card.status_label.split(",")[0].strip() or card.status
    name = f"{STATUS_ICONS.get(card.status, '')} {card.number} · {status} · {card.user_name}"
    return truncate(name.strip(), MAX_TOPIC_NAME)


def _user_line(card: TicketCard) -> str:
    name = esc(card.user_name)
    if card.user_channel == "telegram" and card.user_id.isdigit():
        name = f'<a href="tg://user?id={card.user_id}">{name}</a>'
    handle = f" (@{esc(card.user_handle)})" if card.user_handle else ""
    return f"{name}{handle} · {esc(card.user_lang)}"


def render_card(card: TicketCard, *, budget: int = 1500) -> str:
    """The card as Telegram HTML; long user text is cut so the card fits one message."""
    while True:
        text = _render_card(card, budget)
        if utf16_len(visible(text)) <= MAX_TEXT - 96 or budget <= 100:
            return text
        budget //= 2


def _render_card(card: TicketCard, budget: int) -> str:
    L = card.label
    icon = STATUS_ICONS.get(card.status, "🎫")
    lines = [
        f"{icon} <b>{esc(card.number)}</b> · {esc(card.status_label)} · {esc(card.level.upper())}",
        f"<b>{esc(truncate(card.subject, 200))}</b>",
        "",
        f"{esc(L('label_priority'))}: <b>{esc(card.priority)}</b>   "
        f"{esc(L('label_owner'))}: <b>{esc(card.owner_name or L('label_nobody'))}</b>",
        f"{esc(L('label_user'))}: {_user_line(card)}",
        f"{esc(L('label_org'))}: {esc(card.organisation or '—')}   "
        f"{esc(L('label_tier'))}: {esc(card.tier_title)}",
        f"{esc(L('label_category'))}: {esc(card.category_title)}",
    ]
    if card.user_unreachable:
        lines.append(f"⛔ <b>{esc(L('label_user'))}</b>: {esc(card.user_unreachable)}")
    if card.user_banned:
        lines.append(esc(L("user_banned")))
    if card.deadlines:
        parts = []
        for d in card.deadlines:
            when = f" ({d.due:%d %b %H:%M} UTC)" if d.due is not None else ""
            state = f"<b>{esc(d.state)}</b>" if d.overdue else esc(d.state)
            parts.append(f"{esc(d.label)}: {state}{esc(when)}")
        lines.append(f"⏱ {esc(L('label_sla'))}: " + "; ".join(parts))
    if card.csat is not None:
        lines.append(f"{esc(L('label_csat'))}: {'★' * card.csat}{'☆' * (5 - card.csat)}")
    lines.append("")
    lines.append(f"<b>{esc(L('label_problem'))}</b>")
    lines.append(f"<blockquote>{esc(truncate(card.problem, budget))}</blockquote>")
    if card.details:
        each = max(budget // max(len(card.details), 1), 60)
        lines.append(f"<b>{esc(L('label_details'))}</b>")
        lines.append(
            "<blockquote>"
            + esc("\n".join(truncate(d, each) for d in card.details))
            + "</blockquote>"
        )
    if card.kb:
        lines.append(f"<b>{esc(L('label_kb'))}</b>")
        lines.extend(f"• {esc(truncate(a, 120))} — {esc(v)}" for a, v in card.kb[:8])
    if card.checklist:
        lines.append(f"<b>{esc(L('label_checklist'))}</b>")
        lines.extend(f"• {esc(truncate(s, 160))} — {esc(a)}" for s, a in card.checklist[:15])
    if card.attachments:
        names = [str(a.get("name") or a.get("kind") or "file") for a in card.attachments[:20]]
        lines.append(f"📎 {esc(L('label_attachments'))}: " + esc(", ".join(names)))
    return "\n".join(lines)


def post_pieces(payload: dict[str, Any]) -> list[str]:
    """A line in the ticket's thread (the user's message, an edit, or a system notice) as
    HTML pieces that each fit one message."""
    role = payload.get("role")
    text = str(payload.get("text") or "")
    author = esc(payload.get("author") or "user")
    if role == "user":
        head = f"💬 <b>{author}</b>"
    elif role == "user_edit":
        head = f"✏️ <b>{author}</b> (edited)"
    else:
        return [f"<i>{esc(p)}</i>" for p in split_text(text, MAX_TEXT - 8)] if text else []
    if not text:
        return [head]
    pieces = split_text(text, MAX_TEXT - utf16_len(visible(head)) - 2)
    return [f"{head}:\n{esc(pieces[0])}", *(esc(p) for p in pieces[1:])]
