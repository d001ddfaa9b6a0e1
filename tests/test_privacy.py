"""``/forget`` and the retention period: personal data gone, SLA statistics unchanged."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, String, Text, select

from bot import inbox
from bot.app import App
from bot.clock import FakeClock
from bot.domain import Attachment, UserRef
from bot.i18n import t
from bot.privacy import ERASED, apply_retention
from bot.storage.models import Base, Conversation, Outbox, ProcessedEvent, Ticket, User
from escalation.report import compute_report
from escalation.texts import lt
from handlers.memory import CHANNEL, MemoryChannel
from tests.test_engine_flow import _escalate

MARK = {"ann": "Qz7annmark", "bob": "Qz7bobmark", "cid": "Qz7cidmark"}


class MarkedChannel(MemoryChannel):
    """Users whose names, usernames and time zones carry a unique marker."""

    @staticmethod
    def user(name: str, lang: str = "en") -> UserRef:
        """A user identity with personal data worth erasing."""
        mark = MARK.get(name, name)
        return UserRef(
            CHANNEL,
            name,
            display_name=f"{name.title()} {mark}name",
            username=f"{mark}user",
            language_code=lang,
            timezone="Europe/Moscow",
        )


async def _session(mem: MarkedChannel, name: str, clock: FakeClock) -> Ticket:
    """A user with a bot-solved problem, then a ticket full of their words."""
    mark = MARK[name]
    await mem.command(name, "start")
    await mem.say(name, f"I forgot my password {mark}solved")
    labels = [b["label"] for b in mem.messages(name)[-1].buttons()]
    if any("Yes" in lbl for lbl in labels):
        await mem.press(name, "Yes")
    clock.advance(timedelta(minutes=5))
    ticket = await _escalate(mem, name)
    number = f"FL-{ticket.number}"
    clock.advance(timedelta(minutes=3))
    await mem.agent("agent1", "claim", number)
    await mem.agent("agent1", "reply", number, text=f"Hi, is {mark}reply your login?")
    await mem.agent("agent1", "note", number, text=f"note about {mark}note")
    clock.advance(timedelta(minutes=2))
    shot = Attachment("photo", f"{mark}fileid", name=f"{mark}.png", mime="image/png")
    await mem.say(name, f"yes it is {mark}answer", attachments=(shot,))
    await mem.agent("agent1", "wait", number, text=f"which device, {mark}ask?")
    clock.advance(timedelta(minutes=2))
    await mem.say(name, f"my phone {mark}phone")
    await mem.agent("agent1", "l3", number, text=f"reason {mark}l3")
    return ticket


async def _scan(app: App, needle: str) -> list[str]:
    """Every ``table.column`` whose text or JSON holds ``needle``."""
    found: list[str] = []
    async with app.db.transaction() as s:
        for table in Base.metadata.sorted_tables:
            cols = [c for c in table.columns if isinstance(c.type, String | Text | JSON)]
            if not cols:
                continue
            for row in (await s.execute(select(*cols))).all():
                for col, value in zip(cols, row, strict=True):
                    text = (
                        value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                    )
                    if needle in (text or ""):
                        found.append(f"{table.name}.{col.name}")
    return sorted(set(found))


async def _report(app: App, since: datetime, until: datetime, now: datetime) -> dict[str, Any]:
    report = await compute_report(app.db, app.content, app.settings, since, until, now)
    data = report.to_json()
    data.pop("kb_gaps", None)  # built from the question texts themselves
    return data


async def test_forget_erases_everything_personal_and_keeps_the_figures(
    app: App, clock: FakeClock
) -> None:
    mem = MarkedChannel(app)
    since = clock.now()
    ann = await _session(mem, "ann", clock)
    bob = await _session(mem, "bob", clock)
    clock.advance(timedelta(minutes=1))
    until = clock.now()
    before = await _report(app, since, until, until)
    # Requests parked for replay (an adapter acknowledged them before their work committed).
    for who in ("ann", "bob"):
        body = {"event": {"text": f"parked {MARK[who]}parked"}, "user": who}
        await inbox.park(app.db, CHANNEL, f"ev-{who}", "message", body, clock.now())
    assert await _scan(app, MARK["ann"])  # the seed is really there

    clock.advance(timedelta(minutes=1))
    await mem.command("ann", "forget")
    assert mem.last("ann") == t("forget_q", "en")
    await mem.press("ann", "Yes, erase")

    assert await _scan(app, MARK["ann"]) == []
    assert await _report(app, since, until, until) == before
    # The user is told what was erased; L2 hears that the ticket is cancelled and why.
    assert mem.last("ann").startswith("Done: your personal data is erased")
    assert "Cancelled open tickets: 1" in mem.last("ann")
    number = f"FL-{ann.number}"
    async with app.db.transaction() as s:
        # The ticket is at L3 (the console's L3 room here): read what was queued for it.
        queued = [o.payload.get("text") for o in (await s.execute(select(Outbox))).scalars()]
    assert lt("user_forgot", "en", number=number) in queued
    async with app.db.transaction() as s:
        tk = await s.get(Ticket, ann.id)
        user = (await s.execute(select(User).where(User.external_id == "ann"))).scalar_one()
        other = await s.get(Ticket, bob.id)
    assert tk is not None and other is not None
    # The statistics skeleton stays: times, tier, priority, category, status.
    assert tk.status == "cancelled" and tk.subject == ERASED
    assert tk.first_response_at is not None and tk.priority and tk.tier and tk.category
    assert user.erased_at is not None and user.display_name == "" and user.username is None
    # Bob's data is untouched, and his ticket goes on.
    assert "ticket_messages.text" in await _scan(app, MARK["bob"])
    assert [r.event_id for r in await inbox.parked(app.db, CHANNEL)] == ["ev-bob"]
    assert other.status == "in_progress"
    # Ann can start again; the bot still speaks to her.
    await mem.say("ann", "hello again")
    assert mem.messages("ann")[-1].text


async def test_forget_in_russian_and_the_no_button(app: App) -> None:
    mem = MarkedChannel(app)
    await mem.say("cid", f"не работает vpn {MARK['cid']}", lang="ru")
    await mem.command("cid", "forget", lang="ru")
    assert mem.last("cid") == t("forget_q", "ru")
    await mem.press("cid", "Нет", lang="ru")
    assert mem.last("cid") == t("forget_kept", "ru")
    assert await _scan(app, MARK["cid"])
    await mem.command("cid", "forget", lang="ru")
    await mem.press("cid", "Да", lang="ru")
    assert mem.last("cid").startswith("Готово: ваши персональные данные удалены")
    assert await _scan(app, MARK["cid"]) == []


async def test_retention_anonymises_old_finished_work_only(app: App, clock: FakeClock) -> None:
    mem = MarkedChannel(app)
    since = clock.now()
    ann = await _session(mem, "ann", clock)
    await mem.agent("agent1", "resolve", f"FL-{ann.number}", text=f"fixed {MARK['ann']}fix")
    clock.advance(timedelta(minutes=1))
    until = clock.now()
    before = await _report(app, since, until, until)
    clock.advance(timedelta(days=4))
    assert await app.desk.close_stale(clock.now()) == 1
    old_body = {"event": {"text": f"stuck {MARK['ann']}parked"}, "user": "ann"}
    await inbox.park(app.db, CHANNEL, "ev-old", "message", old_body, clock.now())
    clock.advance(timedelta(days=40))
    await mem.say("bob", f"vpn problem {MARK['bob']}recent")  # recent: must stay
    new_body = {"event": {"text": "recent"}, "user": "bob"}
    await inbox.park(app.db, CHANNEL, "ev-new", "message", new_body, clock.now())
    async with app.db.transaction() as s:
        old_ids = (await s.execute(select(ProcessedEvent))).all()
    assert old_ids

    counts = await apply_retention(app.db, clock, timedelta(days=30))

    assert counts["tickets"] == 1 and counts["conversations"] >= 2 and counts["inbox"] == 1
    assert [r.event_id for r in await inbox.parked(app.db, CHANNEL)] == ["ev-new"]
    assert counts["processed_events"] >= 10 and counts["users"] == 1
    assert await _scan(app, MARK["ann"]) == []
    assert await _scan(app, MARK["bob"])  # newer than the period
    assert await _report(app, since, until, until) == before
    async with app.db.transaction() as s:
        left = list((await s.execute(select(ProcessedEvent))).scalars())
        tk = await s.get(Ticket, ann.id)
        convs = list((await s.execute(select(Conversation))).scalars())
    assert all(p.processed_at >= clock.now() - timedelta(days=30) for p in left)
    assert tk is not None and tk.status == "closed" and tk.subject == ERASED
    assert any(MARK["bob"] in c.problem for c in convs)
    # Running it again changes nothing more.
    again = await apply_retention(app.db, clock, timedelta(days=30))
    assert again.get("kb_queries", 0) == 0 and again.get("users", 0) == 0


async def test_daily_retention_runs_catch_up_on_work_held_back_by_a_live_ticket(
    app: App, clock: FakeClock
) -> None:
    """Run by run (as the bot does daily), each run only walks what ended since the last
    cut-off, yet a conversation held back because its ticket was still open is erased once
    that ticket is closed and old enough; units of one row give the same result."""
    mem = MarkedChannel(app)
    ann = await _session(mem, "ann", clock)  # ticket claimed, still open
    await mem.say("bob", f"vpn problem {MARK['bob']}idle")
    clock.advance(timedelta(days=40))

    first = await apply_retention(app.db, clock, timedelta(days=30), batch=1)

    assert first["conversations"] >= 1 and first["tickets"] == 0
    assert await _scan(app, MARK["bob"]) == []
    assert await _scan(app, MARK["ann"])  # her ticket is open: L2 still reads it
    again = await apply_retention(app.db, clock, timedelta(days=30), batch=1)
    assert again["conversations"] == 0 and again["tickets"] == 0 and again["users"] == 0

    await mem.agent("agent1", "resolve", f"FL-{ann.number}", text=f"fixed {MARK['ann']}fix")
    clock.advance(timedelta(days=4))
    assert await app.desk.close_stale(clock.now()) == 1
    clock.advance(timedelta(days=31))

    later = await apply_retention(app.db, clock, timedelta(days=30), batch=1)

    assert later["tickets"] == 1 and later["conversations"] >= 1
    assert await _scan(app, MARK["ann"]) == []
