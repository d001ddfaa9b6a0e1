"""The whole support loop through Telegram: user, KB, checklist, card, consultant, CSAT."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from bot.storage.models import Ticket
from tests.telegram.conftest import L2, MakeTg, Tg, thread_of


async def _ticket(tg: Tg) -> Ticket:
    async with tg.app.db.transaction() as s:
        t = (await s.execute(select(Ticket).order_by(Ticket.id.desc()))).scalars().first()
    assert t is not None
    return t


@pytest.mark.parametrize("forum", [False, True], ids=["plain-group", "forum"])
async def test_whole_loop(make_tg: MakeTg, forum: bool) -> None:
    tg: Tg = await make_tg(forum=forum)
    ann = tg.user("Ann", 5001, username="ann")
    bob = tg.user("Bob", 9001)

    await tg.say(ann, "/start")
    assert "support" in tg.transcript(ann).lower()
    await tg.say(ann, "I forgot my password")
    assert "Reset a forgotten password" in tg.transcript(ann)
    await tg.escalate(ann)
    t = await _ticket(tg)
    number = f"FL-{t.number}"
    assert number in tg.last(ann)

    card = tg.card()
    assert number in card.text and "Take" in str(card.buttons())
    assert "I forgot my password" in card.text
    if forum:
        topic = tg.fake.topics[L2][thread_of(card)]
        assert number in topic.name
    thread = card.thread_id if forum else None

    # Take (the card's button): the user hears about it, the card shows the owner.
    tg.fake.press(bob, card, "Take")
    await tg.step()
    assert "Bob" in tg.last(ann)
    assert "Bob" in tg.card().text and "in progress" in tg.card().text
    assert tg.fake.answered, "the press was not answered"
    if forum:
        assert "in progress" in tg.fake.topics[L2][thread_of(card)].name

    # Bob's reply in the thread reaches Ann, with his name.
    await tg.in_thread(bob, "Please try the reset link again, I have unlocked the account")
    assert "Bob: Please try the reset link again" in tg.last(ann)

    # Ann's answer lands in the ticket's thread.
    await tg.say(ann, "Still not working, same error")
    post = tg.fake.sent(L2)[-1] if not forum else tg.fake.sent(L2, thread_id=thread)[-1]
    assert "Still not working" in post.text and "Ann" in post.text
    if not forum:
        assert post.reply_to == card.message_id
    else:
        assert post.thread_id == card.thread_id

    # An internal note stays internal.
    before = len(tg.texts(ann))
    await tg.in_thread(bob, "// user is on the Free tier, no phone support")
    await tg.in_thread(bob, "/note checked the logs, lockout expired")
    assert len(tg.texts(ann)) == before
    assert not any("Free tier" in t or "checked the logs" in t for t in tg.texts(ann))

    # Bob's reply to Ann's relayed post also finds the ticket (reply threading).
    await tg.in_thread(bob, "Try now please", reply_to=post.message_id)
    assert "Try now please" in tg.last(ann)

    # Resolve from the card, then CSAT.
    tg.fake.press(bob, tg.card(), "Resolve")
    await tg.step()
    assert (await _ticket(tg)).status == "resolved"
    assert "resolved" in tg.card().text
    await tg.press(ann, "5")
    assert (await _ticket(tg)).csat == 5
    assert "★★★★★" in tg.card().text
    # No stale keyboards: every pressed keyboard in Ann's chat was removed.
    assert all(not m.buttons() for m in tg.fake.sent(ann.id))
