"""Intake: what each kind of Telegram update becomes, and that each is committed once."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from bot.storage.models import ProcessedEvent, Ticket, TicketMessage
from tests.fakes.telegram_api import BOT_ID
from tests.telegram.conftest import FOREIGN, L2, MakeTg, Tg, thread_of


async def _ticket(tg: Tg) -> Ticket:
    async with tg.app.db.transaction() as s:
        t = (await s.execute(select(Ticket).order_by(Ticket.id.desc()))).scalars().first()
    assert t is not None
    return t


async def test_commands_are_registered_in_both_languages(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg()
    langs = {c.get("language_code") for c in tg.fake.commands}
    assert {"en", "ru", None} <= langs
    user_cmds = {c["command"] for c in tg.fake.commands[0]["commands"]}
    assert user_cmds == {"start", "help", "new", "status", "cancel", "lang", "forget"}
    desk = [c for c in tg.fake.commands if c.get("scope", {}).get("type") == "chat"]
    assert desk and desk[0]["scope"]["chat_id"] == L2
    assert tg.fake.called("deleteWebhook"), "polling mode drops a stale webhook"


async def test_album_arrives_whole(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg()
    ann = tg.user("Ann", 5001)
    await tg.escalate(ann)
    before = len(tg.fake.called("sendMediaGroup"))
    tg.fake.send_album(ann, 3, caption="screens of the <error> & more")
    await tg.step()
    groups = tg.fake.called("sendMediaGroup")[before:]
    assert len(groups) == 1, "one album in, one album out"
    media = groups[0].params["media"]
    assert len(media) == 3 and all(m["type"] == "photo" for m in media)
    assert groups[0].params["chat_id"] == L2
    album = [m for m in tg.fake.sent(L2) if m.media_group_id]
    assert "screens of the <error> & more" in album[0].text  # the caption, escaped
    async with tg.app.db.transaction() as s:
        tm = (
            (await s.execute(select(TicketMessage).order_by(TicketMessage.id.desc())))
            .scalars()
            .first()
        )
    assert tm is not None and len(tm.attachments) == 3


async def test_album_split_across_polls_is_still_one_event(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg()
    ann = tg.user("Ann", 5001)
    await tg.escalate(ann)
    parts = tg.fake.send_album(ann, 2, caption="part one")
    # The batch ends with the album: it is left unconfirmed while more parts may come.
    await tg.channel.poll_once(flush_albums=False)
    assert tg.channel.offset == int(min(u["update_id"] for u in tg.fake.updates))
    tg.fake.send_media(ann, "photo", media_group_id=parts[0].media_group_id)
    tg.channel._album_seen = {k: v - 10 for k, v in tg.channel._album_seen.items()}
    await tg.channel.poll_once(flush_albums=False)
    await tg.dispatcher.drain()
    groups = tg.fake.called("sendMediaGroup")
    assert len(groups) == 1 and len(groups[0].params["media"]) == 3


async def test_user_text_is_escaped_everywhere(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg()
    ann = tg.user("Ann <b>&", 5001)
    await tg.escalate(ann, details="<b>bold</b> & <script>alert(1)</script>")
    card = tg.card()
    assert "<b>bold</b> & <script>alert(1)</script>" in card.text  # shown literally
    assert "&lt;b&gt;bold&lt;/b&gt; &amp;" in (card.html or "")
    assert "Ann <b>&" in card.text
    await tg.say(ann, "a <i>b</i> & c")
    assert tg.fake.sent(L2)[-1].text.endswith("a <i>b</i> & c")


async def test_a_nul_character_from_a_consultant_is_stored_and_relayed(
    make_tg: MakeTg,
) -> None:
    """PostgreSQL refuses U+0000 in text: the event used to fail until it was skipped."""
    tg: Tg = await make_tg(forum=True)
    ann, bob = tg.user("Ann", 5001), tg.user("Bob", 9001)
    await tg.escalate(ann)
    await tg.press(bob, "Take", chat_id=L2)
    await tg.in_thread(bob, "try \x00 again")
    assert tg.last(ann) == "Bob: try \x00 again"
    async with tg.app.db.transaction() as s:
        texts = (await s.execute(select(TicketMessage.text))).scalars().all()
    assert "try \ufffd again" in texts


async def test_unsupported_messages_get_a_helpful_reply(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg()
    ann = tg.user("Ann", 5001)
    for kind, word in (
        ("sticker", "sticker"),
        ("location", "location"),
        ("contact", "contact"),
        ("poll", "poll"),
    ):
        tg.fake.send_media(ann, kind)
        await tg.step()
        assert word in tg.last(ann).lower(), tg.last(ann)


async def test_edits_reach_l2_as_edits(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg()
    ann = tg.user("Ann", 5001)
    await tg.escalate(ann)
    msg = await tg.say(ann, "the code is 1234")
    tg.fake.edit_text(ann, msg, "the code is 4321")
    await tg.step()
    last = tg.fake.sent(L2)[-1]
    assert "edited" in last.text and "4321" in last.text


async def test_documents_and_voice_become_attachments(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg()
    ann = tg.user("Ann", 5001)
    await tg.escalate(ann)
    tg.fake.send_media(ann, "document", name="log.txt", caption="the log")
    await tg.step()
    tg.fake.send_media(ann, "voice")
    await tg.step()
    docs = tg.fake.called("sendDocument")
    voices = tg.fake.called("sendVoice")
    assert docs and docs[-1].params["chat_id"] == L2 and "the log" in docs[-1].params["caption"]
    assert voices and voices[-1].params["chat_id"] == L2


async def test_duplicate_update_is_processed_once(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg()
    ann = tg.user("Ann", 5001)
    tg.fake.send_text(ann, "/start")
    update = dict(tg.fake.updates[-1])
    await tg.step()
    assert len(tg.texts(ann)) == 1
    # Telegram delivers it again (say we died after the commit, before confirming).
    tg.fake.updates.append(update)
    tg.channel.offset = update["update_id"]
    await tg.step()
    assert len(tg.texts(ann)) == 1
    # The same press twice (a double tap that Telegram sends twice): one effect.
    await tg.say(ann, "I forgot my password")
    msg = tg.fake.with_buttons(ann.id)
    press = tg.fake.press(ann, msg, "Didn't help")
    tg.fake.updates.append(dict(press))
    await tg.step()
    texts = tg.texts(ann)
    assert sum("Step 1" in t or "step 1" in t.lower() for t in texts) <= 1


async def test_update_is_committed_before_it_is_confirmed(
    make_tg: MakeTg, monkeypatch: pytest.MonkeyPatch
) -> None:
    tg: Tg = await make_tg()
    ann = tg.user("Ann", 5001)
    real = tg.app.handle_user
    calls: list[str] = []

    async def flaky(ev: Any) -> Any:
        calls.append(ev.event_id)
        if len(calls) == 1:
            raise RuntimeError("database went away")
        return await real(ev)

    monkeypatch.setattr(tg.app, "handle_user", flaky)
    first = tg.fake.send_text(ann, "/start")
    assert first
    uid = tg.fake.updates[-1]["update_id"]
    await tg.channel.poll_once()
    assert tg.channel.offset == uid  # not past the failed update
    await tg.channel.poll_once()  # the same update is fetched again, not lost
    await tg.dispatcher.drain()
    assert calls == [f"u{uid}", f"u{uid}"]
    assert len(tg.texts(ann)) == 1
    await tg.channel.poll_once()
    assert tg.fake.confirmed == uid + 1


async def test_groups_that_are_not_the_desk_are_ignored_politely(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg()
    eve = tg.user("Eve", 7001)
    tg.fake.add_group(FOREIGN, "random group")
    tg.fake.send_text(eve, "hello everyone", chat_id=FOREIGN)
    await tg.step()
    assert tg.fake.sent(FOREIGN) == []
    tg.fake.send_text(eve, "/start@firstline_bot", chat_id=FOREIGN)
    tg.fake.send_text(eve, "/help@firstline_bot", chat_id=FOREIGN)
    tg.fake.send_text(eve, "/start@other_bot", chat_id=FOREIGN)
    await tg.step()
    notes = tg.fake.sent(FOREIGN)
    assert len(notes) == 1 and "private" in notes[0].text
    async with tg.app.db.transaction() as s:
        n = (await s.execute(select(func.count()).select_from(ProcessedEvent))).scalar_one()
    assert n == 0  # nothing reached the app


async def test_unknown_updates_are_ignored(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg()
    tg.fake.queue(
        "message_reaction",
        {
            "chat": {"id": 1, "type": "private"},
            "message_id": 1,
            "date": 0,
            "old_reaction": [],
            "new_reaction": [],
        },
    )
    tg.fake.queue(
        "channel_post",
        {"message_id": 1, "date": 0, "chat": {"id": -5, "type": "channel"}, "text": "x"},
    )
    await tg.step()
    assert tg.fake.confirmed >= 3


async def test_non_consultant_is_refused(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg(consultants=[9001])
    ann = tg.user("Ann", 5001)
    eve = tg.user("Eve", 9002)
    bob = tg.user("Bob", 9001)
    await tg.escalate(ann)
    card = tg.card()
    tg.fake.press(eve, card, "Take")
    await tg.step()
    answer = list(tg.fake.answered.values())[-1]
    assert answer.get("show_alert") is True and answer.get("text")
    assert (await _ticket(tg)).owner_key is None
    before = len(tg.texts(ann))
    await tg.in_thread(eve, "I am not support but here is a tip")
    assert len(tg.texts(ann)) == before  # not relayed
    assert any("consultant" in t.lower() for t in tg.fake.texts(L2))
    tg.fake.press(bob, tg.card(), "Take")
    await tg.step()
    assert (await _ticket(tg)).owner_name == "Bob"


async def test_forged_callbacks_are_refused(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg()
    ann = tg.user("Ann", 5001)
    bob = tg.user("Bob", 9001)
    await tg.escalate(ann)
    card = tg.card()
    t = await _ticket(tg)
    for data in (f"fl:c:{t.number}::AAAAAAAAAAAAAAAA", f"fl:r:{t.number}:", "1|urg:high", "x"):
        tg.fake.press_data(bob, card, data)
        await tg.step()
        answer = list(tg.fake.answered.values())[-1]
        assert "not valid" in (answer.get("text") or ""), data
    real = card.buttons()[0]["callback_data"]
    tampered = real.replace(f":{t.number}:", f":{t.number + 1}:")
    tg.fake.press_data(bob, card, tampered)
    await tg.step()
    assert (await _ticket(tg)).owner_key is None
    # A user replaying another chat's button data gets the stale-button answer.
    tg.fake.press_data(ann, tg.fake.last(ann.id), real)
    await tg.step()
    assert (await _ticket(tg)).owner_key is None


async def test_stale_user_button_gets_a_polite_answer(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg()
    ann = tg.user("Ann", 5001)
    await tg.say(ann, "/start")
    greeting = tg.fake.with_buttons(ann.id)
    data = greeting.buttons()[0]["callback_data"]
    await tg.say(ann, "/lang")
    assert not tg.fake.messages[(ann.id, greeting.message_id)].buttons()  # retired
    tg.fake.press_data(ann, greeting, data)  # a client that still shows the old keyboard
    await tg.step()
    answer = list(tg.fake.answered.values())[-1]
    assert answer.get("text")  # "this button is outdated"-style toast


async def test_priority_keyboard_and_desk_commands(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg(forum=True)
    ann = tg.user("Ann", 5001)
    bob = tg.user("Bob", 9001)
    await tg.escalate(ann)
    card = tg.card()
    tg.fake.press(bob, card, "Priority")
    await tg.step()
    card = tg.fake.messages[(L2, card.message_id)]
    assert [b["text"].split()[-1] for b in card.buttons()][:4] == [
        "critical",
        "high",
        "normal",
        "low",
    ] or any("critical" in b["text"] for b in card.buttons())
    tg.fake.press(bob, card, "critical")
    await tg.step()
    assert (await _ticket(tg)).priority == "critical"
    assert any("Take" in b["text"] for b in tg.card().buttons())  # the card's own keyboard is back
    await tg.in_thread(bob, "/take")
    assert (await _ticket(tg)).owner_name == "Bob"
    await tg.in_thread(bob, "/wait Which browser do you use?")
    t = await _ticket(tg)
    assert t.status == "waiting" and "Which browser" in tg.fake.texts(ann.id)[-2] + tg.last(ann)
    await tg.say(ann, "Firefox")
    await tg.in_thread(bob, "/resolve")
    assert (await _ticket(tg)).status == "resolved"
    assert "resolved" in tg.fake.topics[L2][thread_of(tg.card())].name


async def test_consultant_media_is_relayed_with_name(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg()
    ann = tg.user("Ann", 5001)
    bob = tg.user("Bob", 9001)
    await tg.escalate(ann)
    card = tg.card()
    photo = tg.fake.send_media(
        bob, "photo", caption="see the arrow", chat_id=L2, reply_to=card.message_id
    )
    await tg.step()
    photos = tg.fake.called("sendPhoto")
    assert photos and photos[-1].params["chat_id"] == ann.id
    assert photos[-1].params["photo"] == photo.file_id
    assert "Bob: see the arrow" in "\n".join(tg.texts(ann))


async def test_chatter_in_the_desk_is_ignored(make_tg: MakeTg) -> None:
    tg: Tg = await make_tg(consultants=[9001])
    eve = tg.user("Eve", 9002)
    tg.fake.send_text(eve, "lunch anyone?", chat_id=L2)
    await tg.step()
    assert tg.fake.sent(L2) == []
    assert BOT_ID
