"""Slack text and Block Kit rendering: pure functions, no network, no database.

Everything the bot shows in Slack goes through :func:`escape` (user text is data: ``&``,
``<`` and ``>`` are escaped, and ``@channel`` / ``@here`` / ``@everyone`` are broken with a
zero-width space so no client or API setting can turn them into a broadcast). Text coming
*from* Slack goes through :func:`slack_to_plain`, so the core only ever sees plain text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from escalation.card import TicketCard
from escalation.texts import lt

Block = dict[str, Any]

SECTION_LIMIT = 3000  # characters of a section's text object
FALLBACK_LIMIT = 3900  # the top-level ``text`` (notifications); Slack truncates at 40k
MAX_BLOCKS = 50
BUTTON_LABEL_LIMIT = 75
BUTTON_VALUE_LIMIT = 2000
ACTIONS_PER_BLOCK = 25

USER_BUTTON_PREFIX = "fl_btn:"  # action_id of a choice offered to an end user
CARD_ACTION_PREFIX = "fl_card:"  # action_id of a ticket card control
CARD_BLOCK_PREFIX = "fl_card|"  # block_id of the card's actions, carries the ticket number

ZWSP = "\u200b"
_BROADCAST = re.compile(r"(?<![\w.])@(?=(?:channel|here|everyone)\b)", re.IGNORECASE)


# ---------------------------------------------------------------------- text in and out


def neutralize(text: str) -> str:
    """Break ``@channel``, ``@here`` and ``@everyone`` so they stay plain words."""
    return _BROADCAST.sub("@" + ZWSP, text)


def escape(text: str) -> str:
    """Plain text -> safe mrkdwn: control characters escaped, broadcasts neutralised."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return neutralize(escaped)


_SLACK_MARKUP = re.compile(r"<([^<>]*)>")


def _plain_markup(m: re.Match[str]) -> str:
    inner = m.group(1)
    target, _, label = inner.partition("|")
    if target.startswith("@"):  # user mention <@U123> or <@U123|name>
        return "@" + (label or target[1:])
    if target.startswith("#"):  # channel link <#C123|general>
        return "#" + (label or target[1:])
    if target.startswith("!"):  # <!here>, <!subteam^S1|@team>, <!date^...|fallback>
        name = target[1:].split("^")[0]
        if name in ("here", "channel", "everyone"):
            return "@" + name
        return label or name
    if label and label != target:
        return f"{label} ({target})"
    return target


def slack_to_plain(text: str) -> str:
    """Slack message text (mrkdwn with entities and ``<...>`` markup) -> plain text."""
    out = _SLACK_MARKUP.sub(_plain_markup, text)
    return out.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


# ---------------------------------------------------------------------- Markdown -> mrkdwn

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_ITALIC_STAR = re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+")
_SAFE_URL = re.compile(r"^(?:https?://|mailto:)[^\s<>|]+$", re.IGNORECASE)
_BOLD_MARK = "\x01"


def _link(url: str, label: str) -> str:
    """A mrkdwn link if the URL is harmless, else the label and the URL as text."""
    raw_url = url.replace("&amp;", "&")
    if _SAFE_URL.match(raw_url):
        safe_label = label.replace("|", "¦") or escape(raw_url)
        return f"<{escape(raw_url)}|{safe_label}>"
    return f"{label} ({escape(raw_url)})" if label else escape(raw_url)


def _inline(text: str) -> str:
    """Convert one line's inline Markdown (outside code spans) to mrkdwn."""
    text = escape(text)
    text = _IMAGE.sub(lambda m: _link(m.group(2), m.group(1)), text)
    text = _LINK.sub(lambda m: _link(m.group(2), m.group(1)), text)
    text = _BOLD.sub(lambda m: f"{_BOLD_MARK}{m.group(2)}{_BOLD_MARK}", text)
    text = _ITALIC_STAR.sub(lambda m: f"_{m.group(1)}_", text)
    text = _STRIKE.sub(lambda m: f"~{m.group(1)}~", text)
    return text.replace(_BOLD_MARK, "*")


def _line(line: str) -> str:
    parts: list[str] = []
    pos = 0
    for m in _CODE_SPAN.finditer(line):
        parts.append(_inline(line[pos : m.start()]))
        parts.append("`" + escape(m.group(2).strip("`")) + "`")
        pos = m.end()
    parts.append(_inline(line[pos:]))
    return "".join(parts)


def md_to_mrkdwn(md: str) -> str:
    """Markdown (KB article bodies) -> Slack mrkdwn; raw text is escaped, links vetted."""
    out: list[str] = []
    in_code = False
    for raw in md.replace("\r\n", "\n").split("\n"):
        if _FENCE.match(raw):
            in_code = not in_code
            out.append("```")
            continue
        if in_code:
            out.append(escape(raw))
            continue
        heading = _HEADING.match(raw)
        if heading:
            title = _line(heading.group(1)).replace("*", "")
            out.append(f"*{title}*" if title else "")
            continue
        bullet = _BULLET.match(raw)
        if bullet:
            out.append(bullet.group(1) + "• " + _line(raw[bullet.end() :]))
            continue
        if raw.lstrip().startswith(">"):
            out.append("> " + _line(raw.lstrip()[1:].lstrip()))  # a quote stays a quote
            continue
        out.append(_line(raw))
    if in_code:
        out.append("```")
    return "\n".join(out).strip("\n")


# ---------------------------------------------------------------------- blocks


def _cut(text: str, limit: int) -> tuple[str, str]:
    """Split escaped text at a line break (or space) before ``limit``, never inside ``&..;``."""
    if len(text) <= limit:
        return text, ""
    cut = text.rfind("\n", 0, limit)
    if cut < limit // 2:
        cut = text.rfind(" ", 0, limit)
    if cut < limit // 2:
        cut = limit
        amp = text.rfind("&", cut - 8, cut)
        if amp != -1 and ";" not in text[amp:cut]:
            cut = amp
    return text[:cut], text[cut:].lstrip("\n")


def chunks(text: str, limit: int = SECTION_LIMIT) -> list[str]:
    """Escaped mrkdwn cut into pieces that fit a section."""
    pieces: list[str] = []
    rest = text
    while rest:
        head, rest = _cut(rest, limit)
        if head.strip():
            pieces.append(head)
    return pieces


def mrkdwn(text: str) -> dict[str, Any]:
    """A mrkdwn text object; ``verbatim`` so Slack does not auto-link names or mentions."""
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def sections(text: str) -> list[Block]:
    """Section blocks carrying already-escaped mrkdwn ``text``."""
    return [{"type": "section", "text": mrkdwn(piece)} for piece in chunks(text)][:MAX_BLOCKS]


def fallback(text: str) -> str:
    """The top-level ``text`` of a message (notifications, screen readers), already escaped."""
    head, rest = _cut(text, FALLBACK_LIMIT)
    return head + ("…" if rest else "") if head else " "


def plain_text(text: str, limit: int) -> dict[str, Any]:
    """A plain_text object (button labels); Slack shows it literally."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return {"type": "plain_text", "text": text or " ", "emoji": True}


def button_blocks(rows: Sequence[Sequence[dict[str, Any]]]) -> list[Block]:
    """The engine's button rows as actions blocks; each button's ``value`` is its data."""
    blocks: list[Block] = []
    for r, row in enumerate(rows):
        elements: list[dict[str, Any]] = []
        for c, button in enumerate(row):
            data = str(button.get("data", ""))
            if len(data) > BUTTON_VALUE_LIMIT:
                continue  # the engine's data is short; never send a block Slack rejects
            elements.append(
                {
                    "type": "button",
                    "action_id": f"{USER_BUTTON_PREFIX}{r}:{c}",
                    "text": plain_text(str(button.get("label", "")), BUTTON_LABEL_LIMIT),
                    "value": data,
                }
            )
        for start in range(0, len(elements), ACTIONS_PER_BLOCK):
            blocks.append(
                {
                    "type": "actions",
                    "block_id": f"fl_row:{r}:{start}",
                    "elements": elements[start : start + ACTIONS_PER_BLOCK],
                }
            )
    return blocks


def attachment_line(attachments: Iterable[dict[str, Any]], links: dict[str, str]) -> str:
    """``📎 name, name`` for a message; Slack files get their permalink when known."""
    names: list[str] = []
    for a in attachments:
        name = escape(str(a.get("name") or a.get("kind") or "file"))
        url = links.get(str(a.get("file_id", "")))
        names.append(_link(url, name) if url else name)
    return ("📎 " + ", ".join(names)) if names else ""


def message_blocks(
    text: str,
    *,
    markdown: bool,
    buttons: Sequence[Sequence[dict[str, Any]]] = (),
    attachments: str = "",
) -> tuple[str, list[Block]]:
    """(fallback text, blocks) for a message to an end user."""
    body = md_to_mrkdwn(text) if markdown else escape(text)
    if attachments:
        body = f"{body}\n{attachments}" if body else attachments
    actions = button_blocks(buttons)
    blocks = sections(body)[: MAX_BLOCKS - len(actions)] + actions
    return fallback(body), blocks


def without_buttons(blocks: Sequence[Block], chosen: str) -> list[Block]:
    """A pressed message's blocks with its buttons replaced by a note of the choice."""
    kept = [b for b in blocks if b.get("type") != "actions"]
    if chosen:
        kept.append({"type": "context", "elements": [mrkdwn("✔ " + escape(chosen))]})
    return kept[:MAX_BLOCKS]


# ---------------------------------------------------------------------- the ticket card

_PRIORITY_EMOJI = {"critical": "🔥", "high": "⚠️", "normal": "🔹", "low": "▫️"}


def card_fallback(card: TicketCard) -> str:
    """The card's one-line text (notifications and search)."""
    return fallback(f"[{escape(card.number)}] {escape(card.subject)} — {escape(card.status_label)}")


def card_blocks(card: TicketCard, priorities: Sequence[str]) -> list[Block]:
    """The ticket card (the handoff packet) as Block Kit, with its controls."""
    L = card.label
    owner = escape(card.owner_name) if card.owner_name else "_" + escape(L("label_nobody")) + "_"
    user = escape(card.user_name)
    if card.user_handle:
        user += f" (@{escape(card.user_handle)})"
    user += f"  `{escape(card.user_channel)}:{escape(card.user_id)}` {escape(card.user_lang)}"
    fields = [
        f"*{L('label_status')}:* {escape(card.status_label)} ({escape(card.level.upper())})",
        f"*{L('label_priority')}:* {_PRIORITY_EMOJI.get(card.priority, '')} "
        f"{escape(card.priority)}",
        f"*{L('label_owner')}:* {owner}",
        f"*{L('label_user')}:* {user}",
        f"*{L('label_org')}:* {escape(card.organisation or '-')}",
        f"*{L('label_tier')}:* {escape(card.tier_title)}",
        f"*{L('label_category')}:* {escape(card.category_title)}",
    ]
    blocks: list[Block] = [
        {
            "type": "section",
            "text": mrkdwn(_cut(f"🎫 *{escape(card.number)}* · {escape(card.subject)}", 3000)[0]),
        },
        {"type": "section", "fields": [mrkdwn(_cut(f, 2000)[0]) for f in fields]},
    ]
    if card.user_unreachable:
        blocks += sections(escape(lt("user_unreachable", card.lang, reason=card.user_unreachable)))
    if card.user_banned:
        blocks += sections(escape(lt("user_banned", card.lang)))
    blocks += sections(f"*{L('label_problem')}:*\n{_quote(card.problem)}")
    if card.details:
        blocks += sections(
            f"*{L('label_details')}:*\n" + "\n".join(_quote(d) for d in card.details)
        )
    if card.kb:
        blocks += sections(
            f"*{L('label_kb')}:*\n" + "\n".join(f"• {escape(a)} — {escape(v)}" for a, v in card.kb)
        )
    if card.checklist:
        blocks += sections(
            f"*{L('label_checklist')}:*\n"
            + "\n".join(f"• {escape(s)} — {escape(a)}" for s, a in card.checklist)
        )
    if card.attachments:
        blocks += sections(f"*{L('label_attachments')}:* " + attachment_line(card.attachments, {}))
    footer: list[str] = []
    if card.deadlines:
        footer.append(
            f"⏱ *{L('label_sla')}:* "
            + "; ".join(
                f"{escape(d.label)} "
                + (f"*🔴 {escape(d.state)}*" if d.overdue else escape(d.state))
                for d in card.deadlines
            )
        )
    if card.csat is not None:
        footer.append(f"⭐ *{L('label_csat')}:* {card.csat}/5")
    if footer:
        blocks.append({"type": "context", "elements": [mrkdwn(f) for f in footer]})
    controls = card_controls(card, priorities)
    if controls:
        blocks = [*blocks[: MAX_BLOCKS - 1], controls]
    return blocks[:MAX_BLOCKS]


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in escape(text).splitlines() or [""])


def card_controls(card: TicketCard, priorities: Sequence[str]) -> Block | None:
    """The card's buttons and priority select (the ticket number travels in ``block_id``)."""
    elements: list[dict[str, Any]] = []
    for action, label in card.actions:
        if action == "priority":
            options = [
                {"text": plain_text(f"{_PRIORITY_EMOJI.get(p, '')} {p}", 75), "value": p}
                for p in priorities
            ]
            select: dict[str, Any] = {
                "type": "static_select",
                "action_id": CARD_ACTION_PREFIX + "priority",
                "placeholder": plain_text(label, 150),
                "options": options,
            }
            current = next((o for o in options if o["value"] == card.priority), None)
            if current is not None:
                select["initial_option"] = current
            elements.append(select)
            continue
        button: dict[str, Any] = {
            "type": "button",
            "action_id": CARD_ACTION_PREFIX + action,
            "text": plain_text(label, BUTTON_LABEL_LIMIT),
            "value": card.number,
        }
        if action in ("claim", "resolve"):
            button["style"] = "primary"
        elements.append(button)
    if not elements:
        return None
    return {
        "type": "actions",
        "block_id": CARD_BLOCK_PREFIX + card.number,
        "elements": elements[:ACTIONS_PER_BLOCK],
    }


def post_text(payload: dict[str, Any], lang: str, files: dict[str, str]) -> str:
    """A thread post under the card (a user message, an edit, or a desk notice), escaped."""
    role = payload.get("role")
    author = str(payload.get("author") or "user")
    text = str(payload.get("text", ""))
    if role == "user":
        body = lt("msg_from_user", lang, user="\x02", text="\x03")
    elif role == "user_edit":
        body = lt("msg_edited", lang, user="\x02", text="\x03")
    else:
        body = "\x03"
    # Substitute after escaping the template, so only our own markup is live.
    body = escape(body).replace("\x02", f"*{escape(author)}*").replace("\x03", escape(text))
    line = attachment_line(payload.get("attachments") or [], files)
    if line:
        body = f"{body}\n{line}"
    return body
