"""The in-doubt probe: after a crash the Telegram sender looks for the text message a killed
call may have left (an identical ``editMessageText`` above the chat's high-water mark) instead
of sending it again, and never rewrites a message that is not the one it looks for."""

from __future__ import annotations

import logging
import socket
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from bot.outbox import Dispatcher
from bot.storage.models import Outbox
from handlers.telegram_sender import (
    PROBE_CALLS,
    PROBE_GAP,
    PROBE_WAIT,
    RateLimits,
    TelegramSender,
    outbox_high_water,
)
from tests.fakes.telegram_api import NOT_MODIFIED, Call, FakeUser
from tests.telegram.conftest import L2, MakeTg, Tg

DEAD = f"{socket.gethostname()}:{2**22 + 4323}"


class Killed(BaseException):
    """The process dies here (the dispatcher's ``except Exception`` does not catch it)."""


class Dies(TelegramSender):
    """A sender whose process is SIGKILLed around its first text call: ``landed`` says
    whether Telegram took the call before the kill (the response was lost)."""

    def __init__(self, *args: Any, landed: bool, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.landed = landed

    async def _send_html(self, *args: Any, **kw: Any) -> int:
        if self.landed:
            await super()._send_html(*args, **kw)
        raise Killed


def _sender(tg: Tg, cls: type[TelegramSender] = TelegramSender, **kw: Any) -> TelegramSender:
    """The sender of a new process (nothing in memory), reading marks from the database."""
    return cls(
        tg.channel.bot,
        tg.channel.signer,
        limits=RateLimits.unlimited(),
        high_water=outbox_high_water(tg.app.db),
        wall=lambda: tg.clock.now().timestamp(),
        **kw,
    )


async def _crash(tg: Tg, target: int, *, landed: bool) -> None:
    """A process delivers ``target``'s next row and is killed inside the call."""
    dying = Dispatcher(
        tg.app.db,
        tg.clock,
        tg.app.desk,
        {"telegram": _sender(tg, Dies, landed=landed)},
        target_filter=lambda _ch, t: t == str(target),
        worker_id=DEAD,
    )
    with pytest.raises(Killed):
        await dying.run_once()


async def _restart(tg: Tg) -> None:
    await tg.app.dispatcher({"telegram": _sender(tg)}).drain()


def _count(tg: Tg, outcome: str) -> str:
    return f'firstline_deliveries_total{{channel="telegram",outcome="{outcome}"}}'


async def _reply_queued(tg: Tg, bob: FakeUser, text: str) -> None:
    """Bob's thread reply is committed (its outbox row for the user written), not sent."""
    card = tg.card()
    tg.fake.send_text(bob, text, chat_id=card.chat_id, reply_to=card.message_id)
    await tg.channel.poll_once()
    await tg.channel.poll_once()


def _edits(tg: Tg, chat: int) -> list[Call]:
    """The editMessageText calls to ``chat`` (the probes, in a user's chat)."""
    return [
        c
        for c in tg.fake.calls
        if c.method.lower() == "editmessagetext" and int(c.params["chat_id"]) == chat
    ]


def _posts(tg: Tg, needle: str) -> int:
    """Desk posts (not the card, which quotes the user's newest words) with ``needle``."""
    return sum(needle in m.text for m in tg.fake.sent(L2) if not m.buttons())


async def _ticket(make_tg: MakeTg) -> tuple[Tg, FakeUser, FakeUser]:
    tg = await make_tg()
    ann, bob = tg.user("Ann", 5001), tg.user("Bob", 9001)
    await tg.escalate(ann)
    return tg, ann, bob


async def test_a_reply_that_landed_before_the_kill_is_found_not_sent_again(
    make_tg: MakeTg,
) -> None:
    tg, ann, bob = await _ticket(make_tg)
    await _reply_queued(tg, bob, "Try the <reset> link & wait")
    await _crash(tg, ann.id, landed=True)
    assert sum("reset" in t for t in tg.texts(ann)) == 1
    await _restart(tg)
    assert sum("reset" in t for t in tg.texts(ann)) == 1
    probes = _edits(tg, ann.id)
    assert probes and all(c.status == 400 for c in probes)  # nothing was rewritten
    assert probes[-1].params["message_id"] == tg.fake.last(ann.id).message_id
    assert probes[-1].result["description"] == NOT_MODIFIED
    metrics = tg.app.metrics.render().decode()
    assert f"{_count(tg, 'recovered')} 1.0" in metrics
    assert _count(tg, "resent_in_doubt") not in metrics
    async with tg.app.db.transaction() as s:
        row = (
            (
                await s.execute(
                    select(Outbox).where(Outbox.target == str(ann.id)).order_by(Outbox.id.desc())
                )
            )
            .scalars()
            .first()
        )
    assert row is not None and row.status == "sent"
    assert row.result == {"done": {"t:0": tg.fake.last(ann.id).message_id}}


async def test_the_users_own_message_above_the_mark_is_skipped(make_tg: MakeTg) -> None:
    """Ann wrote after the bot's last recorded message and before the killed call: her
    message ("can't be edited") lies between the mark and the bot's copy."""
    tg, ann, bob = await _ticket(make_tg)
    await _reply_queued(tg, bob, "Please reinstall")
    mine = tg.fake.send_text(ann, "hello? anyone there")  # not polled: only takes an id
    await _crash(tg, ann.id, landed=True)
    await _restart(tg)
    assert sum("reinstall" in t for t in tg.texts(ann)) == 1
    probes = _edits(tg, ann.id)
    assert [int(c.params["message_id"]) for c in probes] == [
        mine.message_id,  # looked at and passed over
        tg.fake.last(ann.id).message_id,
    ]
    assert [c.result["description"] for c in probes] == [
        "Bad Request: message can't be edited",
        NOT_MODIFIED,
    ]
    assert tg.fake.messages[(ann.id, mine.message_id)].text == "hello? anyone there"


async def _desk_post_after_crash(make_tg: MakeTg, text: str, *, landed: bool) -> Tg:
    """Ann writes in her ticket; the process dies while her words go to the desk group (the
    post reached Telegram or not); the next process delivers what is left."""
    tg, ann, _bob = await _ticket(make_tg)
    tg.fake.send_text(ann, text)
    await tg.channel.poll_once()
    await tg.channel.poll_once()
    await _crash(tg, L2, landed=landed)
    await _restart(tg)
    return tg


async def test_a_desk_post_that_never_left_is_sent_once(make_tg: MakeTg) -> None:
    """In a supergroup ids are the chat's own: a few "not found" above the mark say the
    killed call never reached Telegram, so the post is sent (no logged re-send)."""
    tg = await _desk_post_after_crash(make_tg, "it also shows error 0x43", landed=False)
    assert _posts(tg, "0x43") == 1
    # The probes (the card's own edits, with buttons, quote the words too).
    probes = [
        c for c in _edits(tg, L2) if "0x43" in c.params["text"] and not c.params.get("reply_markup")
    ]
    assert [c.result["description"] for c in probes] == [
        "Bad Request: message to edit not found"
    ] * PROBE_GAP
    metrics = tg.app.metrics.render().decode()
    assert _count(tg, "resent_in_doubt") not in metrics
    assert _count(tg, "recovered") not in metrics


async def test_a_desk_post_that_landed_is_found(make_tg: MakeTg) -> None:
    tg = await _desk_post_after_crash(make_tg, "it also shows error 0x44", landed=True)
    assert _posts(tg, "0x44") == 1
    assert f"{_count(tg, 'recovered')} 1.0" in tg.app.metrics.render().decode()


async def _later(tg: Tg, sender: TelegramSender, seconds: float) -> None:
    """Time passes (the test's clock: retries fall due, message dates move on); the new
    process polls what arrived and delivers what is due."""
    tg.clock.advance(timedelta(seconds=seconds))
    await tg.channel.poll_once()
    await tg.app.dispatcher({"telegram": sender}).drain()


def _new_process(tg: Tg) -> TelegramSender:
    """The restarted process's sender, also fed the channel's incoming messages."""
    sender = _sender(tg)
    tg.channel._sender = sender
    return sender


def _others_write(tg: Tg, n: int) -> None:
    """Another user writes ``n`` messages (not polled yet): ids of the shared sequence that
    lie between the chat's mark and whatever the killed call got."""
    dan = tg.user("Dan", 5004)
    for k in range(n):
        tg.fake.send_text(dan, f"are you there {k}")


async def test_a_private_chat_probe_without_a_bound_sends_again_after_the_wait(
    make_tg: MakeTg, caplog: pytest.LogCaptureFixture
) -> None:
    """(c) Private chats share one id sequence: "not found" proves nothing until an id
    allocated after the doubt is known. None comes: the reply waits (not sent), and after
    ``PROBE_WAIT`` it is sent again, logged — the old behaviour, only later."""
    tg, ann, bob = await _ticket(make_tg)
    await _reply_queued(tg, bob, "Restart the router")
    await _crash(tg, ann.id, landed=False)
    sender = _sender(tg)
    with caplog.at_level(logging.WARNING):
        await tg.app.dispatcher({"telegram": sender}).drain()
        assert not any("router" in t for t in tg.texts(ann))  # waiting, not re-sent
        await _later(tg, sender, PROBE_WAIT / 2)
        assert not any("router" in t for t in tg.texts(ann))
        await _later(tg, sender, PROBE_WAIT / 2)
    assert sum("router" in t for t in tg.texts(ann)) == 1  # nothing had landed
    # Only the ids just above the mark were looked at, once.
    assert len(_edits(tg, ann.id)) == PROBE_GAP
    assert any("no private-chat id allocated after" in r.getMessage() for r in caplog.records)
    assert any("the probe could not tell" in r.getMessage() for r in caplog.records)
    assert f"{_count(tg, 'resent_in_doubt')} 1.0" in tg.app.metrics.render().decode()


async def test_a_delivered_private_reply_is_found_once_another_users_message_bounds_it(
    make_tg: MakeTg,
) -> None:
    """(a) The killed reply landed above many ids this process knows nothing of (another
    user's messages); nothing else happens at first, so the probe waits; then someone
    writes: their message is dated after the doubt, its id bounds the probe, the reply is
    found and not sent again."""
    tg, ann, bob = await _ticket(make_tg)
    await _reply_queued(tg, bob, "Clear the cache")
    _others_write(tg, PROBE_CALLS + 5)
    await _crash(tg, ann.id, landed=True)
    copy = tg.fake.last(ann.id)
    sender = _new_process(tg)
    await tg.app.dispatcher({"telegram": sender}).drain()
    assert len(_edits(tg, ann.id)) == PROBE_GAP  # the next few ids, then it waits
    assert _count(tg, "resent_in_doubt") not in tg.app.metrics.render().decode()
    tg.clock.advance(timedelta(seconds=5))
    cid = tg.user("Cid", 5002)
    tg.fake.send_text(cid, "hi, I need help")  # dated after the doubt
    await _later(tg, sender, 0)
    assert sum("cache" in t for t in tg.texts(ann)) == 1
    probes = _edits(tg, ann.id)
    assert probes[-1].params["message_id"] == copy.message_id
    assert probes[-1].result["description"] == NOT_MODIFIED
    metrics = tg.app.metrics.render().decode()
    assert f"{_count(tg, 'recovered')} 1.0" in metrics
    assert _count(tg, "resent_in_doubt") not in metrics


async def test_an_undelivered_private_reply_is_sent_once_when_bounded(
    make_tg: MakeTg, caplog: pytest.LogCaptureFixture
) -> None:
    """(b) The killed reply never left; other users' messages sit in the shared sequence
    around where it would be. Once a message dated after the doubt arrives, every id below
    it was looked at or is another chat's: nothing there, sent once, no logged re-send."""
    tg, ann, bob = await _ticket(make_tg)
    await _reply_queued(tg, bob, "Update the driver")
    _others_write(tg, 4)
    await _crash(tg, ann.id, landed=False)
    sender = _new_process(tg)
    with caplog.at_level(logging.INFO):
        await tg.app.dispatcher({"telegram": sender}).drain()
        assert not any("driver" in t for t in tg.texts(ann))  # waiting for a bound
        tg.clock.advance(timedelta(seconds=5))
        cid = tg.user("Cid", 5002)
        late = tg.fake.send_text(cid, "hello?")  # dated after the doubt
        await _later(tg, sender, 0)
    assert sum("driver" in t for t in tg.texts(ann)) == 1
    looked = [int(c.params["message_id"]) for c in _edits(tg, ann.id)]
    assert looked and max(looked) < late.message_id < tg.fake.last(ann.id).message_id
    assert all(c.result["description"] != NOT_MODIFIED for c in _edits(tg, ann.id))
    assert any("not there, sending" in r.getMessage() for r in caplog.records)
    assert _count(tg, "resent_in_doubt") not in tg.app.metrics.render().decode()


async def test_other_chats_recorded_ids_keep_the_probe_short(make_tg: MakeTg) -> None:
    """(d) Since Ann's last message the bot talked with other users (recorded before her
    reply's row was written): those ids are below the killed call's, so the probe starts
    above them — one edit finds the reply, where the chat's own mark would leave more ids
    to look at than a probe may try."""
    tg, ann, bob = await _ticket(make_tg)
    others = [tg.user(f"U{k}", 6000 + k) for k in range(PROBE_CALLS + 1)]
    for user in others:
        await tg.say(user, "/start")
    assert sum(len(tg.fake.sent(u.id)) for u in others) > PROBE_CALLS
    tg.clock.advance(timedelta(seconds=5))  # the row is written well after those records
    await _reply_queued(tg, bob, "Use the reset link")
    await _crash(tg, ann.id, landed=True)
    await _restart(tg)
    assert sum("reset link" in t for t in tg.texts(ann)) == 1
    probes = _edits(tg, ann.id)
    assert [int(c.params["message_id"]) for c in probes] == [tg.fake.last(ann.id).message_id]
    assert probes[0].result["description"] == NOT_MODIFIED


async def test_a_private_chat_probe_ends_at_an_id_allocated_after_the_doubt(
    make_tg: MakeTg,
) -> None:
    """Once this process got a private-chat id from a call made after the probe began,
    every id the killed call could have got is known: nothing there, send."""
    tg, ann, bob = await _ticket(make_tg)
    await _reply_queued(tg, bob, "Check the cable")
    mine = tg.fake.send_text(ann, "hello?")  # takes the id after the mark
    await _crash(tg, ann.id, landed=False)
    sender = _sender(tg)
    other = tg.user("Cid", 5002)
    original = sender.high_water
    assert original is not None

    async def mark_then_traffic(target: str, row: int) -> Any:
        found = await original(target, row)
        # Meanwhile another user's message goes out through this process.
        await sender._send_html(other.id, "welcome")
        return found

    tg.fake._private(other)
    sender.high_water = mark_then_traffic
    await tg.app.dispatcher({"telegram": sender}).drain()
    assert sum("cable" in t for t in tg.texts(ann)) == 1
    # Ann's message, then Cid's "welcome" (known: not looked at), then the bound.
    assert [int(c.params["message_id"]) for c in _edits(tg, ann.id)] == [mine.message_id]
    assert _count(tg, "resent_in_doubt") not in tg.app.metrics.render().decode()


async def test_the_probe_never_edits_another_message(make_tg: MakeTg) -> None:
    """An earlier row failed for good while in doubt: its unrecorded copy may sit above the
    mark with other content, and an edit would rewrite it. The probe does not run; the
    reply is sent again (logged) and the old message is untouched."""
    tg, ann, bob = await _ticket(make_tg)
    await _reply_queued(tg, bob, "First answer")
    await _crash(tg, ann.id, landed=True)
    orphan = tg.fake.last(ann.id)
    async with tg.app.db.transaction() as s:
        await s.execute(
            update(Outbox)
            .where(Outbox.target == str(ann.id), Outbox.status == "sending")
            .values(status="failed", locked_by=None, result={"done": {}, "doubt": True})
        )
    await _reply_queued(tg, bob, "Second answer")
    await _crash(tg, ann.id, landed=False)
    await _restart(tg)
    assert _edits(tg, ann.id) == []
    assert orphan.text.endswith("First answer") and orphan.edits == 0
    assert sum("Second answer" in t for t in tg.texts(ann)) == 1
    assert f"{_count(tg, 'resent_in_doubt')} 1.0" in tg.app.metrics.render().decode()


async def test_the_fake_answers_edits_like_the_bot_api(make_tg: MakeTg) -> None:
    """The answers the probe relies on: same content -> not modified; another message of
    the bot -> edited; a user's or a service message -> can't be edited; none -> not found;
    and private chats share one id sequence."""
    from aiogram.exceptions import TelegramBadRequest

    tg = await make_tg(forum=True)
    bot = tg.channel.bot
    ann, cid = tg.user("Ann", 5001), tg.user("Cid", 5002)
    a1 = tg.fake.send_text(ann, "hi")
    c1 = tg.fake.send_text(cid, "hello")
    assert c1.message_id == a1.message_id + 1  # one sequence for private chats
    mine = await bot.send_message(ann.id, "<b>same</b>", parse_mode="HTML")
    topic = await bot.create_forum_topic(L2, "FL-1")

    async def answer(chat: int, mid: int, text: str) -> str:
        try:
            await bot.edit_message_text(chat_id=chat, message_id=mid, text=text, parse_mode="HTML")
        except TelegramBadRequest as e:
            return e.message
        return "edited"

    assert await answer(ann.id, mine.message_id, "<b>same</b>") == NOT_MODIFIED
    assert await answer(ann.id, a1.message_id, "x") == "Bad Request: message can't be edited"
    assert await answer(ann.id, c1.message_id, "x") == "Bad Request: message to edit not found"
    assert await answer(L2, topic.message_thread_id, "x") == (
        "Bad Request: message can't be edited"
    )
    assert await answer(ann.id, mine.message_id, "<b>other</b>") == "edited"
    assert tg.fake.messages[(ann.id, mine.message_id)].text == "other"
