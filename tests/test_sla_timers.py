"""SLA timers: exact moments, exactly once, through restarts and concurrent firing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import select

from bot.app import App
from bot.clock import FakeClock
from bot.storage.models import Event, SlaNotification, Ticket
from config.settings import DatabaseSettings, EscalationSettings, Settings
from escalation.timers import SlaTimers
from handlers.memory import MemoryChannel
from tests.test_engine_flow import _escalate


async def _events(app: App, *kinds: str) -> list[Event]:
    async with app.db.transaction() as s:
        rows = await s.execute(select(Event).where(Event.kind.in_(kinds)).order_by(Event.id))
        return list(rows.scalars())


async def test_first_response_warnings_breach_and_manager_at_exact_moments(
    mem: MemoryChannel, app: App, clock: FakeClock
) -> None:
    # Monday 2026-01-12 10:00 Moscow; free tier, high priority: 8 business hours (09-18).
    ticket = await _escalate(mem)
    assert ticket.first_response_due == datetime(2026, 1, 12, 15, 0, tzinfo=UTC)  # 18:00 MSK
    expected = {
        ("sla_warning", 75): datetime(2026, 1, 12, 13, 0, tzinfo=UTC),  # 6h used: 16:00 MSK
        ("sla_warning", 90): datetime(2026, 1, 12, 14, 12, tzinfo=UTC),  # 7.2h: 17:12 MSK
        ("sla_breach", None): datetime(2026, 1, 12, 15, 0, tzinfo=UTC),
        ("sla_manager_escalation", None): datetime(2026, 1, 12, 16, 0, tzinfo=UTC),
    }
    fired: dict[tuple[str, int | None], datetime] = {}

    async def collect() -> None:
        for ev in await _events(app, "sla_warning", "sla_breach", "sla_manager_escalation"):
            if ev.data.get("target") == "first_response":
                fired.setdefault((ev.kind, ev.data.get("percent")), ev.at)

    for key, moment in sorted(expected.items(), key=lambda kv: kv[1]):
        clock.set(moment - timedelta(seconds=2))
        await app.timers.sweep()
        await collect()
        assert key not in fired, f"{key} fired early"
        clock.set(moment)
        await app.timers.sweep()
        await app.timers.sweep()  # a second sweep at the same moment sends nothing more
        await collect()
        assert fired.get(key) == moment
    assert fired == expected
    await mem.deliver()
    posts = [d.text for d in mem.l2() if d.kind in ("ticket_post", "notify")]
    assert sum("75%" in p for p in posts) == 1
    assert sum("SLA breached" in p for p in posts) == 1
    assert sum("Escalation to managers" in p for p in posts) == 1


async def test_a_reply_cancels_pending_first_response_notifications(
    mem: MemoryChannel, app: App, clock: FakeClock
) -> None:
    ticket = await _escalate(mem)
    clock.advance(timedelta(hours=1))
    await mem.agent("agent_bob", "reply", f"FL-{ticket.number}", "Looking into it")
    clock.set(datetime(2026, 1, 12, 16, 0, tzinfo=UTC))
    await app.timers.sweep()
    fired = await _events(app, "sla_warning", "sla_breach")
    assert [e for e in fired if e.data.get("target") == "first_response"] == []


async def test_waiting_for_customer_pauses_the_clock(
    mem: MemoryChannel, app: App, clock: FakeClock
) -> None:
    ticket = await _escalate(mem)
    number = f"FL-{ticket.number}"
    await mem.agent("agent_bob", "claim", number)
    original = ticket.resolution_due
    assert original is not None
    clock.advance(timedelta(hours=1))
    await mem.agent("agent_bob", "wait", number, "Please send the logs")
    async with app.db.transaction() as s:
        paused = await s.get(Ticket, ticket.id)
        assert paused is not None and paused.resolution_due is None
    clock.advance(timedelta(hours=2))  # two business hours waiting
    await mem.say("ann", "here are the logs")
    async with app.db.transaction() as s:
        resumed = await s.get(Ticket, ticket.id)
    # The deadline moves by the two business hours spent waiting (here: into the next day).
    calendar = app.content.sla.calendar_for("free")
    assert resumed is not None
    assert resumed.resolution_due == calendar.add(original, timedelta(hours=2))
    assert resumed.resolution_due != original + timedelta(hours=2)


async def test_priority_change_recomputes_deadlines(mem: MemoryChannel, app: App) -> None:
    ticket = await _escalate(mem)
    await mem.agent("agent_bob", "priority", f"FL-{ticket.number}", value="critical")
    async with app.db.transaction() as s:
        tk = await s.get(Ticket, ticket.id)
    # Critical on the free tier: 4 business hours from 10:00 MSK -> 14:00 MSK.
    assert tk is not None and tk.first_response_due == datetime(2026, 1, 12, 11, 0, tzinfo=UTC)


async def test_a_job_fired_twice_or_by_two_processes_sends_once(
    mem: MemoryChannel, app: App, clock: FakeClock
) -> None:
    await _escalate(mem)
    clock.set(datetime(2026, 1, 12, 13, 0, tzinfo=UTC))
    async with app.db.transaction() as s:
        row = (
            await s.execute(
                select(SlaNotification).where(SlaNotification.kind == "first_response:warn:75")
            )
        ).scalar_one()
    other = SlaTimers(app.db, app.desk, clock)  # a second process on the same database
    results = await asyncio.gather(
        app.timers.fire(row.id), other.fire(row.id), app.timers.fire(row.id)
    )
    assert sorted(results) == [False, False, True]
    assert len(await _events(app, "sla_warning")) == 1


async def test_owner_silence_offers_the_ticket_to_the_team(
    mem: MemoryChannel, app: App, clock: FakeClock
) -> None:
    ticket = await _escalate(mem)
    await mem.agent("agent_bob", "claim", f"FL-{ticket.number}")
    clock.advance(timedelta(minutes=61))
    await app.timers.sweep()
    async with app.db.transaction() as s:
        tk = await s.get(Ticket, ticket.id)
    assert tk is not None and tk.owner_key is None and tk.status == "open"
    assert len(await _events(app, "owner_silence")) == 1


async def test_simulated_week_with_a_restart_fires_everything_once(database_url: str) -> None:
    settings = Settings(
        database=DatabaseSettings(url=database_url),
        escalation=EscalationSettings(default_destination="memory:l2"),
    )
    clock = FakeClock(datetime(2026, 1, 12, 6, 0, tzinfo=UTC))
    app = await App.create(settings, clock)
    mem = MemoryChannel(app)
    step = timedelta(minutes=30)
    restarted = False

    async def run_until(until: datetime) -> None:
        nonlocal app, mem, restarted
        while clock.now() < until:
            clock.advance(step)
            await app.timers.sweep()
            if not restarted and clock.now() >= restart_at:
                await app.close()  # the process dies; a new one rebuilds from the database
                app = await App.create(settings, clock)
                mem = MemoryChannel(app)
                restarted = True

    restart_at = clock.now() + timedelta(days=1, hours=5)
    # Twelve tickets over the first two days, at different hours, some answered.
    for i in range(12):
        ticket = await _escalate(mem, f"user{i}")
        if i % 3 == 0:
            await mem.agent("agent_bob", "reply", f"FL-{ticket.number}", "on it")
        await run_until(clock.now() + timedelta(hours=3, minutes=17))
    end = clock.now() + timedelta(days=7)
    await run_until(end)
    assert restarted
    async with app.db.transaction() as s:
        rows = list((await s.execute(select(SlaNotification))).scalars())
        events = list(
            (
                await s.execute(
                    select(Event).where(
                        Event.kind.in_(("sla_warning", "sla_breach", "sla_manager_escalation"))
                    )
                )
            ).scalars()
        )
    live = [r for r in rows if not r.cancelled and r.due_at <= end - step]
    assert live and all(r.fired_at is not None for r in live), "a notification was lost"
    for r in live:
        assert r.fired_at is not None
        assert r.due_at <= r.fired_at <= r.due_at + step, (r.kind, r.due_at, r.fired_at)
    # Exactly one log event per fired SLA notification (owner silence is logged apart).
    fired_sla = [r for r in rows if r.fired_at is not None and r.kind != "owner_silence"]
    assert len(events) == len(fired_sla)
    await app.close()


async def test_scheduler_jobs_are_rebuilt_with_stable_ids(mem: MemoryChannel, app: App) -> None:
    await _escalate(mem)
    scheduler = AsyncIOScheduler(timezone=UTC)
    app.timers.attach(scheduler, sweep_seconds=3600)
    count = await app.timers.reschedule()
    ids = {j.id for j in scheduler.get_jobs()}
    assert count >= 4 and "sla:sweep" in ids
    assert len([i for i in ids if i.startswith("sla:") and i != "sla:sweep"]) == count
    again = await app.timers.reschedule()  # idempotent: same ids, no duplicates
    assert again == count and {j.id for j in scheduler.get_jobs()} == ids


async def test_tier_change_recomputes_and_is_logged(mem: MemoryChannel, app: App) -> None:
    ticket = await _escalate(mem)
    res = await mem.agent("agent_bob", "tier", f"FL-{ticket.number}", value="platinum")
    assert res.refused
    await mem.agent("agent_bob", "tier", f"FL-{ticket.number}", value="enterprise")
    async with app.db.transaction() as s:
        tk = await s.get(Ticket, ticket.id)
    # Enterprise is 24/7: high priority, first response within 1 hour of 07:00 UTC.
    assert tk is not None and tk.tier == "enterprise"
    assert tk.first_response_due == datetime(2026, 1, 12, 8, 0, tzinfo=UTC)
    assert [e.data for e in await _events(app, "tier_changed")] == [
        {"old": "free", "new": "enterprise"}
    ]


async def test_l3_has_its_own_timer_and_destination(
    mem: MemoryChannel, app: App, clock: FakeClock
) -> None:
    app.settings.escalation.l3_destination = "memory:l3"
    ticket = await _escalate(mem)
    number = f"FL-{ticket.number}"
    await mem.agent("agent_bob", "reply", number, "Passing this to our engineers")
    await mem.agent("agent_bob", "l3", number, "needs a database fix")
    assert any(d.kind == "ticket_card" for d in mem.l2("l3")), "no card at the L3 destination"
    assert "senior engineers" in mem.last("ann")
    async with app.db.transaction() as s:
        tk = await s.get(Ticket, ticket.id)
        rows = (
            (await s.execute(select(SlaNotification).where(SlaNotification.target == "l3")))
            .scalars()
            .all()
        )
    # L3 "high": 24 business hours from Monday 10:00 Moscow (8 + 9 + 7) -> Wednesday 16:00.
    assert tk is not None and tk.level == "l3"
    assert tk.l3_due == datetime(2026, 1, 14, 13, 0, tzinfo=UTC)
    assert {r.kind for r in rows} >= {"l3:breach", "l3:warn:75"}
    # Posts now go to the L3 thread; the user's words reach the experts.
    await mem.say("ann", "any news?")
    assert any(d.kind == "ticket_post" and d.text == "any news?" for d in mem.l2("l3"))
    await mem.agent("agent_bob", "l3_back", number)
    async with app.db.transaction() as s:
        tk = await s.get(Ticket, ticket.id)
        pending = (
            (
                await s.execute(
                    select(SlaNotification).where(
                        SlaNotification.target == "l3",
                        SlaNotification.cancelled.is_(False),
                        SlaNotification.fired_at.is_(None),
                    )
                )
            )
            .scalars()
            .all()
        )
    assert tk is not None and tk.level == "l2" and tk.l3_due is None and pending == []


async def test_routing_rule_picks_the_destination_by_category(mem: MemoryChannel, app: App) -> None:
    app.settings.escalation.routes = {"account": "memory:accounts-team"}
    ticket = await _escalate(mem)
    assert ticket.destination == "memory:accounts-team"
    assert any(d.kind == "ticket_card" for d in mem.l2("accounts-team"))
