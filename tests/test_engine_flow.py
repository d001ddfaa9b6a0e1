"""End-to-end dialog flows through the in-memory channel and the real engine."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from bot.app import App
from bot.clock import FakeClock
from bot.storage.models import (
    ChecklistAnswer,
    Conversation,
    Event,
    KbImpression,
    Outbox,
    Ticket,
    TicketMessage,
)
from handlers.memory import MemoryChannel


async def _ticket(app: App) -> Ticket:
    async with app.db.transaction() as s:
        return (await s.execute(select(Ticket).order_by(Ticket.id.desc()))).scalars().first()  # type: ignore[return-value]


async def _escalate(mem: MemoryChannel, user: str = "ann") -> Ticket:
    """Drive a user from a question through KB and checklist to a ticket."""
    await mem.command(user, "start")
    await mem.say(user, "I forgot my password")
    # Earlier users' "didn't help" verdicts may have demoted the article to a suggestion.
    labels = [b["label"] for b in mem.messages(user)[-1].buttons()]
    await mem.press(user, "None of these" if "None of these" in labels else "Didn't help")
    for _ in range(12):
        last = mem.messages(user)[-1]
        labels = [b["label"] for b in last.buttons()]
        if any("Done" in lbl for lbl in labels):
            break
        # The last option of a step is the "still broken" one in the bundled checklists.
        choice = last.buttons()[-1]
        await mem.press_data(user, choice["data"])
    await mem.say(user, "Error 0x42 when I log in since this morning")
    await mem.press(user, "Done")
    await mem.press(user, "Blocks my work")
    return await _ticket(mem.app)


async def test_kb_answer_that_helped_is_deflected(mem: MemoryChannel, app: App) -> None:
    await mem.command("ann", "start")
    assert "support bot" in mem.transcript("ann")
    await mem.say("ann", "I forgot my password")
    assert "Reset a forgotten password" in mem.transcript("ann")
    assert "Did this solve" in mem.last("ann")
    await mem.press("ann", "Yes, solved")
    assert "glad" in mem.last("ann")
    async with app.db.transaction() as s:
        conv = (await s.execute(select(Conversation))).scalar_one()
        imp = (await s.execute(select(KbImpression))).scalar_one()
    assert conv.outcome == "solved_kb"
    assert imp.article_id == "en-account-reset-password" and imp.verdict == "helped"


async def test_not_helped_leads_into_checklist_then_ticket(mem: MemoryChannel, app: App) -> None:
    ticket = await _escalate(mem)
    assert ticket is not None
    assert ticket.status == "open" and ticket.priority == "high"
    assert ticket.category == "account"
    assert ticket.first_response_due is not None and ticket.resolution_due is not None
    assert f"FL-{ticket.number}" in mem.last("ann")
    async with app.db.transaction() as s:
        answers = (await s.execute(select(func.count()).select_from(ChecklistAnswer))).scalar_one()
    assert answers >= 3
    cards = [d for d in mem.l2() if d.kind == "ticket_card"]
    assert cards, "the L2 desk got no card"
    card = cards[0].card
    assert card.problem.startswith("I forgot my password")
    assert any("didn't help" in v for _, v in card.kb)
    assert len(card.checklist) >= 3
    assert any("0x42" in d for d in card.details)


async def test_full_loop_claim_note_wait_reply_resolve_csat(
    mem: MemoryChannel, app: App, clock: FakeClock
) -> None:
    ticket = await _escalate(mem)
    number = f"FL-{ticket.number}"
    await mem.agent("agent_bob", "claim", number)
    assert "Agent_Bob is now working" in mem.last("ann")
    before = len(mem.messages("ann"))
    await mem.agent("agent_bob", "message", number, "//check the auth logs first")
    assert len(mem.messages("ann")) == before, "an internal note reached the user"
    clock.advance(timedelta(minutes=5))
    await mem.agent("agent_bob", "wait", number, "Which browser do you use?")
    assert "Which browser" in mem.transcript("ann")
    async with app.db.transaction() as s:
        tk = await s.get(Ticket, ticket.id)
        assert tk is not None and tk.status == "waiting"
        assert tk.first_response_due is None  # answered: the first response was the question
        assert tk.first_response_at == clock.now()
    clock.advance(timedelta(hours=3))
    await mem.say("ann", "Firefox 120")
    relayed = [d for d in mem.l2() if d.kind == "ticket_post" and d.payload.get("role") == "user"]
    assert relayed and relayed[-1].text == "Firefox 120"
    async with app.db.transaction() as s:
        tk = await s.get(Ticket, ticket.id)
        assert tk is not None and tk.status == "in_progress"
        assert tk.next_response_due is not None
    await mem.agent("agent_bob", "reply", number, "Clear the cookies, please")
    assert "Agent_Bob: Clear the cookies" in mem.last("ann")
    await mem.agent("agent_bob", "resolve", number)
    assert "rate" in mem.last("ann")
    await mem.press("ann", "5")
    assert "Thank you" in mem.last("ann")
    async with app.db.transaction() as s:
        tk = await s.get(Ticket, ticket.id)
        notes = (
            (await s.execute(select(TicketMessage).where(TicketMessage.direction == "note")))
            .scalars()
            .all()
        )
        kinds = [
            e.kind
            for e in (await s.execute(select(Event).where(Event.ticket_id == ticket.id))).scalars()
        ]
    assert tk is not None and tk.status == "resolved" and tk.csat == 5
    assert [n.text for n in notes] == ["check the auth logs first"]
    for kind in (
        "ticket_opened",
        "ticket_claimed",
        "internal_note",
        "waiting_for_customer",
        "customer_replied",
        "agent_reply",
        "ticket_resolved",
        "csat",
    ):
        assert kind in kinds, kind


async def test_user_writes_after_resolution_reopens_within_window(
    mem: MemoryChannel, app: App, clock: FakeClock
) -> None:
    ticket = await _escalate(mem)
    number = f"FL-{ticket.number}"
    await mem.agent("agent_bob", "reply", number, "Try now")
    await mem.agent("agent_bob", "resolve", number)
    clock.advance(timedelta(hours=1))
    await mem.say("ann", "It broke again")
    assert "reopened" in mem.last("ann")
    tk = await _ticket(app)
    assert tk.status == "in_progress" and tk.reopen_count == 1


async def test_user_writes_after_window_starts_new_conversation(
    mem: MemoryChannel, app: App, clock: FakeClock
) -> None:
    ticket = await _escalate(mem)
    number = f"FL-{ticket.number}"
    await mem.agent("agent_bob", "resolve", number, "Fixed on our side")
    clock.advance(app.settings.escalation.reopen_window + timedelta(minutes=1))
    await mem.say("ann", "how do I download an invoice")
    tk = await _ticket(app)
    assert tk.status == "resolved" and tk.reopen_count == 0
    assert "is reopened" not in mem.transcript("ann")
    async with app.db.transaction() as s:
        convs = (await s.execute(select(Conversation).order_by(Conversation.id))).scalars().all()
    assert len(convs) == 2 and convs[-1].problem == "how do I download an invoice"


async def test_duplicate_event_is_processed_once(mem: MemoryChannel, app: App) -> None:
    await mem.say("ann", "I forgot my password", event_id="tg-1")
    n = len(mem.messages("ann"))
    res = await mem.say("ann", "I forgot my password", event_id="tg-1")
    assert res.duplicate
    assert len(mem.messages("ann")) == n
    async with app.db.transaction() as s:
        assert (await s.execute(select(func.count()).select_from(Conversation))).scalar_one() == 1


async def test_stale_and_forged_buttons_are_refused(mem: MemoryChannel, app: App) -> None:
    await mem.say("ann", "I forgot my password")
    old = mem.messages("ann")[-1].buttons()[0]["data"]
    await mem.press("ann", "Didn't help")
    res = await mem.press_data("ann", old)
    assert res.refused and res.ack and "no longer active" in res.ack
    res = await mem.press_data("ann", "999|kb:yes")
    assert res.refused
    # Another user's ticket id in button data does not switch ann to it.
    await _escalate(mem, "bob")
    bob_ticket = await _ticket(app)
    await mem.command("ann", "status")
    nonce = mem.messages("ann")[-1]
    async with app.db.transaction() as s:
        from bot.storage.models import Chat

        chat = (await s.execute(select(Chat).where(Chat.chat_key == "ann"))).scalar_one()
    await mem.press_data("ann", f"{chat.prompt_nonce}|tk:{bob_ticket.id}")
    assert "no longer active" in mem.last("ann")
    assert nonce is not None


async def test_cancel_language_unsupported_and_empty(mem: MemoryChannel) -> None:
    await mem.say("ivan", "где скачать счёт", lang="ru")
    assert any("\u0400" <= ch <= "\u04ff" for ch in mem.last("ivan")), "no Russian reply"
    await mem.command("ivan", "cancel", lang="ru")
    assert "Отменено" in mem.last("ivan")
    await mem.command("ivan", "lang", "en", lang="ru")
    assert "English" in mem.last("ivan")
    await mem.say("ivan", "   ", lang="ru")
    assert "empty" in mem.last("ivan")
    await mem.say("ivan", "x" * 100_000, lang="ru")
    assert "very long" in mem.transcript("ivan")


async def test_category_button_starts_checklist_and_fixed_is_deflection(
    mem: MemoryChannel, app: App
) -> None:
    await mem.command("ann", "start")
    await mem.press("ann", "Billing")
    assert "Step 1 of" in mem.last("ann")
    await mem.press("ann", "Fixed it")
    assert "glad" in mem.last("ann")
    async with app.db.transaction() as s:
        conv = (await s.execute(select(Conversation))).scalar_one()
    assert conv.outcome == "solved_checklist"


async def test_non_consultant_is_refused(mem: MemoryChannel, app: App) -> None:
    ticket = await _escalate(mem)
    res = await mem.agent("mallory", "claim", f"FL-{ticket.number}", member=False)
    assert res.refused
    assert (await _ticket(app)).owner_key is None
    notices = [d for d in mem.l2() if d.kind == "agent_notice"]
    assert notices and "Only support consultants" in notices[-1].text


async def test_second_claim_is_told_who_owns_it(mem: MemoryChannel) -> None:
    ticket = await _escalate(mem)
    number = f"FL-{ticket.number}"
    await mem.agent("agent_bob", "claim", number)
    res = await mem.agent("agent_eve", "claim", number)
    assert res.refused and res.ack and "Agent_Bob" in res.ack


async def test_outbox_rows_commit_with_the_change(mem: MemoryChannel, app: App) -> None:
    await mem.say("ann", "I forgot my password")
    async with app.db.transaction() as s:
        statuses = (await s.execute(select(Outbox.status))).scalars().all()
    assert statuses and set(statuses) == {"sent"}


async def test_resolved_ticket_closes_after_the_reopen_window(
    mem: MemoryChannel, app: App, clock: FakeClock
) -> None:
    ticket = await _escalate(mem)
    await mem.agent("agent_bob", "resolve", f"FL-{ticket.number}", "Done on our side")
    clock.advance(app.settings.escalation.reopen_window - timedelta(minutes=1))
    await app.timers.sweep()
    assert (await _ticket(app)).status == "resolved"
    clock.advance(timedelta(minutes=2))
    await app.timers.sweep()
    assert (await _ticket(app)).status == "closed"
    # Writing now is a new problem, not a reopen.
    await mem.say("ann", "my vpn is slow")
    assert (await _ticket(app)).reopen_count == 0


async def test_out_of_hours_escalation_tells_the_eta_in_the_users_time_zone(
    app: App, clock: FakeClock
) -> None:
    from datetime import UTC, datetime

    from bot.domain import UserEvent, UserRef

    mem = MemoryChannel(app)
    # Saturday 2026-01-17 12:00 UTC: the free tier's Moscow office is closed.
    clock.set(datetime(2026, 1, 17, 12, 0, tzinfo=UTC))
    user = UserRef(
        "memory", "vlad", display_name="Vlad", language_code="en", timezone="Asia/Vladivostok"
    )
    n = 0

    async def send(kind: str, **kw: str) -> None:
        nonlocal n
        n += 1
        await app.handle_user(UserEvent("memory", f"tz{n}", user, "vlad", kind, **kw))  # type: ignore[arg-type]
        await mem.deliver()

    await send("command", command="start")
    await mem.press("vlad", "Billing")
    for _ in range(10):
        buttons = mem.messages("vlad")[-1].buttons()
        if any("Done" in b["label"] for b in buttons):
            break
        await mem.press_data("vlad", buttons[-1]["data"])
    await mem.press("vlad", "Done")
    await mem.press("vlad", "Normal")
    text = mem.last("vlad")
    # Free/normal: 16 business hours from Monday 09:00 Moscow -> Tuesday 16:00 Moscow,
    # which is Tuesday 23:00 in Vladivostok (UTC+10).
    assert "engineers are off now" in text
    assert "2026-01-20 23:00" in text and "+10" in text


async def test_a_bug_never_reaches_the_chat_and_the_message_is_kept(
    mem: MemoryChannel, app: App, monkeypatch: object
) -> None:
    import pytest

    def boom(*_a: object, **_k: object) -> object:
        raise RuntimeError("matcher exploded")

    mp = pytest.MonkeyPatch()
    mp.setattr(app.kb, "search", boom)
    try:
        res = await mem.say("ann", "my text that must not be lost", lang="ru")
    finally:
        mp.undo()
    assert res.refused
    assert "Извините" in mem.last("ann") and "Traceback" not in mem.transcript("ann")
    async with app.db.transaction() as s:
        ev = (await s.execute(select(Event).where(Event.kind == "intake_failed"))).scalar_one()
    assert ev.data["text"] == "my text that must not be lost"
    # The event was not claimed: a re-delivery is processed for real.
    await mem.say("ann", "I forgot my password")
    assert "Reset a forgotten password" in mem.transcript("ann")


async def test_a_blocked_user_who_writes_again_is_reachable(mem: MemoryChannel, app: App) -> None:
    from bot.outbox import SendResult
    from bot.storage.models import User

    await mem.say("ann", "hello")
    mem.sender.fail_next["ann"] = [
        SendResult(ok=False, permanent=True, unreachable=True, error="403: bot was blocked")
    ]
    await mem.command("ann", "help")
    async with app.db.transaction() as s:
        user = (await s.execute(select(User).where(User.external_id == "ann"))).scalar_one()
    assert user.unreachable
    await mem.say("ann", "I forgot my password")
    async with app.db.transaction() as s:
        user = (await s.execute(select(User).where(User.external_id == "ann"))).scalar_one()
    assert not user.unreachable and "Reset a forgotten password" in mem.transcript("ann")
