"""Rendering rules: escaping, Markdown, splitting, the card, signed callback data, pacing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from escalation.card import CARD_ACTIONS, Deadline, TicketCard
from handlers.telegram_render import (
    ACTION_CODES,
    MAX_CALLBACK_DATA,
    CallbackSigner,
    card_keyboard,
    esc,
    markdown_to_html,
    post_pieces,
    render_card,
    split_text,
    topic_name,
    utf16_len,
    visible,
)
from handlers.telegram_sender import Deferred, RateLimiter, RateLimits
from tests.fakes.telegram_api import ApiError, parse_html


def test_escape_user_text() -> None:
    assert esc("<b>hi</b> & <i>") == "&lt;b&gt;hi&lt;/b&gt; &amp; &lt;i&gt;"
    assert parse_html(esc('<a href="x">&amp;</a>')) == '<a href="x">&amp;</a>'


def test_markdown_to_html_parses_and_escapes() -> None:
    md = (
        "# Title\n**Reset** the *password* at `a<b>&c`\n"
        "- one\n1. two_three_four\n[link](https://x.example/?a=1&b=2) "
        "[bad](javascript:alert(1))\n```\nif a < b && c:\n```\nunbalanced ** and _ and `"
    )
    out = markdown_to_html(md)
    text = parse_html(out)  # the fake's strict Telegram HTML parser accepts it
    assert "<b>Reset</b>" in out and "<b>password</b>" in out
    assert "<code>a&lt;b&gt;&amp;c</code>" in out
    assert "• one" in text and "two_three_four" in text  # no italics inside words
    assert 'href="https://x.example/?a=1&amp;b=2"' in out
    assert "javascript" not in out.split("href")[-1] or 'href="javascript' not in out
    assert "<pre>if a &lt; b &amp;&amp; c:</pre>" in out
    assert "unbalanced ** and _ and `" in text


@pytest.mark.parametrize("n", [10, 4096, 4097, 9000, 20000])
def test_split_text_respects_the_limit(n: int) -> None:
    text = ("word " * (n // 5 + 1))[:n]
    pieces = split_text(text)
    assert all(utf16_len(p) <= 4096 for p in pieces)
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "").rstrip()


def test_split_counts_utf16_units() -> None:
    text = "😀" * 3000  # 6000 UTF-16 units
    pieces = split_text(text)
    assert len(pieces) == 2 and all(utf16_len(p) <= 4096 for p in pieces)


def test_long_user_post_is_split_and_escaped() -> None:
    pieces = post_pieces({"role": "user", "author": "<Ann>", "text": "<x>" * 3000})
    assert len(pieces) >= 3
    for p in pieces:
        shown = parse_html(p)
        assert utf16_len(shown) <= 4096
    assert parse_html(pieces[0]).startswith("💬 <Ann>:")


def _card(**kw: object) -> TicketCard:
    base: dict[str, object] = {
        "ticket_id": 1,
        "number": "FL-1042",
        "lang": "en",
        "status": "open",
        "status_label": "open, unclaimed",
        "level": "l2",
        "priority": "high",
        "tier": "free",
        "tier_title": "Free",
        "organisation": None,
        "category": "account",
        "category_title": "Account",
        "user_name": "Ann <script>",
        "user_handle": "ann",
        "user_channel": "telegram",
        "user_id": "5001",
        "user_lang": "en",
        "user_unreachable": None,
        "user_banned": False,
        "subject": "pw & <b>",
        "problem": "I forgot <b>my</b> password & more " * 300,
        "details": ["x" * 3000, "y & z"],
        "deadlines": [
            Deadline(
                "first_response",
                "first response",
                datetime(2026, 1, 12, 15, tzinfo=UTC),
                "due in 8h",
            )
        ],
        "actions": [("claim", "✋ Take"), ("priority", "🎚 Priority"), ("resolve", "✅ Resolve")],
    }
    base.update(kw)
    return TicketCard(**base)  # type: ignore[arg-type]


def test_card_is_valid_html_within_the_limit() -> None:
    card = _card()
    html = render_card(card)
    text = parse_html(html)
    assert utf16_len(text) <= 4096
    assert "Ann <script>" in text and "pw & <b>" in text
    assert 'href="tg://user?id=5001"' in html
    assert "due in 8h" in text


def test_topic_name() -> None:
    name = topic_name(_card(user_name="A" * 300))
    assert name.startswith("🆕 FL-1042 · open · ") and len(name) <= 128


def test_card_buttons_are_signed_and_short() -> None:
    signer = CallbackSigner("123:secret")
    kb = card_keyboard(_card(), signer, -100)
    assert kb is not None
    datas = [b.callback_data for row in kb.inline_keyboard for b in row]
    assert all(d and len(d.encode()) <= MAX_CALLBACK_DATA for d in datas)
    press = signer.verify(-100, datas[0] or "")
    assert press is not None and press.action == "claim" and press.number == "1042"
    # The same data in another chat, a changed ticket, or another key: refused.
    assert signer.verify(-200, datas[0] or "") is None
    forged = (datas[0] or "").replace(":1042:", ":1043:")
    assert signer.verify(-100, forged) is None
    assert CallbackSigner("other").verify(-100, datas[0] or "") is None
    assert signer.verify(-100, "fl:c:1042::AAAAAAAAAAAAAAAA") is None
    assert signer.verify(-100, "1|cat:account") is None


def test_every_card_action_has_a_button() -> None:
    assert {a for a, _ in CARD_ACTIONS} <= set(ACTION_CODES)
    assert len(set(ACTION_CODES.values())) == len(ACTION_CODES)


def test_fake_rejects_unescaped_text() -> None:
    with pytest.raises(ApiError):
        parse_html("a < b")
    with pytest.raises(ApiError):
        parse_html("<script>x</script>")
    assert visible("<b>a</b> &amp;") == "a &"


async def test_rate_limiter_paces_bursts() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    lim = RateLimiter(
        RateLimits(
            private_per_second=1, private_burst=3, group_per_minute=20, group_burst=2, max_wait=5
        ),
        clock=lambda: now[0],
        sleep=sleep,
    )
    for _ in range(3):
        await lim.acquire("42")
    assert slept == []  # the burst goes out at once
    await lim.acquire("42")
    assert slept == [pytest.approx(1.0)]
    # A group: 2 at once, then one every 3 s; beyond max_wait the row is deferred.
    await lim.acquire("-100")
    await lim.acquire("-100")
    await lim.acquire("-100")
    assert slept[-1] == pytest.approx(3.0)
    # Calls racing for the same group queue up behind each other...
    assert lim.reserve("-100") == pytest.approx(3.0)
    # ...until the wait exceeds max_wait: then the outbox row is deferred instead.
    with pytest.raises(Deferred) as info:
        await lim.acquire("-100")
    assert info.value.wait == pytest.approx(6.0)
