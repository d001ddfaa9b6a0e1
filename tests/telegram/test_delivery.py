"""Delivery: Telegram's refusals and limits map onto retries, and nothing is lost."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from bot.outbox import OutboxItem
from bot.storage.models import Outbox, Ticket, User
from tests.telegram.conftest import L2, MakeTg, Tg, thread_of


async def _rows(tg: Tg, status: str) -> list[Outbox]:
    async with tg.app.db.transaction() as s:
        return list((await s.execute(select(Outbox).where(Outbox.status == status))).scalars())


async def test_429_is_retried_after_retry_after_and_delivered_once(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg()
    ann = tg.user("Ann", 5001)
    tg.fake.fail_next("sendMessage", 429, retry_after=7, chat_id=ann.id)
    await tg.say(ann, "/start")
    assert tg.texts(ann) == []
    [row] = await _rows(tg, "pending")
    assert row.next_attempt_at.replace(tzinfo=None) == (
        tg.clock.now() + timedelta(seconds=7)
    ).replace(tzinfo=None)
    assert "retry" in (row.last_error or "").lower()
    await tg.dispatcher.drain()
    assert tg.texts(ann) == []  # not before retry_after
    tg.clock.advance(timedelta(seconds=7))
    await tg.dispatcher.drain()
    assert len(tg.texts(ann)) == 1 and "support" in tg.last(ann).lower()


async def test_5xx_and_network_errors_are_retried(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg()
    ann = tg.user("Ann", 5001)
    tg.fake.fail_next("sendMessage", 500, chat_id=ann.id, times=2)
    await tg.say(ann, "/start")
    for _ in range(3):
        tg.clock.advance(timedelta(seconds=5))
        await tg.dispatcher.drain()
    assert len(tg.texts(ann)) == 1
    assert await _rows(tg, "failed") == []


async def test_bad_markup_falls_back_to_plain_text(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg()
    ann = tg.user("Ann", 5001)
    tg.fake.fail_next("sendMessage", 400, "Bad Request: can't parse entities: boom", chat_id=ann.id)
    await tg.say(ann, "/start")
    assert len(tg.texts(ann)) == 1


async def test_403_is_permanent_and_unreachable(make_tg: MakeTg) -> None:
    """The sender's half of the 403 contract, independent of the dispatcher."""
    tg: Tg = await make_tg()
    ann = tg.user("Ann", 5001)
    await tg.say(ann, "/start")
    tg.fake.block(ann.id)
    item = OutboxItem(
        id=999,
        channel="telegram",
        target=str(ann.id),
        kind="message",
        payload={"text": "hi"},
        attempts=0,
    )
    result = await tg.channel.sender.send(item)
    assert not result.ok and result.permanent and result.unreachable
    assert "blocked" in result.error
    # A desk group that kicked the bot is retried instead: an admin can add it back.
    tg.fake.fail_next("sendMessage", 403, "Forbidden: bot was kicked from the supergroup chat")
    item = OutboxItem(
        id=1000,
        channel="telegram",
        target=str(L2),
        kind="notify",
        payload={"text": "hi"},
        attempts=0,
    )
    result = await tg.channel.sender.send(item)
    assert not result.ok and not result.permanent


async def test_403_marks_the_user_unreachable_on_the_card(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg()
    ann = tg.user("Ann", 5001)
    bob = tg.user("Bob", 9001)
    await tg.escalate(ann)
    tg.fake.block(ann.id)
    await tg.in_thread(bob, "Hello Ann, are you there?")
    [failed] = await _rows(tg, "failed")
    assert failed.target == str(ann.id) and "blocked" in (failed.last_error or "")
    async with tg.app.db.transaction() as s:
        user = (await s.execute(select(User).where(User.external_id == str(ann.id)))).scalar_one()
    assert user.unreachable
    assert "cannot be reached" in tg.card().text or "⛔" in tg.card().text
    assert any("cannot be reached" in t for t in tg.fake.texts(L2))


async def test_long_consultant_reply_is_split(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg()
    ann = tg.user("Ann", 5001)
    bob = tg.user("Bob", 9001)
    await tg.escalate(ann)
    before = len(tg.texts(ann))
    long = ("Step: do this & that <carefully>. " * 300).strip()  # ~10k characters
    await tg.in_thread(bob, long)
    got = tg.texts(ann)[before:]
    assert len(got) == 3
    joined = " ".join(got)
    assert "<carefully>" in joined and joined.count("Step:") == 300


async def test_deleted_topic_gets_a_new_one_and_loses_nothing(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg(forum=True)
    ann = tg.user("Ann", 5001)
    await tg.escalate(ann)
    old = tg.card()
    tg.fake.delete_topic(L2, thread_of(old))
    await tg.say(ann, "Any news?")
    topics = tg.fake.topics[L2]
    assert len(topics) == 2
    new_thread = max(topics)
    in_new = tg.fake.texts(L2, thread_id=new_thread)
    assert any("FL-" in t and "Problem" in t for t in in_new), in_new  # the card again
    assert any("Any news?" in t for t in in_new)
    # A consultant answering in the new topic reaches Ann.
    bob = tg.user("Bob", 9001)
    await tg.in_thread(bob, "Working on it", card=tg.card())
    assert "Working on it" in tg.last(ann)


async def test_closed_topic_gets_a_new_one(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg(forum=True)
    ann = tg.user("Ann", 5001)
    await tg.escalate(ann)
    tg.fake.close_topic(L2, thread_of(tg.card()))
    await tg.say(ann, "Hello?")
    assert len(tg.fake.topics[L2]) == 2
    assert any("Hello?" in t for t in tg.fake.texts(L2, thread_id=max(tg.fake.topics[L2])))


async def test_deleted_card_is_posted_anew(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg()
    ann = tg.user("Ann", 5001)
    bob = tg.user("Bob", 9001)
    await tg.escalate(ann)
    old = tg.card()
    tg.fake.delete_message(L2, old.message_id)
    tg.fake.press(bob, old, "Take")  # the button still works from a cached client
    await tg.step()
    new = tg.card()
    assert new.message_id != old.message_id and "Bob" in new.text
    await tg.in_thread(bob, "On it", card=new)
    assert "On it" in tg.last(ann)


async def test_forum_without_topic_rights_falls_back_to_a_card(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg(forum=True)
    tg.fake.fail_next("createForumTopic", 400, "Bad Request: not enough rights to create a topic")
    ann = tg.user("Ann", 5001)
    bob = tg.user("Bob", 9001)
    await tg.escalate(ann)
    card = tg.card()
    assert card.thread_id is None and tg.fake.topics.get(L2, {}) == {}
    await tg.in_thread(bob, "Hi from General", card=card, reply_to=card.message_id)
    assert "Hi from General" in tg.last(ann)
    async with tg.app.db.transaction() as s:
        assert (await s.execute(select(Ticket))).scalar_one().owner_name == "Bob"


async def test_group_without_topics_a_reply_to_a_consultants_message_finds_the_ticket(
    make_tg: MakeTg,
) -> None:
    """In a group without topics a ticket's thread is a chain of replies: a reply to a
    consultant's message in it (not only to the card) belongs to the ticket too."""
    tg: Tg = await make_tg()
    ann, bob, cid = tg.user("Ann", 5001), tg.user("Bob", 9001), tg.user("Cid", 9002)
    await tg.escalate(ann)
    first = await tg.in_thread(bob, "Hello Ann, which browser do you use?")
    await tg.in_thread(bob, "And which version?", reply_to=first.message_id)
    texts = tg.fake.texts(ann.id)
    assert any("which browser" in t for t in texts) and any("which version" in t for t in texts)
    # A colleague's reply in the chain reaches the desk too: Bob owns the ticket, so Cid is
    # told so, not ignored.
    notices = len(tg.fake.sent(L2))
    await tg.in_thread(cid, "I can take it", reply_to=first.message_id)
    await tg.dispatcher.drain()
    assert any("Bob" in t for t in tg.fake.texts(L2)[notices:])
    assert not any("I can take it" in t for t in tg.fake.texts(ann.id))
