"""Crashes in the middle of a multi-call Telegram row: the parts already sent are saved in
the database after each call, so a new process goes on with the next part. The one call
that was running when the process died is sent again (the Bot API cannot be asked)."""

from __future__ import annotations

import socket
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from bot.outbox import Dispatcher
from bot.storage.models import Outbox
from handlers.telegram_sender import RateLimits, TelegramSender
from tests.fakes.telegram_api import FakeUser
from tests.telegram.conftest import MakeTg, Tg

DEAD = f"{socket.gethostname()}:{2**22 + 4322}"
LONG = ("Step: do this & that <carefully>. " * 300).strip()  # three messages


class Killed(BaseException):
    """The process dies here (the dispatcher's ``except Exception`` does not catch it)."""


class DiesAfter(TelegramSender):
    """A sender whose process is SIGKILLed right after its ``calls``-th message was sent."""

    def __init__(self, *args: Any, calls: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.left = calls

    async def _send_html(self, *args: Any, **kw: Any) -> int:
        mid = await super()._send_html(*args, **kw)
        self.left -= 1
        if self.left == 0:
            raise Killed
        return mid


def _new_sender(tg: Tg, **kw: Any) -> TelegramSender:
    """The sender of a new process: nothing in memory from the one before."""
    cls = DiesAfter if "calls" in kw else TelegramSender
    return cls(tg.channel.bot, tg.channel.signer, limits=RateLimits.unlimited(), **kw)


async def _reply_queued(tg: Tg, bob: FakeUser, text: str) -> None:
    """Bob's thread reply is committed (its outbox rows written), nothing delivered yet."""
    card = tg.card()
    tg.fake.send_text(bob, text, chat_id=card.chat_id, reply_to=card.message_id)
    await tg.channel.poll_once()
    await tg.channel.poll_once()


async def _pieces(tg: Tg, user: FakeUser) -> list[str]:
    return [t for t in tg.texts(user) if "Step:" in t]


async def test_a_restart_goes_on_with_the_next_part(make_tg: MakeTg) -> None:
    tg = await make_tg()
    ann, bob = tg.user("Ann", 5001), tg.user("Bob", 9001)
    await tg.escalate(ann)
    await _reply_queued(tg, bob, LONG)
    dying = Dispatcher(
        tg.app.db,
        tg.clock,
        tg.app.desk,
        {"telegram": _new_sender(tg, calls=2)},
        target_filter=lambda _ch, target: target == str(ann.id),
        worker_id=DEAD,
    )
    with pytest.raises(Killed):
        await dying.run_once()
    sent = await _pieces(tg, ann)
    assert len(sent) == 2  # parts 1 and 2 reached Ann; the process died after part 2
    async with tg.app.db.transaction() as s:
        row = (
            await s.execute(select(Outbox).where(Outbox.target == str(ann.id)).order_by(
                Outbox.id.desc()))
        ).scalars().first()
    assert row is not None and row.status == "sending"
    assert row.result is not None and list(row.result["done"]) == ["t:0"]  # saved before part 2
    fresh = tg.app.dispatcher({"telegram": _new_sender(tg)})
    await fresh.drain()
    got = await _pieces(tg, ann)
    # Part 1 once (saved), part 2 twice (the call in flight at the crash), part 3 once.
    assert got[0] == sent[0] and got[1] == sent[1] == got[2] and len(got) == 4
    assert " ".join(dict.fromkeys(got)).count("Step:") == 300
    metrics = tg.app.metrics.render().decode()
    assert 'firstline_deliveries_total{channel="telegram",outcome="resent_in_doubt"} 1.0' in (
        metrics
    )


async def test_a_failed_last_part_is_the_only_one_sent_again(make_tg: MakeTg) -> None:
    tg = await make_tg()
    ann, bob = tg.user("Ann", 5001), tg.user("Bob", 9001)
    await tg.escalate(ann)
    await _reply_queued(tg, bob, LONG)
    sender = _new_sender(tg)
    first = Dispatcher(
        tg.app.db,
        tg.clock,
        tg.app.desk,
        {"telegram": sender},
        target_filter=lambda _ch, target: target == str(ann.id),
    )
    original = sender._send_html
    calls = 0

    async def third_fails(*args: Any, **kw: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 3:
            tg.fake.fail_next("sendMessage", 502, chat_id=ann.id)
        return await original(*args, **kw)

    sender._send_html = third_fails  # type: ignore[method-assign]
    await first.run_once()
    assert len(await _pieces(tg, ann)) == 2
    # Another process (nothing in memory) retries after the backoff: only part 3 goes out.
    tg.clock.advance(timedelta(seconds=5))
    await tg.app.dispatcher({"telegram": _new_sender(tg)}).drain()
    got = await _pieces(tg, ann)
    assert len(got) == 3 and " ".join(got).count("Step:") == 300


async def test_a_reply_to_an_unrecorded_card_copy_reaches_the_user(make_tg: MakeTg) -> None:
    """A card Telegram showed but the outbox never recorded (the crash window): its signed
    buttons name the ticket, so the consultant's reply to it is not lost."""
    from aiogram.types import InlineKeyboardMarkup

    tg = await make_tg()
    ann, bob = tg.user("Ann", 5001), tg.user("Bob", 9001)
    await tg.escalate(ann)
    card = tg.card()
    copy = await tg.channel.bot.send_message(
        card.chat_id,
        card.html or card.text,
        parse_mode="HTML",
        reply_markup=InlineKeyboardMarkup.model_validate(card.reply_markup),
    )
    tg.fake.send_text(bob, "Please retry now", chat_id=card.chat_id, reply_to=copy.message_id)
    await tg.step()
    assert "Please retry now" in tg.last(ann)


async def test_a_reply_to_a_bot_message_that_is_no_card_is_answered(make_tg: MakeTg) -> None:
    tg = await make_tg()
    ann, bob = tg.user("Ann", 5001), tg.user("Bob", 9001)
    await tg.escalate(ann)
    before = len(tg.texts(ann))
    other = await tg.channel.bot.send_message(tg.card().chat_id, "SLA breached: FL-1001")
    tg.fake.send_text(bob, "who takes it?", chat_id=other.chat.id, reply_to=other.message_id)
    await tg.step()
    assert len(tg.texts(ann)) == before
    assert "Not delivered" in tg.fake.last(other.chat.id).text
