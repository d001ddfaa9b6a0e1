"""Reports for managers: every figure of the SLA digest, for any period, from the event log.

Counts and times come from the append-only ``events`` table, replayed ticket by ticket
(open, claims, replies, pauses, resolutions, reopenings, priority changes). Table rows are
read only for what the log does not carry: the user's words (``conversations.problem``,
``kb_queries.query``, ``kb_impressions.query``) and a conversation's final category.

Conventions (``docs/digest.md`` explains each figure for managers):

* A period is ``[since, until)``; an event belongs to it by its ``at``.
* Business time is counted in the ticket tier's calendar with the "waiting for customer"
  pauses cut out (:meth:`BusinessCalendar.consumed`), exactly as the SLA timers count it.
* Percentiles are nearest-rank: p90 is the smallest observed value that at least 90% of
  the tickets did not exceed, so it is always a real ticket's time.
* SLA outcome of a clock: **met** when it stopped (first reply, next reply, resolution)
  inside the period within its target; **breached** when its deadline passed inside the
  period while the ticket was open and unanswered. A clock is judged once, when it
  finishes or when it breaches, so a week is the sum of its days.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from rapidfuzz import fuzz
from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.content import Content
from bot.storage.db import Database
from bot.storage.models import Conversation, Event, KbImpression, KbQuery
from config.categories import GOTO_SOLVED
from config.settings import Settings
from escalation.calendar import Pause
from kb.gaps import find_gaps
from kb.normalize import tokens

OPEN_STATUSES = ("new", "open", "in_progress", "waiting")
TARGETS = ("first_response", "next_response", "resolution")
PRIORITY_ORDER = ("critical", "high", "normal", "low")
# Two problem texts of one user are "the same problem" at or above this rapidfuzz
# token_set_ratio over their normalised stems (stop words dropped): "forgot my password"
# and "password reset link never arrives" share too little; "can't log in" and
# "still can't log in to my account" match.
SAME_PROBLEM_SIMILARITY = 80.0
# A ticket is "at risk" when its most urgent clock has this share of its target left.
AT_RISK_FRACTION = 0.25
_SKELETON = ("ticket_opened", "ticket_resolved", "ticket_reopened", "ticket_cancelled")
_CHUNK = 500  # ids per IN (...) query: far below every backend's parameter limit


# --------------------------------------------------------------------------- result types


@dataclass(frozen=True)
class Volume:
    """How many conversations and tickets the period saw."""

    conversations: int  # conversations started
    solved_kb: int  # ended "solved by a KB article"
    solved_checklist: int  # ended "solved by a checklist step"
    escalated: int  # tickets opened
    resolved_l2: int  # tickets resolved while at L2 (distinct tickets)
    resolved_l3: int  # tickets resolved while at L3 (distinct tickets)
    backlog: int  # tickets open at the end of the period
    backlog_unclaimed: int  # of those, nobody owned them
    cancelled: int  # conversations the user cancelled
    abandoned: int  # conversations the user left for another one


@dataclass(frozen=True)
class Deflection:
    """Problems solved by the bot, counted only when the user did not come back."""

    problems: int  # bot solves + escalations
    bot_solves: int  # solved_kb + solved_checklist
    recontacted: int  # solves whose user came back with the same problem in the window
    deflected: int  # bot_solves - recontacted
    pending: int  # deflected solves whose window is still open at ``now`` (may drop)
    rate: float | None  # deflected / problems


@dataclass(frozen=True)
class TimeStats:
    """Business-time percentiles of one license tier (tier "all" = every tier)."""

    tier: str
    count: int
    p50: timedelta | None
    p90: timedelta | None


@dataclass(frozen=True)
class SlaCell:
    """SLA outcomes of one tier x priority x target."""

    tier: str
    priority: str
    target: str
    met: int
    breached: int

    @property
    def compliance(self) -> float | None:
        """met / (met + breached)."""
        total = self.met + self.breached
        return self.met / total if total else None


@dataclass(frozen=True)
class Breach:
    """A deadline that passed in the period."""

    ticket_id: int
    number: str
    target: str
    tier: str
    priority: str
    due: datetime  # when it breached (UTC)
    over: timedelta  # business time beyond the target, at its stop or at ``now``
    owner: str | None  # who owned the ticket when it breached
    finished: bool  # the clock has stopped since (answered, resolved, cancelled)


@dataclass(frozen=True)
class AtRisk:
    """An open ticket whose most urgent clock is close to, or past, its deadline."""

    ticket_id: int
    number: str
    target: str
    tier: str
    priority: str
    due: datetime | None  # None while paused (waiting for the customer)
    remaining: timedelta  # business time left; negative = overdue by that much
    owner: str | None
    paused: bool


@dataclass(frozen=True)
class Csat:
    """Customer ratings (1-5) received in the period."""

    responses: int
    surveys: int  # resolutions in the period: each one asks for a rating
    average: float | None

    @property
    def response_rate(self) -> float | None:
        """responses / surveys."""
        return self.responses / self.surveys if self.surveys else None


@dataclass(frozen=True)
class CategoryCount:
    """Problems of one category and how they ended."""

    category: str
    title: str
    problems: int
    solved: int
    escalated: int


@dataclass(frozen=True)
class StepStat:
    """A checklist step and how often its answer was not "fixed it"."""

    category: str
    step: str
    answers: int
    not_helped: int


@dataclass(frozen=True)
class Gap:
    """A group of similar questions with no good KB answer."""

    representative: str
    count: int
    examples: tuple[str, ...]
    reasons: dict[str, int]


@dataclass(frozen=True)
class ConsultantLoad:
    """What one L2 consultant did in the period."""

    key: str
    name: str
    claimed: int
    replies: int
    resolved: int


@dataclass(frozen=True)
class DayPoint:
    """One day of the 14-day series (the chart)."""

    day: date
    conversations: int
    problems: int
    deflected: int
    escalated: int
    deflection: float | None
    sla_met: int
    sla_breached: int

    @property
    def sla_compliance(self) -> float | None:
        """met / (met + breached) of every SLA clock judged that day."""
        total = self.sla_met + self.sla_breached
        return self.sla_met / total if total else None


@dataclass
class Report:
    """Every figure of the digest for one period."""

    since: datetime
    until: datetime
    now: datetime
    volume: Volume
    deflection: Deflection
    first_response: list[TimeStats]
    resolution: list[TimeStats]
    sla: list[SlaCell]
    breaches: list[Breach]
    at_risk: list[AtRisk]
    csat: Csat
    categories: list[CategoryCount]
    checklist_steps: list[StepStat]
    kb_gaps: list[Gap]
    consultants: list[ConsultantLoad]
    series: list[DayPoint] = field(default_factory=list)

    def sla_totals(self, target: str | None = None) -> tuple[int, int]:
        """(met, breached) over every cell, or over one target's cells."""
        cells = [c for c in self.sla if target is None or c.target == target]
        return sum(c.met for c in cells), sum(c.breached for c in cells)

    @property
    def sla_compliance(self) -> float | None:
        """met / (met + breached) over every clock judged in the period."""
        met, breached = self.sla_totals()
        return met / (met + breached) if met + breached else None

    def time_stats(self, kind: str, tier: str) -> TimeStats | None:
        """The ``first_response`` or ``resolution`` row of ``tier`` (or ``"all"``)."""
        rows = self.first_response if kind == "first_response" else self.resolution
        return next((r for r in rows if r.tier == tier), None)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: datetimes as ISO 8601 UTC, durations as whole seconds
        (keys ending in ``_seconds``), rates as fractions 0..1 (``None`` when undefined)."""
        out: dict[str, Any] = {
            "since": _iso(self.since),
            "until": _iso(self.until),
            "now": _iso(self.now),
            "volume": _plain(self.volume),
            "deflection": _plain(self.deflection),
            "first_response": [_plain(r) for r in self.first_response],
            "resolution": [_plain(r) for r in self.resolution],
            "sla": {
                "met": self.sla_totals()[0],
                "breached": self.sla_totals()[1],
                "compliance": self.sla_compliance,
                "cells": [{**_plain(c), "compliance": c.compliance} for c in self.sla],
            },
            "breaches": [_plain(b) for b in self.breaches],
            "at_risk": [_plain(a) for a in self.at_risk],
            "csat": {**_plain(self.csat), "response_rate": self.csat.response_rate},
            "categories": [_plain(c) for c in self.categories],
            "checklist_steps": [_plain(s) for s in self.checklist_steps],
            "kb_gaps": [_plain(g) for g in self.kb_gaps],
            "consultants": [_plain(c) for c in self.consultants],
        }
        if self.series:
            out["series"] = [{**_plain(p), "sla_compliance": p.sla_compliance} for p in self.series]
        return out

    def to_csv_rows(self) -> list[list[str]]:
        """The report as long-format rows ``section, key, metric, value`` (with a header
        row): one figure per row, so a spreadsheet pivot rebuilds any table."""
        rows: list[list[str]] = [["section", "key", "metric", "value"]]

        def add(section: str, key: str, values: dict[str, Any]) -> None:
            for metric, value in values.items():
                rows.append([section, key, metric, _csv_value(value)])

        add("period", "", {"since": self.since, "until": self.until, "now": self.now})
        add("volume", "", _plain(self.volume))
        add("deflection", "", _plain(self.deflection))
        for kind, stats in (
            ("first_response", self.first_response),
            ("resolution", self.resolution),
        ):
            for r in stats:
                add(kind, r.tier, {k: v for k, v in _plain(r).items() if k != "tier"})
        for cell in self.sla:
            add(
                "sla",
                f"{cell.tier}/{cell.priority}/{cell.target}",
                {"met": cell.met, "breached": cell.breached, "compliance": cell.compliance},
            )
        for b in self.breaches:
            add("breach", f"{b.number}/{b.target}", _without(_plain(b), "number", "target"))
        for a in self.at_risk:
            add("at_risk", f"{a.number}/{a.target}", _without(_plain(a), "number", "target"))
        add("csat", "", {**_plain(self.csat), "response_rate": self.csat.response_rate})
        for cat in self.categories:
            add("category", cat.category, _without(_plain(cat), "category"))
        for st in self.checklist_steps:
            add(
                "checklist_step",
                f"{st.category}/{st.step}",
                {"answers": st.answers, "not_helped": st.not_helped},
            )
        for i, g in enumerate(self.kb_gaps, 1):
            add(
                "kb_gap",
                str(i),
                {
                    "representative": g.representative,
                    "count": g.count,
                    **{f"reason_{k}": v for k, v in sorted(g.reasons.items())},
                },
            )
        for load in self.consultants:
            add("consultant", load.key, _without(_plain(load), "key"))
        for p in self.series:
            add(
                "series",
                p.day.isoformat(),
                {**_without(_plain(p), "day"), "sla_compliance": p.sla_compliance},
            )
        return rows


# --------------------------------------------------------------------------- entry points


async def compute_report(
    db: Database,
    content: Content,
    settings: Settings,
    since: datetime,
    until: datetime,
    now: datetime,
    *,
    gap_min_count: int = 2,
) -> Report:
    """Every figure for the period ``[since, until)``, as known at ``now``.

    ``now`` decides what is "at risk right now" and how far the recontact rule can see:
    a bot solve within ``settings.digest.recontact_window`` of ``now`` still counts as
    deflected (and is counted in ``deflection.pending``) until the user comes back.
    """
    history = await load_history(db, content, settings, since, now)
    return history.report(since, until, gap_min_count=gap_min_count)


async def daily_series(
    db: Database,
    content: Content,
    settings: Settings,
    last_day: date,
    now: datetime,
    *,
    days: int = 14,
    timezone: str | None = None,
) -> list[DayPoint]:
    """Volume, deflection and SLA compliance of each of the ``days`` local days ending
    with ``last_day`` (in ``timezone``, default the digest's), oldest first."""
    tz = ZoneInfo(timezone or settings.digest.timezone)
    first = last_day - timedelta(days=days - 1)
    history = await load_history(db, content, settings, day_bounds(first, tz)[0], now)
    return history.series(last_day, tz, days=days)


def day_bounds(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """Local midnight to the next local midnight of ``day``, in UTC (23 or 25 hours long
    on a DST change day)."""
    start = datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)
    return start, end


def percentile(values: Sequence[timedelta], p: float) -> timedelta | None:
    """Nearest-rank percentile: the smallest value at least ``p``% of ``values`` do not
    exceed (``None`` for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


# --------------------------------------------------------------------------- the replay


@dataclass
class _NextClock:
    """One "next response" clock: from a customer's unanswered message to the reply."""

    start: datetime
    stop: datetime | None = None
    done: bool = False  # stopped by a reply (not by resolve or cancel)


@dataclass
class _Ticket:
    """One ticket's history rebuilt from its events."""

    id: int
    number: str
    tier: str
    category: str | None
    conversation_id: int | None
    opened_at: datetime
    priorities: list[tuple[datetime, str]]
    statuses: list[tuple[datetime, str]]
    owners: list[tuple[datetime, str | None]]
    levels: list[tuple[datetime, str]]
    tiers: list[tuple[datetime, str]] = field(default_factory=list)
    pauses: list[tuple[datetime, datetime | None]] = field(default_factory=list)
    first_response_at: datetime | None = None
    # (at, level at that moment, actor) of every resolution.
    resolutions: list[tuple[datetime, str, str]] = field(default_factory=list)
    ended_without_reply_at: datetime | None = None  # resolved/cancelled before any reply
    next_clocks: list[_NextClock] = field(default_factory=list)

    def status_at(self, at: datetime) -> str | None:
        """The status at ``at`` (``None`` before it opened)."""
        return _value_at(self.statuses, at)

    def priority_at(self, at: datetime) -> str:
        """The priority at ``at`` (the opening one before that)."""
        return _value_at(self.priorities, at) or self.priorities[0][1]

    def tier_at(self, at: datetime) -> str:
        """The license tier at ``at`` (L2 may correct it; the desk then recomputes every
        deadline in the new tier, and so does the report)."""
        return _value_at(self.tiers, at) or self.tier

    def owner_at(self, at: datetime) -> str | None:
        """Who owned the ticket at ``at``."""
        return _value_at(self.owners, at)

    def is_open_at(self, at: datetime) -> bool:
        """Open (new, open, in progress, waiting) at ``at``."""
        return self.status_at(at) in OPEN_STATUSES

    def next_open(self, at: datetime, now: datetime) -> datetime | None:
        """``at`` if the ticket is open then, else the next moment (up to ``now``) it
        opened again (a reopening), else ``None``."""
        if self.is_open_at(at):
            return at
        for moment, status in self.statuses:
            if at < moment <= now and status in OPEN_STATUSES:
                return moment
        return None

    def pauses_until(self, at: datetime) -> list[Pause]:
        """The pauses as they were known at ``at`` (one begun later does not exist yet)."""
        return [(s, e if e is not None and e <= at else None) for s, e in self.pauses if s < at]


_T = TypeVar("_T")


def _value_at(timeline: Sequence[tuple[datetime, _T]], at: datetime) -> _T | None:
    """The value of a sorted ``(moment, value)`` timeline at ``at``."""
    i = bisect_right([m for m, _ in timeline], at)
    return timeline[i - 1][1] if i else None


def _replay(events: Sequence[Event]) -> _Ticket | None:
    """A ticket's history from its events, in order; ``None`` without ``ticket_opened``."""
    opened = next((e for e in events if e.kind == "ticket_opened"), None)
    if opened is None or opened.ticket_id is None:
        return None
    d = opened.data
    tk = _Ticket(
        id=opened.ticket_id,
        number=str(d.get("number") or f"#{opened.ticket_id}"),
        tier=str(d.get("tier") or ""),
        category=d.get("category"),
        conversation_id=opened.conversation_id,
        opened_at=opened.at,
        priorities=[(opened.at, str(d.get("priority") or "normal"))],
        statuses=[(opened.at, "open")],
        owners=[(opened.at, None)],
        levels=[(opened.at, "l2")],
    )
    tk.tiers.append((opened.at, tk.tier))
    status, level, owner = "open", "l2", None
    awaiting: _NextClock | None = None
    pause_from: datetime | None = None

    def set_status(at: datetime, new: str) -> None:
        nonlocal status
        status = new
        tk.statuses.append((at, new))

    def end_pause(at: datetime) -> None:
        nonlocal pause_from
        if pause_from is not None:
            tk.pauses.append((pause_from, at))
            pause_from = None

    def stop_next(at: datetime, *, done: bool) -> None:
        nonlocal awaiting
        if awaiting is not None:
            awaiting.stop, awaiting.done = at, done
            awaiting = None

    for ev in events:
        at, kind, data = ev.at, ev.kind, ev.data
        if at < tk.opened_at or ev is opened:
            continue
        if kind == "ticket_claimed":
            owner = data.get("owner") or ev.actor
            tk.owners.append((at, owner))
            if status in ("new", "open"):
                set_status(at, "in_progress")
        elif kind in ("ticket_released", "owner_silence"):
            owner = None
            tk.owners.append((at, None))
            if status == "in_progress":
                set_status(at, "open")
        elif kind == "first_response":
            if tk.first_response_at is None:
                tk.first_response_at = at
        elif kind == "agent_reply":
            stop_next(at, done=True)
        elif kind == "user_message":
            # The desk starts the next-response clock on the first unanswered message
            # after the first reply.
            if tk.first_response_at is not None and awaiting is None and status in OPEN_STATUSES:
                awaiting = _NextClock(at)
                tk.next_clocks.append(awaiting)
        elif kind == "waiting_for_customer":
            if pause_from is None:
                pause_from = at
            set_status(at, "waiting")
        elif kind == "customer_replied":
            end_pause(at)
            set_status(at, "in_progress" if owner else "open")
        elif kind == "ticket_resolved":
            end_pause(at)
            stop_next(at, done=False)
            # The level before the desk resets it: ``data["level"]`` is written after
            # the reset today, so the replayed level is the one to trust.
            tk.resolutions.append((at, level, ev.actor))
            if tk.first_response_at is None and tk.ended_without_reply_at is None:
                tk.ended_without_reply_at = at
            level = "l2"
            tk.levels.append((at, level))
            set_status(at, "resolved")
        elif kind == "ticket_reopened":
            set_status(at, "in_progress" if owner else "open")
        elif kind == "ticket_cancelled":
            end_pause(at)
            stop_next(at, done=False)
            if tk.first_response_at is None and tk.ended_without_reply_at is None:
                tk.ended_without_reply_at = at
            set_status(at, "cancelled")
        elif kind == "ticket_l3":
            level = "l3"
            tk.levels.append((at, level))
        elif kind == "ticket_l3_back":
            level = "l2"
            tk.levels.append((at, level))
        elif kind == "priority_changed" and data.get("new"):
            tk.priorities.append((at, str(data["new"])))
        elif kind == "tier_changed" and data.get("new"):
            tk.tiers.append((at, str(data["new"])))
    if pause_from is not None:
        tk.pauses.append((pause_from, None))
    return tk


# --------------------------------------------------------------------------- SLA clocks


@dataclass(frozen=True)
class _Outcome:
    """One judged SLA clock: met at ``at``, or breached at ``at``."""

    ticket: _Ticket
    target: str
    tier: str
    priority: str
    at: datetime
    met: bool
    over: timedelta = timedelta(0)
    finished: bool = True


class History:
    """The event log from a start moment to ``now``, replayed once; reports for any
    period inside it are computed from here without another query."""

    def __init__(
        self,
        content: Content,
        settings: Settings,
        now: datetime,
        events: list[Event],
        tickets: dict[int, _Ticket],
        conversations: dict[int, tuple[str | None, str]],
        kb_queries: list[KbQuery],
        impressions: list[KbImpression],
    ) -> None:
        self.content = content
        self.settings = settings
        self.now = now
        self.events = events
        self.tickets = tickets
        self.conversations = conversations  # id -> (category, problem text)
        self.kb_queries = kb_queries
        self.impressions = impressions
        self.names: dict[str, str] = {}
        for ev in events:
            if ev.kind == "ticket_claimed" and ev.data.get("owner"):
                self.names[str(ev.data["owner"])] = str(ev.data.get("owner_name") or "")
        self._outcomes = self._judge_all()

    # ---------------------------------------------------------------- helpers

    def _in(self, at: datetime, since: datetime, until: datetime) -> bool:
        return since <= at < until

    def _of(self, kinds: Iterable[str], since: datetime, until: datetime) -> list[Event]:
        wanted = set(kinds)
        return [e for e in self.events if e.kind in wanted and since <= e.at < until]

    def name(self, key: str | None) -> str | None:
        """A consultant's display name (from their claims), else the id after the colon."""
        if key is None:
            return None
        return self.names.get(key) or key.partition(":")[2] or key

    # ---------------------------------------------------------------- SLA

    def _judge_all(self) -> list[_Outcome]:
        out: list[_Outcome] = []
        for tk in self.tickets.values():
            out += self._judge_first_response(tk)
            out += self._judge_resolution(tk)
            out += self._judge_next(tk)
        return out

    def _clock(
        self,
        tk: _Ticket,
        target: str,
        start: datetime,
        stops: Sequence[tuple[datetime, bool]],
    ) -> list[_Outcome]:
        """Judge one clock from ``start``: each ``(moment, done)`` stop ends a stretch;
        a done stop within target is "met"; the deadline passing while the ticket is
        open and the clock running is one "breach"."""
        out: list[_Outcome] = []
        breached = False
        for moment, done in stops:
            if moment > self.now:
                break
            prio, tier = tk.priority_at(moment), tk.tier_at(moment)
            cal = self.content.sla.calendar_for(tier)
            limit = self.content.sla.targets_for(tier, prio).get(target)
            used = cal.consumed(start, moment, tk.pauses_until(moment))
            if used <= limit:
                if done:
                    out.append(_Outcome(tk, target, tier, prio, moment, met=True))
                continue
            if not breached:
                breached = True
                due = cal.deadline(start, limit, tk.pauses) or moment
                when = tk.next_open(due, self.now) or due
                out.append(
                    _Outcome(
                        tk, target, tier, prio, min(when, moment), met=False, over=used - limit
                    )
                )
        last = stops[-1][0] if stops else None
        running = last is None or (target == "resolution" and tk.is_open_at(self.now))
        if running and not breached:
            prio, tier = tk.priority_at(self.now), tk.tier_at(self.now)
            cal = self.content.sla.calendar_for(tier)
            limit = self.content.sla.targets_for(tier, prio).get(target)
            used = cal.consumed(start, self.now, tk.pauses)
            if used > limit:
                due = cal.deadline(start, limit, tk.pauses) or self.now
                breach_at = tk.next_open(due, self.now)
                if breach_at is not None:
                    out.append(
                        _Outcome(
                            tk,
                            target,
                            tier,
                            prio,
                            breach_at,
                            met=False,
                            over=used - limit,
                            finished=False,
                        )
                    )
        return out

    def _judge_first_response(self, tk: _Ticket) -> list[_Outcome]:
        if tk.first_response_at is not None:
            stops = [(tk.first_response_at, True)]
        elif tk.ended_without_reply_at is not None:
            stops = [(tk.ended_without_reply_at, False)]
        else:
            stops = []
        return self._clock(tk, "first_response", tk.opened_at, stops)

    def _judge_resolution(self, tk: _Ticket) -> list[_Outcome]:
        stops = [(at, True) for at, _, _ in tk.resolutions]
        stops += [(at, False) for at, st in tk.statuses if st == "cancelled"]
        return self._clock(tk, "resolution", tk.opened_at, sorted(stops))

    def _judge_next(self, tk: _Ticket) -> list[_Outcome]:
        out: list[_Outcome] = []
        for clock in tk.next_clocks:
            stops = [(clock.stop, clock.done)] if clock.stop is not None else []
            out += self._clock(tk, "next_response", clock.start, stops)
        return out

    # ---------------------------------------------------------------- the report

    def report(self, since: datetime, until: datetime, *, gap_min_count: int = 2) -> Report:
        """Every figure for ``[since, until)``."""
        return Report(
            since=since,
            until=until,
            now=self.now,
            volume=self.volume(since, until),
            deflection=self.deflection(since, until),
            first_response=self._times("first_response", since, until),
            resolution=self._times("resolution", since, until),
            sla=self.sla_cells(since, until),
            breaches=self.breaches(since, until),
            at_risk=self.at_risk(),
            csat=self.csat(since, until),
            categories=self.categories(since, until),
            checklist_steps=self.checklist_steps(since, until),
            kb_gaps=self.gaps(since, until, min_count=gap_min_count),
            consultants=self.consultants(since, until),
        )

    def volume(self, since: datetime, until: datetime) -> Volume:
        """Conversations, outcomes, resolutions and the backlog at ``until``."""
        ended = Counter(
            str(e.data.get("outcome")) for e in self._of(["conversation_ended"], since, until)
        )
        resolved: dict[int, str] = {}
        for tk in self.tickets.values():
            for at, level, _ in tk.resolutions:
                if self._in(at, since, until):
                    resolved[tk.id] = level  # the last resolution in the period counts
        backlog = [
            tk for tk in self.tickets.values() if tk.opened_at < until and tk.is_open_at(until)
        ]
        return Volume(
            conversations=len(self._of(["conversation_started"], since, until)),
            solved_kb=ended["solved_kb"],
            solved_checklist=ended["solved_checklist"],
            escalated=len(self._of(["ticket_opened"], since, until)),
            resolved_l2=sum(1 for lv in resolved.values() if lv != "l3"),
            resolved_l3=sum(1 for lv in resolved.values() if lv == "l3"),
            backlog=len(backlog),
            backlog_unclaimed=sum(1 for tk in backlog if tk.owner_at(until) is None),
            cancelled=ended["cancelled"],
            abandoned=ended["abandoned"],
        )

    def _solves(self, since: datetime, until: datetime) -> list[tuple[Event, bool]]:
        """Bot solves in the period and whether the user came back (the recontact rule)."""
        window = self.settings.digest.recontact_window
        started: dict[str, list[Event]] = defaultdict(list)
        for e in self.events:
            if e.kind == "conversation_started":
                started[e.actor].append(e)
        out: list[tuple[Event, bool]] = []
        for e in self._of(["conversation_ended"], since, until):
            if e.data.get("outcome") not in ("solved_kb", "solved_checklist"):
                continue
            category, problem = self.conversations.get(e.conversation_id or -1, (None, ""))
            category = category or e.data.get("category")
            came_back = any(
                e.at < later.at <= e.at + window
                and later.conversation_id != e.conversation_id
                and self._same_problem(category, problem, later.conversation_id)
                for later in started.get(e.actor, [])
            )
            out.append((e, came_back))
        return out

    def _same_problem(self, category: str | None, problem: str, other_id: int | None) -> bool:
        other_cat, other_problem = self.conversations.get(other_id or -1, (None, ""))
        if category and other_cat and category == other_cat:
            return True
        return similar_problem(problem, other_problem)

    def deflection(self, since: datetime, until: datetime) -> Deflection:
        """Bot solves that held, over every problem that reached an outcome."""
        solves = self._solves(since, until)
        window = self.settings.digest.recontact_window
        recontacted = sum(1 for _, back in solves if back)
        pending = sum(1 for e, back in solves if not back and e.at + window > self.now)
        escalated = len(self._of(["conversation_escalated"], since, until))
        problems = len(solves) + escalated
        deflected = len(solves) - recontacted
        return Deflection(
            problems=problems,
            bot_solves=len(solves),
            recontacted=recontacted,
            deflected=deflected,
            pending=pending,
            rate=deflected / problems if problems else None,
        )

    def _times(self, kind: str, since: datetime, until: datetime) -> list[TimeStats]:
        """First-response or resolution business times of the period, per tier."""
        per_tier: dict[str, list[timedelta]] = defaultdict(list)
        for tk in self.tickets.values():
            end: datetime | None
            if kind == "first_response":
                end = tk.first_response_at
                if end is None or not self._in(end, since, until):
                    continue
            else:
                inside = [at for at, _, _ in tk.resolutions if self._in(at, since, until)]
                if not inside:
                    continue
                end = inside[-1]
            tier = tk.tier_at(end)
            cal = self.content.sla.calendar_for(tier)
            per_tier[tier].append(cal.consumed(tk.opened_at, end, tk.pauses_until(end)))
        rows = [
            TimeStats(tier, len(v), percentile(v, 50), percentile(v, 90))
            for tier, v in sorted(per_tier.items(), key=lambda kv: self._tier_rank(kv[0]))
        ]
        every = [x for v in per_tier.values() for x in v]
        rows.append(TimeStats("all", len(every), percentile(every, 50), percentile(every, 90)))
        return rows

    def _tier_rank(self, tier: str) -> tuple[int, str]:
        order = list(self.content.sla.tiers)
        return (order.index(tier) if tier in order else len(order), tier)

    def sla_cells(self, since: datetime, until: datetime) -> list[SlaCell]:
        """Met and breached clocks per tier x priority x target."""
        met: Counter[tuple[str, str, str]] = Counter()
        breached: Counter[tuple[str, str, str]] = Counter()
        for o in self._outcomes:
            if not self._in(o.at, since, until):
                continue
            key = (o.tier, o.priority, o.target)
            if o.met:
                met[key] += 1
            else:
                breached[key] += 1
        keys = sorted(
            set(met) | set(breached),
            key=lambda k: (self._tier_rank(k[0]), _prio_rank(k[1]), TARGETS.index(k[2])),
        )
        return [SlaCell(t, p, g, met[(t, p, g)], breached[(t, p, g)]) for t, p, g in keys]

    def breaches(self, since: datetime, until: datetime) -> list[Breach]:
        """Every deadline that passed in the period, oldest first."""
        out = [
            Breach(
                ticket_id=o.ticket.id,
                number=o.ticket.number,
                target=o.target,
                tier=o.tier,
                priority=o.priority,
                due=o.at,
                over=o.over,
                owner=self.name(o.ticket.owner_at(o.at)),
                finished=o.finished,
            )
            for o in self._outcomes
            if not o.met and self._in(o.at, since, until)
        ]
        return sorted(out, key=lambda b: (b.due, b.number, TARGETS.index(b.target)))

    def at_risk(self, fraction: float = AT_RISK_FRACTION) -> list[AtRisk]:
        """Open tickets at ``now`` whose most urgent clock has at most ``fraction`` of its
        target left, or is overdue; the most urgent first."""
        now = self.now
        out: list[AtRisk] = []
        for tk in self.tickets.values():
            if not tk.is_open_at(now):
                continue
            prio, tier = tk.priority_at(now), tk.tier_at(now)
            cal = self.content.sla.calendar_for(tier)
            targets = self.content.sla.targets_for(tier, prio)
            clocks: list[tuple[str, datetime]] = [("resolution", tk.opened_at)]
            if tk.first_response_at is None:
                clocks.append(("first_response", tk.opened_at))
            running = [c for c in tk.next_clocks if c.stop is None]
            if running:
                clocks.append(("next_response", running[-1].start))
            worst: AtRisk | None = None
            for target, start in clocks:
                limit = targets.get(target)
                left = limit - cal.consumed(start, now, tk.pauses)
                paused = tk.status_at(now) == "waiting"
                # A paused clock cannot run out: only an overdue one needs attention.
                if left > limit * fraction or (paused and left > timedelta(0)):
                    continue
                item = AtRisk(
                    ticket_id=tk.id,
                    number=tk.number,
                    target=target,
                    tier=tier,
                    priority=prio,
                    due=cal.deadline(start, limit, tk.pauses),
                    remaining=left,
                    owner=self.name(tk.owner_at(now)),
                    paused=paused,
                )
                if worst is None or left / limit < worst.remaining / targets.get(worst.target):
                    worst = item
            if worst is not None:
                out.append(worst)
        return sorted(out, key=lambda a: (a.remaining, a.number))

    def csat(self, since: datetime, until: datetime) -> Csat:
        """Ratings received in the period, over the resolutions that asked for them."""
        scores = [
            int(e.data["score"])
            for e in self._of(["csat"], since, until)
            if isinstance(e.data.get("score"), int)
        ]
        surveys = len(self._of(["ticket_resolved"], since, until))
        return Csat(
            responses=len(scores),
            surveys=surveys,
            average=sum(scores) / len(scores) if scores else None,
        )

    def categories(self, since: datetime, until: datetime, limit: int = 10) -> list[CategoryCount]:
        """Problems per category (bot solves and escalations), the most frequent first."""
        solved: Counter[str] = Counter()
        escalated: Counter[str] = Counter()
        for e in self._of(["conversation_ended"], since, until):
            if e.data.get("outcome") in ("solved_kb", "solved_checklist"):
                cat, _ = self.conversations.get(e.conversation_id or -1, (None, ""))
                solved[cat or e.data.get("category") or "-"] += 1
        for e in self._of(["ticket_opened"], since, until):
            escalated[e.data.get("category") or "-"] += 1
        cats = set(solved) | set(escalated)
        rows = [
            CategoryCount(
                category=c,
                title=self._category_title(c),
                problems=solved[c] + escalated[c],
                solved=solved[c],
                escalated=escalated[c],
            )
            for c in cats
        ]
        rows.sort(key=lambda r: (-r.problems, r.category))
        return rows[:limit]

    def _category_title(self, cat: str) -> str:
        found = self.content.categories.get(cat)
        return found.title.get(self.settings.digest.language) if found else cat

    def checklist_steps(self, since: datetime, until: datetime, limit: int = 10) -> list[StepStat]:
        """Checklist steps answered with anything but a "solved" option, the most often
        first (ties: the higher share first)."""
        answers: Counter[tuple[str, str]] = Counter()
        failed: Counter[tuple[str, str]] = Counter()
        for e in self._of(["checklist_answer"], since, until):
            key = (str(e.data.get("category")), str(e.data.get("step")))
            answers[key] += 1
            if not self._option_solves(key[0], key[1], str(e.data.get("option"))):
                failed[key] += 1
        rows = [StepStat(c, s, answers[(c, s)], failed[(c, s)]) for c, s in failed]
        rows.sort(key=lambda r: (-r.not_helped, -r.not_helped / r.answers, r.category, r.step))
        return rows[:limit]

    def _option_solves(self, category: str, step_id: str, option: str) -> bool:
        cat = self.content.categories.get(category)
        step = cat.step(step_id) if cat is not None else None
        if step is None or not step.options:
            return option == "fixed"  # the standard buttons: only "fixed" solves
        found = next((o for o in step.options if o.id == option), None)
        return found is not None and found.goto == GOTO_SOLVED

    def gaps(self, since: datetime, until: datetime, *, min_count: int = 2) -> list[Gap]:
        """Questions with no good KB answer, grouped by similarity (:func:`find_gaps`).

        Reasons: ``no_match`` (the matcher had nothing), ``rejected`` (the user turned
        down every suggestion), ``not_helped`` (an article was shown and did not help).
        """
        rows: list[tuple[str, str]] = [
            (q.query, "no_match")
            for q in self.kb_queries
            if q.decision == "none" and self._in(q.at, since, until)
        ]
        by_conv: dict[int, list[KbQuery]] = defaultdict(list)
        for q in self.kb_queries:
            by_conv[q.conversation_id].append(q)
        for e in self._of(["kb_rejected"], since, until):
            asked = [q for q in by_conv.get(e.conversation_id or -1, []) if q.at <= e.at]
            if asked:
                rows.append((asked[-1].query, "rejected"))
        for e in self._of(["kb_verdict"], since, until):
            if e.data.get("verdict") != "not_helped":
                continue
            shown = [
                i
                for i in self.impressions
                if i.conversation_id == e.conversation_id
                and i.article_id == e.data.get("article")
                and i.shown_at <= e.at
            ]
            if shown:
                rows.append((shown[-1].query, "not_helped"))
        rows = [(q, why) for q, why in rows if q != ERASED]  # erased texts are no question
        return [
            Gap(c.representative, c.count, c.examples, dict(sorted(c.reasons.items())))
            for c in find_gaps(rows, min_count=min_count)
        ]

    def consultants(self, since: datetime, until: datetime) -> list[ConsultantLoad]:
        """Claims, replies to customers and resolutions per consultant."""
        claimed: Counter[str] = Counter()
        replies: Counter[str] = Counter()
        resolved: Counter[str] = Counter()
        for e in self._of(["ticket_claimed"], since, until):
            claimed[str(e.data.get("owner") or e.actor)] += 1
        for e in self._of(["agent_reply"], since, until):
            replies[e.actor] += 1
        for e in self._of(["ticket_resolved"], since, until):
            resolved[e.actor] += 1
        keys = set(claimed) | set(replies) | set(resolved)
        rows = [
            ConsultantLoad(k, self.name(k) or k, claimed[k], replies[k], resolved[k]) for k in keys
        ]
        rows.sort(key=lambda r: (-r.resolved, -r.replies, -r.claimed, r.name))
        return rows

    def day_point(self, day: date, tz: ZoneInfo) -> DayPoint:
        """The chart's figures of one local day."""
        since, until = day_bounds(day, tz)
        d = self.deflection(since, until)
        met, breached = 0, 0
        for cell in self.sla_cells(since, until):
            met, breached = met + cell.met, breached + cell.breached
        return DayPoint(
            day=day,
            conversations=len(self._of(["conversation_started"], since, until)),
            problems=d.problems,
            deflected=d.deflected,
            escalated=len(self._of(["ticket_opened"], since, until)),
            deflection=d.rate,
            sla_met=met,
            sla_breached=breached,
        )

    def series(self, last_day: date, tz: ZoneInfo, *, days: int = 14) -> list[DayPoint]:
        """:meth:`day_point` for ``days`` days ending with ``last_day``, oldest first."""
        return [self.day_point(last_day - timedelta(days=i), tz) for i in range(days - 1, -1, -1)]


ERASED = "[erased]"  # what bot.privacy writes over erased texts


def similar_problem(a: str, b: str) -> bool:
    """Whether two problem texts describe the same problem (see ``SAME_PROBLEM_SIMILARITY``)."""
    ta, tb = " ".join(sorted(set(tokens(a)))), " ".join(sorted(set(tokens(b))))
    if not ta or not tb:
        return False
    return float(fuzz.token_set_ratio(ta, tb)) >= SAME_PROBLEM_SIMILARITY


def _prio_rank(priority: str) -> int:
    return PRIORITY_ORDER.index(priority) if priority in PRIORITY_ORDER else len(PRIORITY_ORDER)


# --------------------------------------------------------------------------- loading


async def load_history(
    db: Database, content: Content, settings: Settings, since: datetime, now: datetime
) -> History:
    """Read what reports of periods from ``since`` up to ``now`` need, in one transaction.

    The whole log from ``since`` on, plus the full history of every ticket still open at
    ``since`` (its older events decide its business times); tickets finished before
    ``since`` are never loaded.
    """
    async with db.read() as s:
        recent = list(
            (
                await s.execute(
                    select(Event).where(Event.at >= since, Event.at <= now).order_by(Event.id)
                )
            ).scalars()
        )
        skeleton = list(
            (
                await s.execute(
                    select(Event)
                    .where(Event.kind.in_(_SKELETON), Event.at < since)
                    .order_by(Event.at, Event.id)
                )
            ).scalars()
        )
        alive = _alive_at(skeleton)
        older: list[Event] = []
        for chunk in _chunks(sorted(alive)):
            older += (
                await s.execute(select(Event).where(Event.ticket_id.in_(chunk), Event.at < since))
            ).scalars()
        conv_ids = {e.conversation_id for e in recent if e.conversation_id is not None}
        conversations = await _conversations(s, conv_ids)
        kb_queries = list(
            (
                await s.execute(
                    select(KbQuery)
                    .where(KbQuery.at >= since, KbQuery.at <= now)
                    .order_by(KbQuery.at, KbQuery.id)
                )
            ).scalars()
        )
        impressions = list(
            (
                await s.execute(
                    select(KbImpression)
                    .where(
                        and_(
                            KbImpression.verdict == "not_helped",
                            # A verdict in the period may close an article shown just before.
                            KbImpression.shown_at >= since - timedelta(days=1),
                            KbImpression.shown_at <= now,
                        )
                    )
                    .order_by(KbImpression.shown_at, KbImpression.id)
                )
            ).scalars()
        )
    events = sorted({e.id: e for e in [*older, *recent]}.values(), key=lambda e: (e.at, e.id))
    per_ticket: dict[int, list[Event]] = defaultdict(list)
    for e in events:
        if e.ticket_id is not None:
            per_ticket[e.ticket_id].append(e)
    tickets = {}
    for ticket_id, evs in per_ticket.items():
        tk = _replay(evs)
        if tk is not None:
            tickets[ticket_id] = tk
    return History(content, settings, now, events, tickets, conversations, kb_queries, impressions)


def _alive_at(skeleton: Sequence[Event]) -> set[int]:
    """Tickets opened before the skeleton's end that were not finished by then."""
    state: dict[int, bool] = {}
    for e in skeleton:
        if e.ticket_id is None:
            continue
        state[e.ticket_id] = e.kind in ("ticket_opened", "ticket_reopened")
    return {tid for tid, open_ in state.items() if open_}


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    for i in range(0, len(ids), _CHUNK):
        yield list(ids[i : i + _CHUNK])


async def _conversations(s: AsyncSession, ids: set[int]) -> dict[int, tuple[str | None, str]]:
    out: dict[int, tuple[str | None, str]] = {}
    for chunk in _chunks(sorted(ids)):
        rows = await s.execute(
            select(Conversation.id, Conversation.category, Conversation.problem).where(
                Conversation.id.in_(chunk)
            )
        )
        for cid, category, problem in rows.all():
            out[int(cid)] = (category, problem or "")
    return out


# --------------------------------------------------------------------------- serialising


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


def _plain(obj: Any) -> dict[str, Any]:
    """A dataclass as JSON-ready values: timedeltas become ``<name>_seconds``."""
    assert is_dataclass(obj) and not isinstance(obj, type)
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, timedelta):
            out[f"{f.name}_seconds"] = int(value.total_seconds())
        elif value is None and f.name in _DURATION_FIELDS:
            out[f"{f.name}_seconds"] = None
        elif isinstance(value, datetime):
            out[f.name] = _iso(value)
        elif isinstance(value, date):
            out[f.name] = value.isoformat()
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


_DURATION_FIELDS = {"p50", "p90", "over", "remaining"}


def _without(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list | tuple):
        return " | ".join(str(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


__all__ = [
    "AtRisk",
    "Breach",
    "CategoryCount",
    "ConsultantLoad",
    "Csat",
    "DayPoint",
    "Deflection",
    "Gap",
    "History",
    "Report",
    "SlaCell",
    "StepStat",
    "TimeStats",
    "Volume",
    "compute_report",
    "daily_series",
    "day_bounds",
    "load_history",
    "percentile",
    "similar_problem",
]
