"""Reports from the event log: a synthetic history whose every figure is hand-computed.

The history (Moscow, the 09:00-18:00 office calendar for the free tier, 24/7 for
enterprise; times below are Moscow local, UTC+3):

Fri 16 Jan
  17:30  ann (free) escalates T1 "I forgot my password", priority high.
Mon 19 Jan
  09:30  bob replies to T1 (auto-claims it): first response after 1h of business time
         (17:30-18:00 Fri + 09:00-09:30 Mon).
  10:00  bob asks ann a question ("wait" with text): T1 waits for the customer.
  10:00  carl (free) escalates T2, high.  11:00 eve claims T2 and stays silent.
  11:00  frank solves "I forgot my password" with the KB ...
  12:00  dave (enterprise) escalates T3, high.  12:20 bob replies (20m on a 24/7 clock).
  13:00  ann answers: T1 paused 10:00-13:00; her message starts a next-response clock.
  13:00  bob hands T3 to L3.
  14:00  gina solves a billing problem with the checklist ("Fixed it").
  15:00  bob resolves T1 with a last reply: next response 2h, resolution
         0.5h + 1h + 2h = 3.5h of business time (the 3h pause excluded). ann rates 4.
  16:00  bob resolves T3 at L3: 4h. dave does not rate.
  16:30  helen solves "how do I download an invoice" with the KB.
  17:00  frank comes back with the same problem (account) -> his solve is not deflection.
  17:30  helen comes back with a different problem -> hers still counts.
  18:00  T2's first-response deadline passes unanswered: a breach, owner eve.
Tue 20 Jan
  10:00  the Monday report is taken ("now"): T2 is 1h overdue (09:00-10:00 Tue).
  10:30  eve replies to T2 (9.5h).  11:00 ivan solves an invoice question with the KB.
  12:00  eve resolves T2 (11h, met); carl rates 2.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from bot.app import App
from bot.clock import FakeClock
from bot.storage.models import Event, Ticket, TicketPause
from escalation.report import (
    compute_report,
    daily_series,
    day_bounds,
    percentile,
    similar_problem,
)
from handlers.memory import MemoryChannel
from tests.test_engine_flow import _escalate

MSK = 3  # Moscow is UTC+3 all year


def msk(day: int, hour: int, minute: int = 0) -> datetime:
    """A Moscow wall-clock moment in January 2026, as aware UTC."""
    return datetime(2026, 1, day, hour, minute, tzinfo=UTC) - timedelta(hours=MSK)


async def kb_solve(mem: MemoryChannel, user: str, text: str) -> None:
    """``user`` asks ``text`` and says the article shown (or suggested first) solved it."""
    await mem.say(user, text)
    labels = [b["label"] for b in mem.messages(user)[-1].buttons()]
    if not any("Yes, solved" in lbl for lbl in labels):
        await mem.press_data(user, mem.messages(user)[-1].buttons()[0]["data"])
    await mem.press(user, "Yes, solved")


async def build_history(app: App, mem: MemoryChannel, clock: FakeClock) -> dict[str, Ticket]:
    """Drive the whole history above through the real app; return the tickets by name."""
    await app.desk.import_customers([("memory", "dave", "Acme", "enterprise")])
    tickets: dict[str, Ticket] = {}

    clock.set(msk(16, 17, 30))
    tickets["T1"] = t1 = await _escalate(mem, "ann")
    n1 = f"FL-{t1.number}"

    clock.set(msk(19, 9, 30))
    await mem.agent("agent_bob", "reply", n1, "Hello, looking into it")
    clock.set(msk(19, 10))
    await mem.agent("agent_bob", "wait", n1, "Which browser do you use?")
    tickets["T2"] = t2 = await _escalate(mem, "carl")
    n2 = f"FL-{t2.number}"
    clock.set(msk(19, 11))
    await mem.agent("agent_eve", "claim", n2)
    await kb_solve(mem, "frank", "I forgot my password")
    clock.set(msk(19, 12))
    tickets["T3"] = t3 = await _escalate(mem, "dave")
    n3 = f"FL-{t3.number}"
    clock.set(msk(19, 12, 20))
    await mem.agent("agent_bob", "reply", n3, "Checking the logs")
    clock.set(msk(19, 13))
    await mem.say("ann", "Firefox 120")
    await mem.agent("agent_bob", "l3", n3, "needs a developer")
    clock.set(msk(19, 14))
    await mem.command("gina", "start")
    await mem.press("gina", "Billing")
    await mem.press("gina", "Fixed it")
    clock.set(msk(19, 15))
    await mem.agent("agent_bob", "resolve", n1, "Clear the cookies, then sign in again")
    await mem.press("ann", "4")
    clock.set(msk(19, 16))
    await mem.agent("agent_bob", "resolve", n3)
    clock.set(msk(19, 16, 30))
    await kb_solve(mem, "helen", "how do I download an invoice")
    clock.set(msk(19, 17))
    await mem.say("frank", "I forgot my password")
    clock.set(msk(19, 17, 30))
    await mem.say("helen", "I forgot my password")

    clock.set(msk(20, 10, 30))
    await mem.agent("agent_eve", "reply", n2, "On it")
    clock.set(msk(20, 11))
    await kb_solve(mem, "ivan", "how do I download an invoice")
    clock.set(msk(20, 12))
    await mem.agent("agent_eve", "resolve", n2)
    await mem.press("carl", "2")
    return tickets


H = 3600  # seconds in an hour


async def test_monday_report_every_figure(mem: MemoryChannel, app: App, clock: FakeClock) -> None:
    tickets = await build_history(app, mem, clock)
    n1, n2 = f"FL-{tickets['T1'].number}", f"FL-{tickets['T2'].number}"
    since, until = msk(19, 0), msk(20, 0)
    now = msk(20, 10)  # the Monday report as it was on Tuesday at 10:00
    report = await compute_report(app.db, app.content, app.settings, since, until, now)
    data = json.loads(json.dumps(report.to_json()))  # really JSON

    assert data["volume"] == {
        "conversations": 7,  # frank x2, carl, dave, gina, helen x2 (ann's began on Friday)
        "solved_kb": 2,  # frank, helen
        "solved_checklist": 1,  # gina
        "escalated": 2,  # T2, T3
        "resolved_l2": 1,  # T1
        "resolved_l3": 1,  # T3, resolved while at L3
        "backlog": 1,  # T2
        "backlog_unclaimed": 0,  # eve owns it
        "cancelled": 0,
        "abandoned": 0,
    }
    assert data["deflection"] == {
        "problems": 5,  # 3 bot solves + 2 escalations
        "bot_solves": 3,
        "recontacted": 1,  # frank came back with the same problem within 3 days
        "deflected": 2,  # gina, helen
        "pending": 2,  # their 3-day windows are still open on Tuesday
        "rate": 0.4,
    }
    assert data["first_response"] == [
        {"tier": "free", "count": 1, "p50_seconds": 1 * H, "p90_seconds": 1 * H},  # T1
        {"tier": "enterprise", "count": 1, "p50_seconds": 1200, "p90_seconds": 1200},  # T3
        {"tier": "all", "count": 2, "p50_seconds": 1200, "p90_seconds": 1 * H},
    ]
    assert data["resolution"] == [
        {"tier": "free", "count": 1, "p50_seconds": int(3.5 * H), "p90_seconds": int(3.5 * H)},
        {"tier": "enterprise", "count": 1, "p50_seconds": 4 * H, "p90_seconds": 4 * H},
        {"tier": "all", "count": 2, "p50_seconds": int(3.5 * H), "p90_seconds": 4 * H},
    ]
    cells = {
        (c["tier"], c["priority"], c["target"]): (c["met"], c["breached"])
        for c in data["sla"]["cells"]
    }
    assert cells == {
        ("free", "high", "first_response"): (1, 1),  # T1 met, T2 breached
        ("free", "high", "next_response"): (1, 0),  # T1: ann's 13:00 message answered at 15:00
        ("free", "high", "resolution"): (1, 0),  # T1
        ("enterprise", "high", "first_response"): (1, 0),  # T3
        ("enterprise", "high", "resolution"): (1, 0),  # T3
    }
    assert (data["sla"]["met"], data["sla"]["breached"]) == (5, 1)
    assert data["sla"]["compliance"] == pytest.approx(5 / 6)
    assert data["breaches"] == [
        {
            "ticket_id": tickets["T2"].id,
            "number": n2,
            "target": "first_response",
            "tier": "free",
            "priority": "high",
            "due": msk(19, 18).isoformat(),
            "over_seconds": 1 * H,  # still unanswered at "now": Tue 09:00-10:00
            "owner": "Agent_Eve",
            "finished": False,
        }
    ]
    assert data["at_risk"] == [
        {
            "ticket_id": tickets["T2"].id,
            "number": n2,
            "target": "first_response",
            "tier": "free",
            "priority": "high",
            "due": msk(19, 18).isoformat(),
            "remaining_seconds": -1 * H,
            "owner": "Agent_Eve",
            "paused": False,
        }
    ]
    assert data["csat"] == {"responses": 1, "surveys": 2, "average": 4.0, "response_rate": 0.5}
    assert data["categories"] == [
        {
            "category": "account",
            "title": "Account and sign-in",
            "problems": 3,
            "solved": 1,
            "escalated": 2,
        },
        {
            "category": "billing",
            "title": "Billing and licences",
            "problems": 2,
            "solved": 2,
            "escalated": 0,
        },
    ]
    # carl and dave walked the account checklist to its end; gina's "Fixed it" helped.
    steps = [
        (s["category"], s["step"], s["answers"], s["not_helped"]) for s in data["checklist_steps"]
    ]
    assert steps == [
        ("account", "caps_lock", 2, 2),
        ("account", "lockout", 2, 2),
        ("account", "reset_password", 2, 2),
        ("account", "two_factor_clock", 2, 2),
    ]
    assert [(g["representative"], g["count"]) for g in data["kb_gaps"]] == [
        ("I forgot my password", 2)  # carl's and dave's: the article did not help
    ]
    assert data["consultants"] == [
        {"key": "memory:agent_bob", "name": "Agent_Bob", "claimed": 2, "replies": 4, "resolved": 2},
        {"key": "memory:agent_eve", "name": "Agent_Eve", "claimed": 1, "replies": 0, "resolved": 0},
    ]
    assert n1 not in {b["number"] for b in data["breaches"]}


async def test_report_of_a_later_day_and_the_week(
    mem: MemoryChannel, app: App, clock: FakeClock
) -> None:
    tickets = await build_history(app, mem, clock)
    now = msk(21, 9)
    tue = await compute_report(app.db, app.content, app.settings, msk(20, 0), msk(21, 0), now)
    week = await compute_report(app.db, app.content, app.settings, msk(19, 0), msk(21, 0), now)
    # Tuesday: ivan's solve; T2 answered after 8h + 1.5h and resolved after 11h (met).
    assert (tue.volume.conversations, tue.volume.solved_kb, tue.volume.escalated) == (1, 1, 0)
    assert (tue.volume.resolved_l2, tue.volume.resolved_l3, tue.volume.backlog) == (1, 0, 0)
    assert tue.time_stats("first_response", "free") is not None
    assert tue.first_response[0].p50 == timedelta(hours=9.5)
    assert tue.resolution[0].p50 == timedelta(hours=11)
    assert tue.sla_totals() == (1, 0)  # T2's breach belongs to Monday
    assert tue.breaches == [] and tue.at_risk == []
    assert (tue.csat.responses, tue.csat.average, tue.csat.surveys) == (1, 2.0, 1)
    # The week is the sum of its days; percentiles over all of its tickets.
    assert week.volume.conversations == 8 and week.volume.resolved_l2 == 2
    assert (week.deflection.problems, week.deflection.deflected) == (6, 3)
    assert week.deflection.rate == 0.5 and week.deflection.pending == 3
    fr_all = week.time_stats("first_response", "all")
    assert fr_all is not None and fr_all.count == 3
    assert (fr_all.p50, fr_all.p90) == (timedelta(hours=1), timedelta(hours=9.5))
    res_all = week.time_stats("resolution", "all")
    assert res_all is not None
    assert (res_all.p50, res_all.p90) == (timedelta(hours=4), timedelta(hours=11))
    assert week.sla_totals() == (6, 1)
    assert [b.over for b in week.breaches] == [timedelta(hours=1.5)]  # finished at 10:30 Tue
    assert week.breaches[0].finished
    assert (week.csat.responses, week.csat.average, week.csat.surveys) == (2, 3.0, 3)
    assert {c.key: (c.claimed, c.replies, c.resolved) for c in week.consultants} == {
        "memory:agent_bob": (2, 4, 2),
        "memory:agent_eve": (1, 1, 1),
    }
    assert tickets


async def test_business_time_agrees_with_the_desk(
    mem: MemoryChannel, app: App, clock: FakeClock
) -> None:
    """The replayed pauses are the desk's ``ticket_pauses`` rows, and the Friday-evening
    ticket's first response took 1h of business time."""
    tickets = await build_history(app, mem, clock)
    async with app.db.transaction() as s:
        pauses = list(
            (
                await s.execute(
                    select(TicketPause).where(TicketPause.ticket_id == tickets["T1"].id)
                )
            ).scalars()
        )
    assert [(p.started_at, p.ended_at) for p in pauses] == [(msk(19, 10), msk(19, 13))]
    cal = app.content.sla.calendar_for("free")
    assert cal.elapsed(msk(16, 17, 30), msk(19, 9, 30)) == timedelta(hours=1)
    report = await compute_report(
        app.db, app.content, app.settings, msk(19, 0), msk(20, 0), msk(20, 10)
    )
    assert report.first_response[0].p50 == timedelta(hours=1)


async def test_report_ignores_what_happened_after_now(
    mem: MemoryChannel, app: App, clock: FakeClock
) -> None:
    await build_history(app, mem, clock)
    # As of Monday 12:00, T1 was still waiting and T3 had just opened.
    report = await compute_report(
        app.db, app.content, app.settings, msk(19, 0), msk(20, 0), msk(19, 12)
    )
    assert report.volume.resolved_l2 == 0 and report.volume.backlog == 3
    assert report.volume.conversations == 3  # carl, frank, dave


async def test_recontact_window_and_similar_text(
    mem: MemoryChannel, app: App, clock: FakeClock
) -> None:
    app.settings.digest.recontact_window = timedelta(hours=1)
    clock.set(msk(19, 10))
    await kb_solve(mem, "kate", "how do I download an invoice")
    clock.set(msk(19, 11, 1))  # 1h01m later: outside the window
    await mem.say("kate", "how do I download an invoice")
    clock.set(msk(19, 12))
    await kb_solve(mem, "liam", "how do I download an invoice")
    clock.set(msk(19, 12, 59))  # inside the window, same words
    await mem.say("liam", "download invoice please")
    report = await compute_report(
        app.db, app.content, app.settings, msk(19, 0), msk(20, 0), msk(20, 0)
    )
    assert (report.deflection.bot_solves, report.deflection.recontacted) == (2, 1)
    assert report.deflection.pending == 0


def test_similar_problem_and_percentiles() -> None:
    assert similar_problem("I can't log in", "still can't log in to my account")
    assert similar_problem("Не могу войти в аккаунт", "не могу войти")
    assert not similar_problem("how do I download an invoice", "I forgot my password")
    assert not similar_problem("", "anything")
    hours = [timedelta(hours=h) for h in (1, 2, 10)]
    assert percentile(hours, 50) == timedelta(hours=2)
    assert percentile(hours, 90) == timedelta(hours=10)
    assert percentile([], 50) is None


async def test_csv_rows_and_daily_series(mem: MemoryChannel, app: App, clock: FakeClock) -> None:
    await build_history(app, mem, clock)
    report = await compute_report(
        app.db, app.content, app.settings, msk(19, 0), msk(20, 0), msk(20, 10)
    )
    rows = report.to_csv_rows()
    assert rows[0] == ["section", "key", "metric", "value"]
    assert ["volume", "", "conversations", "7"] in rows
    assert ["deflection", "", "rate", "0.4000"] in rows
    assert ["sla", "free/high/first_response", "breached", "1"] in rows
    series = await daily_series(app.db, app.content, app.settings, date(2026, 1, 20), msk(21, 9))
    assert len(series) == 14 and series[-1].day == date(2026, 1, 20)
    by_day = {p.day: p for p in series}
    mon, tue, fri = by_day[date(2026, 1, 19)], by_day[date(2026, 1, 20)], by_day[date(2026, 1, 16)]
    assert (mon.conversations, mon.problems, mon.deflected, mon.escalated) == (7, 5, 2, 2)
    assert (mon.sla_met, mon.sla_breached) == (5, 1)
    assert (tue.problems, tue.deflection, tue.sla_compliance) == (1, 1.0, 1.0)
    assert (fri.escalated, fri.deflection) == (1, 0.0)
    assert by_day[date(2026, 1, 10)].deflection is None  # nothing happened: no rate
    berlin = ZoneInfo("Europe/Berlin")
    since, until = day_bounds(date(2026, 3, 29), berlin)  # the clocks go forward
    assert until - since == timedelta(hours=23)


async def test_events_needed_are_logged(mem: MemoryChannel, app: App, clock: FakeClock) -> None:
    """The report relies on these event kinds; a rename in the core fails here first."""
    await build_history(app, mem, clock)
    async with app.db.transaction() as s:
        kinds = set((await s.execute(select(Event.kind))).scalars())
    assert {
        "conversation_started",
        "conversation_ended",
        "conversation_escalated",
        "ticket_opened",
        "ticket_claimed",
        "first_response",
        "agent_reply",
        "user_message",
        "waiting_for_customer",
        "customer_replied",
        "ticket_l3",
        "ticket_resolved",
        "csat",
        "checklist_answer",
        "kb_verdict",
    } <= kinds


async def test_tier_correction_recomputes_in_the_new_tier(
    mem: MemoryChannel, app: App, clock: FakeClock
) -> None:
    """L2 corrects free -> enterprise: like the desk, the report judges the whole ticket
    in the new tier (24/7, first response 1h for high)."""
    clock.set(msk(19, 10))
    ticket = await _escalate(mem, "omar")
    number = f"FL-{ticket.number}"
    clock.set(msk(19, 10, 30))
    await mem.agent("agent_bob", "tier", number, value="enterprise")
    clock.set(msk(19, 11, 30))
    await mem.agent("agent_bob", "reply", number, "Hello")
    report = await compute_report(
        app.db, app.content, app.settings, msk(19, 0), msk(20, 0), msk(19, 12)
    )
    fr = [
        (c.tier, c.priority, c.met, c.breached) for c in report.sla if c.target == "first_response"
    ]
    assert fr == [("enterprise", "high", 0, 1)]
    assert [(b.due, b.over, b.finished) for b in report.breaches] == [
        (msk(19, 11), timedelta(minutes=30), True)
    ]
    assert report.first_response[0].tier == "enterprise"
    assert report.first_response[0].p50 == timedelta(hours=1, minutes=30)
