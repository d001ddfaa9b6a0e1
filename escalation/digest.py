"""The managers' daily SLA digest: text for a phone, an optional chart, sent exactly once.

The digest covers one local day of the managers' time zone ("yesterday" when it runs)
with the week to date beside it. :func:`send_digest` claims ``digest_runs(day, target)``
and queues the outbox row in the same transaction, so a day reaches each chat once, also
when two processes run or a job fires twice. :func:`send_due` is the whole schedule: it
sends the latest day whose time has come and is safe to call at any moment (at start for
the catch-up, at :func:`next_run`, or from a periodic job).
"""

from __future__ import annotations

import base64
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.content import Content
from bot.i18n import lookup
from bot.storage.db import Database
from bot.storage.models import DigestRun
from bot.storage.repo import enqueue, insert_once, log_event
from config.settings import DigestSettings, Settings
from escalation.chart import render_chart
from escalation.desk import destination_split
from escalation.report import DayPoint, Report, day_bounds, load_history

log = logging.getLogger(__name__)

# Telegram allows 4096 UTF-16 code units per message; Slack 3000 characters per section
# block (the Slack sender splits into sections itself). Stay under both with a margin.
MAX_UTF16 = 3900
SERIES_DAYS = 14
# How many rows each list shows before "... and N more" (halved until the text fits).
LIST_CAPS: dict[str, int] = {
    "sla": 12,
    "breaches": 10,
    "at_risk": 8,
    "categories": 5,
    "steps": 3,
    "gaps": 3,
    "consultants": 8,
}

TEXTS: dict[str, dict[str, str]] = {
    "title": {"en": "📊 Support digest · {day}", "ru": "📊 Сводка поддержки · {day}"},
    "columns": {"en": "day · week to date ({week})", "ru": "день · неделя ({week})"},
    "volume": {"en": "💬 Volume", "ru": "💬 Обращения"},
    "conversations": {"en": "Conversations", "ru": "Диалоги"},
    "solved_kb": {"en": "Solved by KB", "ru": "Решено базой знаний"},
    "solved_checklist": {"en": "Solved by checklist", "ru": "Решено чек-листом"},
    "escalated": {"en": "Escalated to L2", "ru": "Передано на L2"},
    "resolved": {"en": "Resolved L2/L3", "ru": "Решено L2/L3"},
    "backlog": {
        "en": "Open backlog: {n} ({unclaimed} unclaimed)",
        "ru": "Открыто на конец дня: {n} (не взято: {unclaimed})",
    },
    "deflection": {
        "en": "🎯 Deflection: {rate} ({ok}/{all}) · {week_rate}",
        "ru": "🎯 Решено ботом: {rate} ({ok}/{all}) · {week_rate}",
    },
    "deflection_note": {
        "en": "  {back} came back with the same problem; {pending} still within {window}",
        "ru": "  вернулись с той же проблемой: {back}; ещё в окне {window}: {pending}",
    },
    "frt": {"en": "⏱ First response, business time", "ru": "⏱ Первый ответ, рабочее время"},
    "resolution": {"en": "🏁 Resolution, business time", "ru": "🏁 Решение, рабочее время"},
    "percentiles": {
        "en": "{tier}: p50 {p50} · p90 {p90} (n={n})",
        "ru": "{tier}: p50 {p50} · p90 {p90} (n={n})",
    },
    "all_tiers": {"en": "All", "ru": "Все"},
    "week_all": {"en": "Week, all tiers", "ru": "Неделя, все тарифы"},
    "none_yet": {"en": "no tickets", "ru": "нет заявок"},
    "sla": {
        "en": "✅ SLA met: {rate} ({met}/{all}) · {week_rate}",
        "ru": "✅ SLA выполнен: {rate} ({met}/{all}) · {week_rate}",
    },
    "breaches": {"en": "🚨 Breaches", "ru": "🚨 Нарушения SLA"},
    "breach": {
        "en": "{number} {target} +{over} · {owner}",
        "ru": "{number} {target} +{over} · {owner}",
    },
    "at_risk": {"en": "⚠️ At risk now", "ru": "⚠️ Под угрозой сейчас"},
    "risk_left": {
        "en": "{number} {target}: {left} left · {owner}",
        "ru": "{number} {target}: осталось {left} · {owner}",
    },
    "risk_over": {
        "en": "{number} {target}: overdue {left} · {owner}",
        "ru": "{number} {target}: просрочено {left} · {owner}",
    },
    "paused": {"en": " (waiting for customer)", "ru": " (ждём клиента)"},
    "nobody": {"en": "nobody", "ru": "никто"},
    "csat": {
        "en": "⭐ CSAT: {avg} ({n}/{surveys} rated, {rate}) · {week_avg}",
        "ru": "⭐ Оценка: {avg} ({n}/{surveys} оценили, {rate}) · {week_avg}",
    },
    "categories": {"en": "🏷 Top categories · week", "ru": "🏷 Частые категории · неделя"},
    "category": {
        "en": "{title}: {day} · {week} (bot solved {solved})",
        "ru": "{title}: {day} · {week} (решил бот: {solved})",
    },
    "steps": {
        "en": "🧾 Checklist steps that didn't help · week",
        "ru": "🧾 Шаги чек-листов, которые не помогли · неделя",
    },
    "step": {
        "en": "{category} / {step}: {bad} of {all}",
        "ru": "{category} / {step}: {bad} из {all}",
    },
    "gaps": {"en": "📚 KB gaps · week", "ru": "📚 Пробелы базы знаний · неделя"},
    "gap": {"en": "{text} ×{n}", "ru": "{text} ×{n}"},
    "consultants": {
        "en": "👥 Consultants: claimed/replies/resolved",
        "ru": "👥 Консультанты: взято/ответов/решено",
    },
    "consultant": {"en": "{name}: {day} · {week}", "ru": "{name}: {day} · {week}"},
    "more": {"en": "… and {n} more", "ru": "… и ещё {n}"},
    "quiet": {"en": "Nothing happened.", "ru": "Событий не было."},
    "target_first_response": {"en": "first response", "ru": "первый ответ"},
    "target_next_response": {"en": "next response", "ru": "следующий ответ"},
    "target_resolution": {"en": "resolution", "ru": "решение"},
    "short_first_response": {"en": "FR", "ru": "1-й"},
    "short_next_response": {"en": "NR", "ru": "след."},
    "short_resolution": {"en": "Res", "ru": "реш."},
    "prio_critical": {"en": "critical", "ru": "критический"},
    "prio_high": {"en": "high", "ru": "высокий"},
    "prio_normal": {"en": "normal", "ru": "обычный"},
    "prio_low": {"en": "low", "ru": "низкий"},
}

_WEEKDAYS = {
    "en": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
    "ru": ("пн", "вт", "ср", "чт", "пт", "сб", "вс"),
}
_MONTHS = {
    "en": ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
    "ru": ("янв", "фев", "мар", "апр", "мая", "июн", "июл", "авг", "сен", "окт", "ноя", "дек"),
}


def tr(key: str, lang: str, **kwargs: Any) -> str:
    """A digest phrase in ``lang``."""
    return lookup(TEXTS, key, lang, **kwargs)


class DigestApp(Protocol):
    """What the digest needs of the application (:class:`bot.app.App` has it)."""

    db: Database
    content: Content
    settings: Settings


@dataclass(frozen=True)
class Digest:
    """One day's digest, ready to send."""

    day: date
    lang: str
    text: str
    image_png: bytes | None
    report: Report  # the day
    week: Report  # the week to date
    series: list[DayPoint] = field(default_factory=list)

    @property
    def image_name(self) -> str:
        """``digest-YYYY-MM-DD.png``."""
        return f"digest-{self.day.isoformat()}.png"

    def payload(self) -> dict[str, Any]:
        """The outbox ``notify`` payload: text, and the chart as base64 PNG when there is one."""
        out: dict[str, Any] = {"text": self.text}
        if self.image_png is not None:
            out["image_png_b64"] = base64.b64encode(self.image_png).decode("ascii")
            out["image_name"] = self.image_name
        return out


# --------------------------------------------------------------------------- building


def week_start(day: date) -> date:
    """The Monday of ``day``'s week."""
    return day - timedelta(days=day.weekday())


async def build_digest(
    app: DigestApp,
    day: date,
    now: datetime,
    *,
    lang: str | None = None,
    chart: bool | None = None,
) -> Digest:
    """The digest of the local ``day`` (managers' time zone) as known at ``now``.

    ``lang`` and ``chart`` default to the ``[digest]`` settings (``/digest`` may ask for
    another language).
    """
    cfg = app.settings.digest
    lang = lang or cfg.language
    tz = ZoneInfo(cfg.timezone)
    day_since, day_until = day_bounds(day, tz)
    week_since, _ = day_bounds(week_start(day), tz)
    first, _ = day_bounds(day - timedelta(days=SERIES_DAYS - 1), tz)
    history = await load_history(app.db, app.content, app.settings, min(first, week_since), now)
    report = history.report(day_since, day_until)
    week = history.report(week_since, day_until)
    series = history.series(day, tz, days=SERIES_DAYS)
    report.series = series
    text = render_text(report, week, day, app.content, app.settings, lang=lang)
    want_chart = cfg.chart if chart is None else chart
    image = render_chart(series, lang) if want_chart else None
    return Digest(day, lang, text, image, report, week, series)


def render_text(
    report: Report,
    week: Report,
    day: date,
    content: Content,
    settings: Settings,
    *,
    lang: str = "en",
    max_utf16: int = MAX_UTF16,
) -> str:
    """The digest text: short lines, emoji section markers, no tables; shortened lists
    until it fits ``max_utf16`` UTF-16 units (Telegram's unit of length)."""
    caps = dict(LIST_CAPS)
    text = _Render(report, week, day, content, settings, lang, caps).text()
    while _utf16(text) > max_utf16 and any(v > 1 for v in caps.values()):
        caps = {k: max(1, v // 2) for k, v in caps.items()}
        text = _Render(report, week, day, content, settings, lang, caps).text()
    if _utf16(text) > max_utf16:  # pathological: cut at a line boundary
        lines = text.splitlines()
        while lines and _utf16("\n".join([*lines, "…"])) > max_utf16:
            lines.pop()
        text = "\n".join([*lines, "…"])
    return text


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


_SPACES = re.compile(r"\s+")


def user_text(text: str, limit: int = 60) -> str:
    """Words someone typed, made safe for one digest line: one line, no control
    characters, at most ``limit`` characters (the senders escape the markup)."""
    flat = _SPACES.sub(" ", "".join(ch if ch.isprintable() else " " for ch in text)).strip()
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def human(delta: timedelta | None, lang: str = "en") -> str:
    """Business durations in hours and minutes (never days: a business "day" is ambiguous):
    ``45m``, ``1h 05m``, ``26h 30m``; ``—`` for none."""
    if delta is None:
        return "—"
    minutes = int(abs(delta.total_seconds()) // 60)
    hours, minutes = divmod(minutes, 60)
    if lang == "ru":
        return f"{hours} ч {minutes:02d} мин" if hours else f"{minutes} мин"
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m"


def wall_clock(delta: timedelta, lang: str = "en") -> str:
    """A configured window in calendar terms: ``3 days``, ``12h``."""
    hours = int(delta.total_seconds() // 3600)
    if hours and hours % 24 == 0:
        days = hours // 24
        return f"{days} дн." if lang == "ru" else f"{days} day{'s' if days != 1 else ''}"
    return human(delta, lang)


def percent(rate: float | None) -> str:
    """``0.667`` -> ``67%``; ``—`` when undefined."""
    return "—" if rate is None else f"{round(rate * 100)}%"


def local_date(day: date, lang: str) -> str:
    """``Mon 12 Jan 2026`` / ``пн 12 янв 2026``."""
    code = "ru" if lang == "ru" else "en"
    return f"{_WEEKDAYS[code][day.weekday()]} {day.day} {_MONTHS[code][day.month - 1]} {day.year}"


class _Render:
    """One rendering of the digest with given list caps."""

    def __init__(
        self,
        report: Report,
        week: Report,
        day: date,
        content: Content,
        settings: Settings,
        lang: str,
        caps: dict[str, int],
    ) -> None:
        self.r, self.w, self.day = report, week, day
        self.content, self.settings, self.lang, self.caps = content, settings, lang, caps
        self.lines: list[str] = []

    def t(self, key: str, **kwargs: Any) -> str:
        return tr(key, self.lang, **kwargs)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def capped(self, key: str, rows: list[str]) -> None:
        cap = self.caps[key]
        self.add(*rows[:cap])
        if len(rows) > cap:
            self.add(self.t("more", n=len(rows) - cap))

    def tier(self, tier: str) -> str:
        if tier == "all":
            return self.t("all_tiers")
        found = self.content.sla.tiers.get(tier)
        return found.title.get(self.lang) if found else tier

    def priority(self, prio: str) -> str:
        return self.t("prio_" + prio) if "prio_" + prio in TEXTS else prio

    def owner(self, name: str | None) -> str:
        return user_text(name, 30) if name else self.t("nobody")

    def text(self) -> str:
        monday = week_start(self.day)
        month = _MONTHS["ru" if self.lang == "ru" else "en"][self.day.month - 1]
        span = (
            f"{self.day.day} {month}"
            if monday == self.day
            else f"{monday.day}–{self.day.day} {month}"
            if monday.month == self.day.month
            else f"{monday.day}.{monday.month:02d}–{self.day.day}.{self.day.month:02d}"
        )
        self.add(self.t("title", day=local_date(self.day, self.lang)), self.t("columns", week=span))
        self.volume()
        self.times("frt", "first_response")
        self.times("resolution", "resolution")
        self.sla()
        self.add("", self._csat())
        self.lists()
        return "\n".join(self.lines).strip()

    def volume(self) -> None:
        r, w = self.r.volume, self.w.volume
        self.add("", self.t("volume"))
        for key in ("conversations", "solved_kb", "solved_checklist", "escalated"):
            self.add(f"{self.t(key)}: {getattr(r, key)} · {getattr(w, key)}")
        self.add(
            f"{self.t('resolved')}: {r.resolved_l2}/{r.resolved_l3} · "
            f"{w.resolved_l2}/{w.resolved_l3}",
            self.t("backlog", n=r.backlog, unclaimed=r.backlog_unclaimed),
        )
        d, wd = self.r.deflection, self.w.deflection
        self.add(
            self.t(
                "deflection",
                rate=percent(d.rate),
                ok=d.deflected,
                all=d.problems,
                week_rate=percent(wd.rate),
            )
        )
        if d.recontacted or d.pending:
            window = wall_clock(self.settings.digest.recontact_window, self.lang)
            self.add(
                self.t("deflection_note", back=d.recontacted, pending=d.pending, window=window)
            )

    def times(self, title: str, kind: str) -> None:
        rows = self.r.first_response if kind == "first_response" else self.r.resolution
        self.add("", self.t(title))
        for row in rows:
            if row.count and row.tier != "all":
                self.add(self._pct_line(self.tier(row.tier), row.p50, row.p90, row.count))
        day_all = self.r.time_stats(kind, "all")
        week_all = self.w.time_stats(kind, "all")
        if day_all is not None and day_all.count and len([x for x in rows if x.count]) > 2:
            self.add(self._pct_line(self.t("all_tiers"), day_all.p50, day_all.p90, day_all.count))
        if week_all is not None and week_all.count:
            self.add(self._pct_line(self.t("week_all"), week_all.p50, week_all.p90, week_all.count))
        else:
            self.add(self.t("none_yet"))

    def _pct_line(self, who: str, p50: timedelta | None, p90: timedelta | None, n: int) -> str:
        return self.t(
            "percentiles", tier=who, p50=human(p50, self.lang), p90=human(p90, self.lang), n=n
        )

    def sla(self) -> None:
        met, breached = self.r.sla_totals()
        self.add(
            "",
            self.t(
                "sla",
                rate=percent(self.r.sla_compliance),
                met=met,
                all=met + breached,
                week_rate=percent(self.w.sla_compliance),
            ),
        )
        # One line per tier x priority: "Free · high: FR 2✓ 1✗ · Res 1✓".
        grouped: dict[tuple[str, str], list[str]] = {}
        for cell in self.r.sla:
            marks = []
            if cell.met:
                marks.append(f"{cell.met}✓")
            if cell.breached:
                marks.append(f"{cell.breached}✗")
            grouped.setdefault((cell.tier, cell.priority), []).append(
                f"{self.t('short_' + cell.target)} {' '.join(marks)}"
            )
        self.capped(
            "sla",
            [
                f"{self.tier(tier)} · {self.priority(prio)}: " + " · ".join(parts)
                for (tier, prio), parts in grouped.items()
            ],
        )
        if self.r.breaches:
            self.add(self.t("breaches"))
            self.capped(
                "breaches",
                [
                    self.t(
                        "breach",
                        number=b.number,
                        target=self.t("target_" + b.target),
                        over=human(b.over, self.lang),
                        owner=self.owner(b.owner),
                    )
                    for b in self.r.breaches
                ],
            )
        if self.r.at_risk:
            self.add(self.t("at_risk"))
            rows = []
            for a in self.r.at_risk:
                key = "risk_over" if a.remaining <= timedelta(0) else "risk_left"
                line = self.t(
                    key,
                    number=a.number,
                    target=self.t("target_" + a.target),
                    left=human(a.remaining, self.lang),
                    owner=self.owner(a.owner),
                )
                rows.append(line + (self.t("paused") if a.paused else ""))
            self.capped("at_risk", rows)

    def _csat(self) -> str:
        c, wc = self.r.csat, self.w.csat
        return self.t(
            "csat",
            avg="—" if c.average is None else f"{c.average:.1f}",
            n=c.responses,
            surveys=c.surveys,
            rate=percent(c.response_rate),
            week_avg="—" if wc.average is None else f"{wc.average:.1f}",
        )

    def lists(self) -> None:
        w = self.w
        if w.categories:
            day_counts = {c.category: c.problems for c in self.r.categories}
            self.add("", self.t("categories"))
            self.capped(
                "categories",
                [
                    self.t(
                        "category",
                        title=self._category(c.category),
                        day=day_counts.get(c.category, 0),
                        week=c.problems,
                        solved=c.solved,
                    )
                    for c in w.categories
                ],
            )
        if w.checklist_steps:
            self.add("", self.t("steps"))
            self.capped(
                "steps",
                [
                    self.t(
                        "step",
                        category=self._category(s.category),
                        step=self._step(s.category, s.step),
                        bad=s.not_helped,
                        all=s.answers,
                    )
                    for s in w.checklist_steps
                ],
            )
        if w.kb_gaps:
            self.add("", self.t("gaps"))
            quote = ("«", "»") if self.lang == "ru" else ("“", "”")
            self.capped(
                "gaps",
                [
                    self.t("gap", text=quote[0] + user_text(g.representative) + quote[1], n=g.count)
                    for g in w.kb_gaps
                ],
            )
        if w.consultants:
            day_loads = {c.key: c for c in self.r.consultants}
            self.add("", self.t("consultants"))
            rows = []
            for c in w.consultants:
                d = day_loads.get(c.key)
                today = f"{d.claimed}/{d.replies}/{d.resolved}" if d else "0/0/0"
                rows.append(
                    self.t(
                        "consultant",
                        name=user_text(c.name, 30),
                        day=today,
                        week=f"{c.claimed}/{c.replies}/{c.resolved}",
                    )
                )
            self.capped("consultants", rows)

    def _category(self, cat: str) -> str:
        found = self.content.categories.get(cat)
        return user_text(found.title.get(self.lang), 30) if found else cat

    def _step(self, cat: str, step_id: str) -> str:
        """The step's instruction, cut short (ids mean nothing to a manager)."""
        found = self.content.categories.get(cat)
        step = found.step(step_id) if found is not None else None
        return user_text(step.text.get(self.lang), 40) if step is not None else step_id


# --------------------------------------------------------------------------- sending


async def claim_digest(s: AsyncSession, day: date, target: str, now: datetime) -> bool:
    """Insert ``digest_runs(day, target)``; ``False`` if that digest was already claimed
    (a concurrent claimer waits for the first one's commit and then finds the row)."""
    return await insert_once(s, DigestRun, day=day.isoformat(), target=target, created_at=now)


async def sent_targets(db: Database, day: date) -> set[str]:
    """The recipients that already have ``day``'s digest."""
    async with db.read() as s:
        rows = await s.execute(select(DigestRun.target).where(DigestRun.day == day.isoformat()))
        return set(rows.scalars())


async def send_digest(app: DigestApp, day: date, now: datetime) -> int:
    """Queue ``day``'s digest to every configured recipient that has not had it; return
    how many were queued.

    Each recipient is one transaction: claim ``digest_runs(day, target)``, then the
    outbox ``notify`` row and a ``digest_sent`` event. A second caller (a retry, another
    process) finds the claim and queues nothing. The digest is computed once, before the
    claims, and not at all when every recipient already has it. Wake the outbox
    dispatcher afterwards (or let its poll pick the rows up).
    """
    recipients = list(dict.fromkeys(app.settings.digest.recipients))
    if not recipients:
        return 0
    done = await sent_targets(app.db, day)
    if all(r in done for r in recipients):
        return 0
    digest = await build_digest(app, day, now)
    payload = digest.payload()
    queued = 0
    for dest in recipients:
        if dest in done:
            continue
        channel, target = destination_split(dest)
        async with app.db.transaction() as s:
            if not await claim_digest(s, day, dest, now):
                continue
            await enqueue(
                s, channel=channel, target=target, kind="notify", payload=payload, now=now
            )
            await log_event(
                s, "digest_sent", actor="digest", at=now, day=day.isoformat(), target=dest
            )
        queued += 1
    log.info("digest for %s queued to %d recipient(s)", day.isoformat(), queued)
    return queued


# --------------------------------------------------------------------------- schedule


def _parse_time(cfg: DigestSettings) -> time:
    hours, minutes = cfg.time.split(":")
    return time(int(hours), int(minutes))


def scheduled_at(day: date, settings: Settings) -> datetime:
    """When the digest of ``day`` is due (UTC): the configured local time on the next day.

    A local time that does not exist that night (spring forward, e.g. 02:30) runs at the
    same offset as before the change, i.e. after the gap (03:30); one that happens twice
    (fall back) runs at its first occurrence only.
    """
    cfg = settings.digest
    local = datetime.combine(
        day + timedelta(days=1), _parse_time(cfg), tzinfo=ZoneInfo(cfg.timezone)
    )
    return local.astimezone(UTC)  # fold=0: the earlier offset in a gap or an overlap


def next_run(now: datetime, settings: Settings) -> datetime:
    """The next scheduled digest moment strictly after ``now`` (UTC), DST-correct."""
    today = now.astimezone(ZoneInfo(settings.digest.timezone)).date()
    for offset in (-2, -1, 0, 1):
        moment = scheduled_at(today + timedelta(days=offset), settings)
        if moment > now:
            return moment
    raise AssertionError("unreachable: a local time recurs every day")  # pragma: no cover


def missed_day(now: datetime, settings: Settings) -> date | None:
    """The latest day whose digest time has passed at ``now`` (``None`` when digests are
    off or go to nobody). Whether it was sent is for :func:`send_digest` to find out: it
    skips every recipient with a ``digest_runs`` row, so calling it again costs nothing.
    Older missed days are never sent: only the latest digest is news.
    """
    cfg = settings.digest
    if not cfg.enabled or not cfg.recipients:
        return None
    today = now.astimezone(ZoneInfo(cfg.timezone)).date()
    for offset in (1, 2, 3):
        day = today - timedelta(days=offset)
        if scheduled_at(day, settings) <= now:
            return day
    raise AssertionError(
        "unreachable: yesterday's digest is due by today's end"
    )  # pragma: no cover


async def send_due(app: DigestApp, now: datetime) -> int:
    """Send the latest digest whose time has come, if not sent yet; return how many
    recipients were queued. Call it at start (catch-up after downtime), at
    :func:`next_run`, or every few minutes: it is idempotent."""
    day = missed_day(now, app.settings)
    if day is None:
        return 0
    return await send_digest(app, day, now)
