"""Business calendars: when SLA time runs, and the maths of adding and counting it.

A calendar is a time zone, weekly working hours in local wall-clock time, public holidays
from the ``holidays`` library (which also knows transferred working weekends, e.g. Russia's
working Saturdays) and admin-supplied extra holidays and extra working days.

Business time is *real* elapsed time inside working intervals: an interval is defined in
local wall-clock time, converted to UTC for its own day, and measured in UTC. So a
09:00-18:00 day is nine real hours even on a DST-switch day, and a 00:00-24:00 day is 23 or
25 hours then (the calendar is still continuous, as it should be for 24/7).

All public functions take timezone-aware datetimes (naive ones are rejected) and return
aware datetimes in UTC. The maths walks whole working intervals day by day, so it is exact
to the microsecond and cheap enough to call thousands of times.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays

# [start, end) in seconds since local midnight; end may be 86400 (24:00).
Interval = tuple[int, int]
DayHours = tuple[Interval, ...]
# A stretch of "waiting for customer": the clock does not run. End None = still paused.
Pause = tuple[datetime, datetime | None]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_SECONDS = 86_400
FULL_DAY: DayHours = ((0, DAY_SECONDS),)
# A calendar that shows no working time for this long is broken, not just on holiday.
MAX_SEARCH_DAYS = 3 * 366

_CLOCK_RE = re.compile(r"^(\d{1,2}):(\d{2})$")


class CalendarError(ValueError):
    """An invalid calendar definition (bad hours, unknown time zone or holiday country)."""


class NoWorkingTimeError(CalendarError):
    """The calendar has no working time within :data:`MAX_SEARCH_DAYS` of the given moment."""


def parse_clock(text: str) -> int:
    """``"09:30"`` -> seconds since midnight; ``"24:00"`` is allowed as an end of day."""
    m = _CLOCK_RE.match(text.strip())
    if not m:
        raise CalendarError(f"bad time {text!r}: expected HH:MM")
    hours, minutes = int(m.group(1)), int(m.group(2))
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise CalendarError(f"bad time {text!r}: must be between 00:00 and 24:00")
    return hours * 3600 + minutes * 60


def parse_hours(text: str) -> DayHours:
    """Parse ``"09:00-13:00, 14:00-18:00"`` (or ``"closed"``) into sorted intervals."""
    text = text.strip()
    if text.lower() in ("", "closed", "off", "none"):
        return ()
    intervals: list[Interval] = []
    for part in text.split(","):
        bounds = part.strip().split("-")
        if len(bounds) != 2:
            raise CalendarError(f"bad interval {part.strip()!r}: expected HH:MM-HH:MM")
        start, end = parse_clock(bounds[0]), parse_clock(bounds[1])
        if start == DAY_SECONDS:
            raise CalendarError(f"bad interval {part.strip()!r}: cannot start at 24:00")
        if end <= start:
            raise CalendarError(
                f"bad interval {part.strip()!r}: end must be after start "
                "(split overnight shifts into ...-24:00 and 00:00-... on the next day)"
            )
        intervals.append((start, end))
    return check_hours(intervals)


def check_hours(intervals: Iterable[Interval]) -> DayHours:
    """Validate and sort one day's intervals; overlapping ones are an error."""
    result = tuple(sorted(intervals))
    for start, end in result:
        if not 0 <= start < end <= DAY_SECONDS:
            raise CalendarError(f"bad interval {format_hours(((start, end),))}")
    for (_, end), (start, _) in pairwise(result):
        if start < end:
            raise CalendarError(f"overlapping intervals in {format_hours(result)}")
    return result


def format_hours(hours: DayHours) -> str:
    """``((32400, 64800),)`` -> ``"09:00-18:00"``; empty -> ``"closed"``."""
    if not hours:
        return "closed"
    return ", ".join(f"{_clock(s)}-{_clock(e)}" for s, e in hours)


def _clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


def to_utc(at: datetime, what: str = "datetime") -> datetime:
    """``at`` in UTC; a naive datetime is a bug in the caller, so it is refused."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {at.isoformat()}")
    return at.astimezone(UTC)


@dataclass(frozen=True)
class DayPlan:
    """What one local calendar day looks like: working intervals (in UTC) and why."""

    day: date
    kind: str  # "working" | "holiday" | "day_off"
    note: str  # holiday name, "extra working day", weekday name, ...
    intervals: tuple[tuple[datetime, datetime], ...]


@dataclass(frozen=True)
class ExplainStep:
    """One line of a deadline explanation.

    ``kind`` is ``"counted"`` (business time that ran), ``"pause"`` (waiting for customer
    inside working hours), ``"holiday"`` or ``"day_off"`` (days skipped as a whole).
    ``end`` is ``None`` for a pause that is still open.
    """

    kind: str
    start: datetime
    end: datetime | None
    counted: timedelta
    total: timedelta
    note: str = ""


@dataclass(frozen=True)
class Explanation:
    """How a deadline was computed: the calendar, and each counted or skipped stretch."""

    calendar: str
    timezone: str
    start: datetime
    target: timedelta
    deadline: datetime | None
    steps: tuple[ExplainStep, ...]
    calendar_summary: str = ""

    def lines(self) -> list[str]:
        """Human-readable lines, times shown in the calendar's own time zone."""
        tz = ZoneInfo(self.timezone)

        def fmt(at: datetime) -> str:
            return at.astimezone(tz).strftime("%a %Y-%m-%d %H:%M:%S")

        out = [
            f"calendar {self.calendar} ({self.timezone}): {self.calendar_summary}".rstrip(": "),
            f"start {fmt(self.start)}, target {format_duration(self.target)} of business time",
        ]
        for step in self.steps:
            end = fmt(step.end) if step.end is not None else "now (still open)"
            note = f" ({step.note})" if step.note else ""
            if step.kind == "counted":
                # Only unusual working days earn a note (a working Saturday, an extra day).
                note = "" if _weekday_note(step.note) else note
                out.append(
                    f"  counted {fmt(step.start)} -> {end}: +{format_duration(step.counted)}"
                    f" = {format_duration(step.total)}{note}"
                )
            else:
                label = {"pause": "paused ", "holiday": "holiday", "day_off": "day off"}
                out.append(f"  {label.get(step.kind, step.kind)} {fmt(step.start)} -> {end}{note}")
        if self.deadline is None:
            out.append("deadline: none while the clock is stopped (waiting for customer)")
        else:
            out.append(f"deadline {fmt(self.deadline)} ({self.deadline.isoformat()})")
        return out


def _weekday_note(note: str) -> bool:
    """Whether a day note is just weekday names (``"mon"``, ``"sat-sun"``): nothing unusual."""
    return all(part in WEEKDAYS for part in note.split("-"))


def format_duration(value: timedelta) -> str:
    """``timedelta(hours=26, minutes=5)`` -> ``"26h05m"``; seconds shown only when present."""
    total = int(value.total_seconds())
    sign = "-" if total < 0 else ""
    total = abs(total)
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{sign}{hours}h{minutes:02d}m"
    return f"{text}{seconds:02d}s" if seconds else text


class BusinessCalendar:
    """Working time of a support team: time zone, weekly hours, holidays.

    ``week`` holds seven days (Monday first) of intervals in local time. Day resolution,
    strongest first: an extra working day (its own hours, or ``workday_hours``), an extra
    holiday, a public holiday of ``holiday_country``/``holiday_subdiv``, a weekend the
    holidays library marks as a working day (with ``workday_hours``), the weekly hours.
    """

    def __init__(
        self,
        name: str,
        timezone: str | ZoneInfo,
        week: Sequence[DayHours],
        *,
        holiday_country: str | None = None,
        holiday_subdiv: str | None = None,
        weekend_workdays: bool = True,
        extra_holidays: Mapping[date, str] | Iterable[date] = (),
        extra_working_days: Mapping[date, DayHours | None] | Iterable[date] = (),
        workday_hours: DayHours | None = None,
    ) -> None:
        if len(week) != 7:
            raise CalendarError(f"week must have 7 days (Monday first), got {len(week)}")
        self.name = name
        if isinstance(timezone, ZoneInfo):
            self.tz = timezone
        else:
            try:
                self.tz = ZoneInfo(timezone)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise CalendarError(f"unknown time zone {timezone!r}") from exc
        self.week: tuple[DayHours, ...] = tuple(check_hours(day) for day in week)
        self.holiday_country = holiday_country
        self.holiday_subdiv = holiday_subdiv
        self.weekend_workdays = weekend_workdays
        if isinstance(extra_holidays, Mapping):
            self.extra_holidays: dict[date, str] = dict(extra_holidays)
        else:
            self.extra_holidays = {d: "" for d in extra_holidays}
        if isinstance(extra_working_days, Mapping):
            self.extra_working_days: dict[date, DayHours | None] = {
                d: (None if h is None else check_hours(h)) for d, h in extra_working_days.items()
            }
        else:
            self.extra_working_days = {d: None for d in extra_working_days}
        # Hours of a working weekend/extra day: given, else the first weekday that works.
        if workday_hours is not None:
            self.workday_hours = check_hours(workday_hours)
        else:
            self.workday_hours = next((day for day in self.week if day), ())
        self._holiday_years: dict[int, tuple[dict[date, str], frozenset[date]]] = {}
        self._plans: dict[date, DayPlan] = {}
        if holiday_country is not None:
            self._public_holidays(2000)  # fail now, not at the first deadline
        self.always_open = (
            all(day == FULL_DAY for day in self.week)
            and holiday_country is None
            and not self.extra_holidays
        )

    @classmethod
    def twenty_four_seven(cls, name: str = "24x7", timezone: str = "UTC") -> BusinessCalendar:
        """A calendar that is always open: business time is plain elapsed time."""
        return cls(name, timezone, [FULL_DAY] * 7)

    def __repr__(self) -> str:
        return f"BusinessCalendar({self.name!r}, {self.tz.key!r}, {self.summary()!r})"

    def summary(self) -> str:
        """A one-line description such as ``mon-fri 09:00-18:00; holidays RU``."""
        if self.always_open:
            return "24/7"
        groups: list[tuple[int, int, DayHours]] = []
        for i, hours in enumerate(self.week):
            if groups and groups[-1][2] == hours and groups[-1][1] == i - 1:
                groups[-1] = (groups[-1][0], i, hours)
            else:
                groups.append((i, i, hours))
        parts = [
            (WEEKDAYS[a] if a == b else f"{WEEKDAYS[a]}-{WEEKDAYS[b]}") + " " + format_hours(h)
            for a, b, h in groups
            if h
        ]
        if self.holiday_country:
            where = self.holiday_country + (
                f"-{self.holiday_subdiv}" if self.holiday_subdiv else ""
            )
            parts.append(f"holidays {where}")
        if self.extra_holidays:
            parts.append(f"{len(self.extra_holidays)} extra holiday(s)")
        if self.extra_working_days:
            parts.append(f"{len(self.extra_working_days)} extra working day(s)")
        return "; ".join(parts) or "no working hours"

    def has_working_time(self) -> bool:
        """Whether the definition has any working hours at all (weekly or extra days)."""
        return any(self.week) or any(
            (h if h is not None else self.workday_hours) for h in self.extra_working_days.values()
        )

    # ----------------------------------------------------------------- days

    def _public_holidays(self, year: int) -> tuple[dict[date, str], frozenset[date]]:
        cached = self._holiday_years.get(year)
        if cached is None:
            if self.holiday_country is None:
                cached = ({}, frozenset())
            else:
                try:
                    lib = holidays.country_holidays(
                        self.holiday_country, subdiv=self.holiday_subdiv, years=year
                    )
                except NotImplementedError as exc:
                    raise CalendarError(f"holidays: {exc}") from exc
                names = {d: str(n) for d, n in lib.items()}
                workdays = frozenset(getattr(lib, "weekend_workdays", ()) or ())
                cached = (names, workdays)
            self._holiday_years[year] = cached
        return cached

    def day_plan(self, day: date) -> DayPlan:
        """The working intervals of local ``day`` (in UTC) and the reason for them."""
        plan = self._plans.get(day)
        if plan is None:
            plan = self._make_plan(day)
            self._plans[day] = plan
        return plan

    def _make_plan(self, day: date) -> DayPlan:
        names, lib_workdays = self._public_holidays(day.year)
        hours: DayHours
        if day in self.extra_working_days:
            extra = self.extra_working_days[day]
            hours, note = (self.workday_hours if extra is None else extra), "extra working day"
        elif day in self.extra_holidays:
            return DayPlan(day, "holiday", self.extra_holidays[day] or "extra holiday", ())
        elif day in names:
            return DayPlan(day, "holiday", names[day], ())
        elif self.weekend_workdays and day in lib_workdays:
            hours, note = self.workday_hours, f"working weekend day ({self.holiday_country})"
        else:
            hours, note = self.week[day.weekday()], WEEKDAYS[day.weekday()]
        if not hours:
            return DayPlan(day, "day_off", note, ())
        intervals = tuple((self._to_utc(day, s), self._to_utc(day, e)) for s, e in hours)
        # A DST gap can swallow a whole interval (e.g. 02:00-02:30 on the spring switch).
        return DayPlan(day, "working", note, tuple((s, e) for s, e in intervals if e > s))

    def _to_utc(self, day: date, seconds: int) -> datetime:
        """Local wall-clock ``day + seconds`` as a UTC instant.

        An ambiguous time (autumn switch) means its first occurrence; a time that does not
        exist (spring gap) means the instant the clocks jump.
        """
        naive = datetime.combine(day, time()) + timedelta(seconds=seconds)
        instant = naive.replace(tzinfo=self.tz).astimezone(UTC)
        if instant.astimezone(self.tz).replace(tzinfo=None) == naive:
            return instant
        # In a gap: fold=1 lands before the jump, fold=0 after it; bisect to the jump.
        lo = int(naive.replace(tzinfo=self.tz, fold=1).timestamp())
        hi = int(instant.timestamp())
        if lo > hi:
            lo, hi = hi, lo
        while lo < hi:
            mid = (lo + hi) // 2
            local = datetime.fromtimestamp(mid, UTC).astimezone(self.tz).replace(tzinfo=None)
            if local >= naive:
                hi = mid
            else:
                lo = mid + 1
        return datetime.fromtimestamp(lo, UTC)

    def _intervals_from(self, at: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Working intervals (UTC, clipped to start at ``at``) from ``at`` on, forever."""
        day = at.astimezone(self.tz).date() - timedelta(days=1)
        idle_days = 0
        while True:
            found = False
            for start, end in self.day_plan(day).intervals:
                if end > at:
                    found = True
                    yield max(start, at), end
            idle_days = 0 if found else idle_days + 1
            if idle_days > MAX_SEARCH_DAYS:
                raise NoWorkingTimeError(
                    f"calendar {self.name!r} has no working time in the {MAX_SEARCH_DAYS} days "
                    f"after {day - timedelta(days=idle_days)}"
                )
            day += timedelta(days=1)

    # ----------------------------------------------------------------- queries

    def is_open(self, at: datetime) -> bool:
        """Whether business time is running at ``at``."""
        at = to_utc(at)
        if self.always_open:
            return True
        local = at.astimezone(self.tz).date()
        for day in (local - timedelta(days=1), local, local + timedelta(days=1)):
            if any(s <= at < e for s, e in self.day_plan(day).intervals):
                return True
        return False

    def next_open(self, at: datetime) -> datetime:
        """``at`` itself if open, else the start of the next working interval."""
        at = to_utc(at)
        if self.always_open:
            return at
        start, _ = next(self._intervals_from(at))
        return start

    def add(self, start: datetime, duration: timedelta) -> datetime:
        """The instant when ``duration`` of business time has passed since ``start``.

        A deadline that uses up a working interval exactly lands at its end (18:00 Friday),
        not at the next opening.
        """
        start = to_utc(start, "start")
        if duration < timedelta(0):
            raise ValueError(f"duration must not be negative, got {duration}")
        if duration == timedelta(0) or self.always_open:
            return start + duration
        remaining = duration
        for s, e in self._intervals_from(start):
            if remaining <= e - s:
                return s + remaining
            remaining -= e - s
        raise AssertionError("unreachable: the interval stream is endless")  # pragma: no cover

    def elapsed(self, start: datetime, end: datetime) -> timedelta:
        """Business time between two instants (``end`` must not precede ``start``)."""
        start, end = to_utc(start, "start"), to_utc(end, "end")
        if end < start:
            raise ValueError(f"end {end.isoformat()} is before start {start.isoformat()}")
        if self.always_open:
            return end - start
        total = timedelta(0)
        for s, e in self._intervals_from(start):
            if s >= end:
                break
            total += min(e, end) - s
        return total

    # ----------------------------------------------------------------- pauses

    def _effective(
        self, start: datetime, pauses: Sequence[Pause]
    ) -> Iterator[tuple[datetime, datetime]]:
        """Working intervals from ``start`` with pauses cut out; ends at an open pause."""
        closed, open_from = normalise_pauses(pauses)
        for s, e in self._intervals_from(start):
            if open_from is not None:
                if s >= open_from:
                    return
                e = min(e, open_from)
            for counted, a, b in split_by_pauses(s, e, closed):
                if counted:
                    yield a, b
            if open_from is not None and e >= open_from:
                return

    def deadline(
        self, start: datetime, target: timedelta, pauses: Sequence[Pause] = ()
    ) -> datetime | None:
        """When ``target`` of business time, not counting ``pauses``, has passed.

        With an open pause (end ``None``) the clock is stopped now, so there is no deadline
        (``None``) -- unless the target was already used up before that pause began, in
        which case that past deadline stands (the breach already happened).
        """
        start = to_utc(start, "start")
        if target < timedelta(0):
            raise ValueError(f"target must not be negative, got {target}")
        if target == timedelta(0):
            return start
        remaining = target
        for s, e in self._effective(start, pauses):
            if remaining <= e - s:
                return s + remaining
            remaining -= e - s
        return None

    def consumed(self, start: datetime, now: datetime, pauses: Sequence[Pause] = ()) -> timedelta:
        """Business time used between ``start`` and ``now``, not counting ``pauses``."""
        start, now = to_utc(start, "start"), to_utc(now, "now")
        total = timedelta(0)
        if now <= start:
            return total
        for s, e in self._effective(start, pauses):
            if s >= now:
                break
            total += min(e, now) - s
        return total

    def explain(
        self, start: datetime, target: timedelta, pauses: Sequence[Pause] = ()
    ) -> Explanation:
        """A step-by-step account of :meth:`deadline` for ``firstline sla explain``."""
        start = to_utc(start, "start")
        closed, open_from = normalise_pauses(pauses)
        deadline = self.deadline(start, target, pauses)
        steps: list[ExplainStep] = []
        total = timedelta(0)

        def push(step: ExplainStep) -> None:
            last = steps[-1] if steps else None
            # Ordinary working time running on past midnight (24/7, night shifts) is one line.
            if (
                last is not None
                and step.kind == last.kind == "counted"
                and last.end == step.start
                and _weekday_note(last.note)
                and _weekday_note(step.note)
            ):
                note = f"{last.note.split('-')[0]}-{step.note}"
                steps[-1] = ExplainStep(
                    "counted", last.start, step.end, last.counted + step.counted, step.total, note
                )
                return
            # Runs of identical skipped days (New Year holidays, weekends) read as one line.
            if (
                last is not None
                and step.kind in ("holiday", "day_off")
                and last.kind == step.kind
                and (last.note == step.note or step.kind == "day_off")
                and last.end == step.start
            ):
                note = last.note
                if note != step.note:  # "sat" + "sun" -> "sat-sun"
                    note = f"{note.split('-')[0]}-{step.note}"
                steps[-1] = ExplainStep(last.kind, last.start, step.end, last.counted, total, note)
            else:
                steps.append(step)

        day = start.astimezone(self.tz).date()
        done = target == timedelta(0)
        idle_days = 0
        while not done:
            plan = self.day_plan(day)
            day_start = self._to_utc(day, 0)
            day_end = self._to_utc(day, DAY_SECONDS)
            if plan.kind != "working":
                stop_at = open_from if deadline is None else None
                if stop_at is not None and stop_at < day_end:
                    if stop_at > max(day_start, start):
                        push(
                            ExplainStep(
                                plan.kind,
                                max(day_start, start),
                                stop_at,
                                timedelta(0),
                                total,
                                plan.note,
                            )
                        )
                    push(
                        ExplainStep(
                            "pause",
                            stop_at,
                            None,
                            timedelta(0),
                            total,
                            "waiting for customer, clock stopped",
                        )
                    )
                    break
                if day_end > start:
                    push(
                        ExplainStep(
                            plan.kind,
                            max(day_start, start),
                            day_end,
                            timedelta(0),
                            total,
                            plan.note,
                        )
                    )
                idle_days += 1
                if idle_days > MAX_SEARCH_DAYS:
                    raise NoWorkingTimeError(f"calendar {self.name!r} has no working time")
            else:
                idle_days = 0
            for s, e in plan.intervals:
                if e <= start:
                    continue
                s = max(s, start)
                if open_from is not None and e > open_from:
                    e = max(s, open_from)
                for counted, a, b in split_by_pauses(s, e, closed):
                    if not counted:
                        push(
                            ExplainStep("pause", a, b, timedelta(0), total, "waiting for customer")
                        )
                        continue
                    if deadline is not None and b >= deadline:
                        b, done = deadline, True
                    total += b - a
                    push(ExplainStep("counted", a, b, b - a, total, plan.note))
                    if done:
                        break
                if done:
                    break
                if open_from is not None and e >= open_from and deadline is None:
                    push(
                        ExplainStep(
                            "pause",
                            open_from,
                            None,
                            timedelta(0),
                            total,
                            "waiting for customer, clock stopped",
                        )
                    )
                    done = True
                    break
            day += timedelta(days=1)
        return Explanation(
            self.name, self.tz.key, start, target, deadline, tuple(steps), self.summary()
        )


def normalise_pauses(
    pauses: Sequence[Pause],
) -> tuple[list[tuple[datetime, datetime]], datetime | None]:
    """Closed pauses in UTC, sorted and merged, plus the start of the earliest open pause.

    Closed pauses after the open one are dropped: the clock is already stopped there.
    """
    closed: list[tuple[datetime, datetime]] = []
    open_from: datetime | None = None
    for raw_start, raw_end in pauses:
        p_start = to_utc(raw_start, "pause start")
        if raw_end is None:
            open_from = p_start if open_from is None else min(open_from, p_start)
            continue
        p_end = to_utc(raw_end, "pause end")
        if p_end < p_start:
            raise ValueError(
                f"pause ends {p_end.isoformat()} before it starts {p_start.isoformat()}"
            )
        closed.append((p_start, p_end))
    closed.sort()
    merged: list[tuple[datetime, datetime]] = []
    for p_start, p_end in closed:
        if open_from is not None and p_start >= open_from:
            break
        if merged and p_start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], p_end))
        else:
            merged.append((p_start, p_end))
    return merged, open_from


def split_by_pauses(
    start: datetime, end: datetime, closed: Sequence[tuple[datetime, datetime]]
) -> list[tuple[bool, datetime, datetime]]:
    """Cut ``[start, end)`` into (counted?, from, to) pieces around sorted merged pauses."""
    pieces: list[tuple[bool, datetime, datetime]] = []
    cursor = start
    for p_start, p_end in closed:
        if p_end <= cursor or p_start == p_end:
            continue
        if p_start >= end:
            break
        if p_start > cursor:
            pieces.append((True, cursor, p_start))
        paused_to = min(p_end, end)
        pieces.append((False, max(p_start, cursor), paused_to))
        cursor = paused_to
        if cursor >= end:
            break
    if cursor < end:
        pieces.append((True, cursor, end))
    return pieces
