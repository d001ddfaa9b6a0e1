"""The managers' digest: exact text, exactly once per day and chat, DST-correct schedule."""

from __future__ import annotations

import asyncio
import base64
import os
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.app import App
from bot.clock import FakeClock
from bot.storage.models import DigestRun, Event, Outbox
from config.settings import DatabaseSettings, DigestSettings, EscalationSettings, Settings
from escalation.digest import (
    MAX_UTF16,
    build_digest,
    missed_day,
    next_run,
    render_text,
    scheduled_at,
    send_digest,
    send_due,
    user_text,
)
from escalation.report import Breach, compute_report
from handlers.memory import MemoryChannel
from tests.test_report import build_history, msk

RECIPIENTS = ["memory:managers", "memory:lead"]
DOCS = Path(__file__).resolve().parent.parent / "docs" / "digest.md"


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Managers in Moscow (the default) receive the digest at 09:00 in two chats."""
    return Settings(
        database=DatabaseSettings(url=database_url),
        escalation=EscalationSettings(default_destination="memory:l2"),
        digest=DigestSettings(recipients=RECIPIENTS),
    )


# Hand-computed from the history in tests/test_report.py (Tuesday, and Mon-Tue beside it).
EXPECTED_EN = """\
📊 Support digest · Tue 20 Jan 2026
day · week to date (19–20 Jan)

💬 Volume
Conversations: 1 · 8
Solved by KB: 1 · 3
Solved by checklist: 0 · 1
Escalated to L2: 0 · 2
Resolved L2/L3: 1/0 · 2/1
Open backlog: 0 (0 unclaimed)
🎯 Deflection: 100% (1/1) · 50%
  0 came back with the same problem; 1 still within 3 days

⏱ First response, business time
Free: p50 9h 30m · p90 9h 30m (n=1)
Week, all tiers: p50 1h 00m · p90 9h 30m (n=3)

🏁 Resolution, business time
Free: p50 11h 00m · p90 11h 00m (n=1)
Week, all tiers: p50 4h 00m · p90 11h 00m (n=3)

✅ SLA met: 100% (1/1) · 86%
Free · high: Res 1✓

⭐ CSAT: 2.0 (1/1 rated, 100%) · 3.0

🏷 Top categories · week
Account and sign-in: 0 · 3 (bot solved 1)
Billing and licences: 1 · 3 (bot solved 3)

🧾 Checklist steps that didn't help · week
Account and sign-in / Check Caps Lock and the keyboard layout…: 2 of 2
Account and sign-in / After 5 failed attempts the account is…: 2 of 2
Account and sign-in / Reset the password: on the sign-in page…: 2 of 2
… and 1 more

📚 KB gaps · week
“I forgot my password” ×2

👥 Consultants: claimed/replies/resolved
Agent_Bob: 0/0/0 · 2/4/2
Agent_Eve: 0/1/1 · 1/1/1"""


async def test_digest_text_every_figure(mem: MemoryChannel, app: App, clock: FakeClock) -> None:
    await build_history(app, mem, clock)
    digest = await build_digest(app, date(2026, 1, 20), msk(21, 9))
    assert digest.text == EXPECTED_EN
    assert digest.image_png is not None and digest.image_png.startswith(b"\x89PNG")
    payload = digest.payload()
    assert base64.b64decode(payload["image_png_b64"]) == digest.image_png
    assert payload["image_name"] == "digest-2026-01-20.png"
    # The chart's series is the same figures per day.
    tue = digest.series[-1]
    assert (tue.day, tue.problems, tue.deflected, tue.sla_met, tue.sla_breached) == (
        date(2026, 1, 20),
        1,
        1,
        1,
        0,
    )


async def test_monday_digest_lists_breach_and_risk(
    mem: MemoryChannel, app: App, clock: FakeClock
) -> None:
    tickets = await build_history(app, mem, clock)
    n2 = f"FL-{tickets['T2'].number}"
    digest = await build_digest(app, date(2026, 1, 19), msk(20, 10), chart=False)
    assert digest.image_png is None and "image_png_b64" not in digest.payload()
    lines = digest.text.splitlines()
    for expected in (
        "Conversations: 7 · 7",
        "Resolved L2/L3: 1/1 · 1/1",
        "Open backlog: 1 (0 unclaimed)",
        "🎯 Deflection: 40% (2/5) · 40%",
        "  1 came back with the same problem; 2 still within 3 days",
        "Free: p50 1h 00m · p90 1h 00m (n=1)",
        "Enterprise: p50 20m · p90 20m (n=1)",
        "Free: p50 3h 30m · p90 3h 30m (n=1)",
        "Enterprise: p50 4h 00m · p90 4h 00m (n=1)",
        "✅ SLA met: 83% (5/6) · 83%",
        "Free · high: FR 1✓ 1✗ · NR 1✓ · Res 1✓",
        "Enterprise · high: FR 1✓ · Res 1✓",
        "🚨 Breaches",
        f"{n2} first response +1h 00m · Agent_Eve",
        "⚠️ At risk now",
        f"{n2} first response: overdue 1h 00m · Agent_Eve",
        "⭐ CSAT: 4.0 (1/2 rated, 50%) · 4.0",
        "Agent_Bob: 2/4/2 · 2/4/2",
        "Agent_Eve: 1/0/0 · 1/0/0",
    ):
        assert expected in lines, f"{expected!r} not in:\n{digest.text}"


async def test_russian_digest(mem: MemoryChannel, app: App, clock: FakeClock) -> None:
    await build_history(app, mem, clock)
    digest = await build_digest(app, date(2026, 1, 20), msk(21, 9), lang="ru", chart=False)
    lines = digest.text.splitlines()
    for expected in (
        "📊 Сводка поддержки · вт 20 янв 2026",
        "Диалоги: 1 · 8",
        "🎯 Решено ботом: 100% (1/1) · 50%",
        "Бесплатный: p50 9 ч 30 мин · p90 9 ч 30 мин (n=1)",
        "✅ SLA выполнен: 100% (1/1) · 86%",
        "⭐ Оценка: 2.0 (1/1 оценили, 100%) · 3.0",
        "Оплата и лицензии: 1 · 3 (решил бот: 3)",
        "«I forgot my password» ×2",
    ):
        assert expected in lines, f"{expected!r} not in:\n{digest.text}"


async def test_send_digest_once_per_day_and_chat(
    mem: MemoryChannel, app: App, clock: FakeClock
) -> None:
    await build_history(app, mem, clock)
    day, now = date(2026, 1, 20), msk(21, 9)
    clock.set(now)
    assert await send_digest(app, day, now) == 2
    assert await send_digest(app, day, now) == 0  # a job fired twice
    await mem.deliver()
    for chat in ("managers", "lead"):
        got = [d for d in mem.l2(chat) if d.kind == "notify"]
        assert len(got) == 1 and got[0].text == EXPECTED_EN
        assert got[0].payload["image_name"] == "digest-2026-01-20.png"
    async with app.db.transaction() as s:
        runs = (await s.execute(select(DigestRun.day, DigestRun.target))).all()
        logged = (
            await s.execute(select(func.count()).where(Event.kind == "digest_sent"))
        ).scalar_one()
    assert sorted(runs) == [("2026-01-20", "memory:lead"), ("2026-01-20", "memory:managers")]
    assert logged == 2


async def test_two_processes_send_one_digest_per_chat(
    settings: Settings, app: App, clock: FakeClock
) -> None:
    other = await App.create(settings, clock, migrate=False)  # a second process, same database
    try:
        day, now = date(2026, 1, 20), msk(21, 9)
        results = await asyncio.gather(
            send_digest(app, day, now), send_digest(other, day, now), send_due(other, now)
        )
        assert sum(results) == 2
        async with app.db.transaction() as s:
            rows = (await s.execute(select(Outbox.target).where(Outbox.kind == "notify"))).all()
        assert sorted(r[0] for r in rows) == ["lead", "managers"]
    finally:
        await other.close()


def _berlin(time_: str = "09:00") -> Settings:
    return Settings(
        digest=DigestSettings(timezone="Europe/Berlin", time=time_, recipients=["memory:m"])
    )


@pytest.mark.parametrize(
    ("day", "due"),
    [
        (date(2026, 3, 27), datetime(2026, 3, 28, 8, 0, tzinfo=UTC)),  # Sat 09:00 CET
        (date(2026, 3, 28), datetime(2026, 3, 29, 7, 0, tzinfo=UTC)),  # Sun 09:00 CEST
        (date(2026, 10, 24), datetime(2026, 10, 25, 8, 0, tzinfo=UTC)),  # Sun 09:00 CET
        (date(2026, 10, 23), datetime(2026, 10, 24, 7, 0, tzinfo=UTC)),  # Sat 09:00 CEST
    ],
)
def test_scheduled_time_across_dst(day: date, due: datetime) -> None:
    assert scheduled_at(day, _berlin()) == due
    assert next_run(due - timedelta(seconds=1), _berlin()) == due
    assert next_run(due, _berlin()) == scheduled_at(day + timedelta(days=1), _berlin())


def test_local_time_in_the_dst_gap_and_overlap() -> None:
    # 02:30 does not exist on 29 March in Berlin: it runs after the gap, 03:30 CEST.
    assert scheduled_at(date(2026, 3, 28), _berlin("02:30")) == datetime(
        2026, 3, 29, 1, 30, tzinfo=UTC
    )
    # 02:30 happens twice on 25 October: the first one (CEST) only.
    first = scheduled_at(date(2026, 10, 24), _berlin("02:30"))
    assert first == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert next_run(first, _berlin("02:30")) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)


@pytest.fixture
async def berlin_app(
    database_url: str,
) -> AsyncIterator[tuple[App, FakeClock, MemoryChannel]]:
    settings = Settings(
        database=DatabaseSettings(url=database_url),
        escalation=EscalationSettings(default_destination="memory:l2"),
        digest=DigestSettings(timezone="Europe/Berlin", recipients=["memory:managers"]),
    )
    clock = FakeClock(datetime(2026, 3, 26, 12, 0, tzinfo=UTC))
    application = await App.create(settings, clock)
    try:
        yield application, clock, MemoryChannel(application)
    finally:
        await application.close()


@pytest.mark.parametrize(
    "start", [datetime(2026, 3, 26, 12, 0, tzinfo=UTC), datetime(2026, 10, 22, 12, 0, tzinfo=UTC)]
)
async def test_scheduled_digest_arrives_at_local_time_once_across_dst(
    berlin_app: tuple[App, FakeClock, MemoryChannel], start: datetime
) -> None:
    """A scheduler loop (job at next_run plus a 5-minute safety sweep) over five days."""
    app, clock, mem = berlin_app
    clock.set(start)
    # At start-up: the catch-up of the latest day whose time has passed (the day before).
    assert await send_due(app, start) == 1
    assert missed_day(start, app.settings) == (start - timedelta(days=1)).date()
    sent_at: dict[str, datetime] = {}
    job_at = next_run(clock.now(), app.settings)
    end = start + timedelta(days=5)
    while clock.now() < end:
        clock.advance(timedelta(minutes=5))
        now = clock.now()
        due_job = now >= job_at
        if await send_due(app, now):
            assert due_job, f"sent at {now} before the job time {job_at}"
            day = missed_day(now, app.settings)
            assert day is not None
            sent_at[day.isoformat()] = now
        if due_job:
            job_at = next_run(now, app.settings)
    await mem.deliver()
    # 09:00 Berlin every day: 08:00 UTC in winter time, 07:00 UTC in summer time.
    expected = {
        (start + timedelta(days=i)).date().isoformat(): scheduled_at(
            (start + timedelta(days=i)).date(), app.settings
        )
        for i in range(5)
    }
    assert sent_at == expected
    hours = sorted({at.hour for at in sent_at.values()})
    assert hours == [7, 8], "the UTC hour must change with the clocks"
    assert len([d for d in mem.l2("managers") if d.kind == "notify"]) == 6  # with the catch-up


async def test_missed_days_catch_up_once_for_the_latest(
    berlin_app: tuple[App, FakeClock, MemoryChannel],
) -> None:
    app, clock, _mem = berlin_app
    # Down from Monday 23 March until Thursday 26 March 10:15 Berlin (09:15 UTC).
    restart = datetime(2026, 3, 26, 9, 15, tzinfo=UTC)
    assert missed_day(restart, app.settings) == date(2026, 3, 25)
    assert missed_day(datetime(2026, 3, 26, 7, 59, tzinfo=UTC), app.settings) == date(2026, 3, 24)
    assert await send_due(app, restart) == 1
    restarted = await App.create(app.settings, clock, migrate=False)
    try:
        assert await send_due(restarted, restart + timedelta(minutes=1)) == 0
    finally:
        await restarted.close()
    async with app.db.transaction() as s:
        days = (await s.execute(select(DigestRun.day))).scalars().all()
    assert days == ["2026-03-25"]
    off = app.settings.model_copy(update={"digest": DigestSettings(enabled=False)})
    assert missed_day(restart, off) is None


async def test_long_lists_are_cut_to_fit_a_message(
    mem: MemoryChannel, app: App, clock: FakeClock
) -> None:
    await build_history(app, mem, clock)
    report = await compute_report(
        app.db, app.content, app.settings, msk(19, 0), msk(20, 0), msk(20, 10)
    )
    template = report.breaches[0]
    report.breaches = [
        replace(template, number=f"FL-{9000 + i}", owner="A very long consultant name " * 3)
        for i in range(400)
    ]
    assert isinstance(report.breaches[0], Breach)
    for lang in ("en", "ru"):
        text = render_text(report, report, date(2026, 1, 19), app.content, app.settings, lang=lang)
        assert len(text.encode("utf-16-le")) // 2 <= MAX_UTF16
        assert re.search(r"(and|ещё) \d+", text)
        assert max(len(line) for line in text.splitlines()) < 100  # phone-sized lines


def test_user_text_is_one_short_line() -> None:
    assert user_text("two\nlines\x00 and\ttabs") == "two lines and tabs"
    assert user_text("x" * 100, 10) == "x" * 9 + "…"


async def test_docs_example_is_generated(mem: MemoryChannel, app: App, clock: FakeClock) -> None:
    """docs/digest.md shows a digest this code produced; UPDATE_DIGEST_DOCS=1 rewrites it."""
    await build_history(app, mem, clock)
    digest = await build_digest(app, date(2026, 1, 19), msk(20, 10), chart=False)
    block = f"```text\n{digest.text}\n```"
    text = DOCS.read_text(encoding="utf-8")
    start, end = "<!-- example:start -->", "<!-- example:end -->"
    current = text.split(start, 1)[1].split(end, 1)[0].strip()
    if os.environ.get("UPDATE_DIGEST_DOCS") == "1":
        DOCS.write_text(text.replace(current, block), encoding="utf-8")
        current = block
    assert current == block
