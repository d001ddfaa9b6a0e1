"""SLA policies: business calendars, license tiers and per tier x priority targets.

Loaded from the admin-edited ``sla.yaml`` (the bundled default is
``config/defaults/sla.yaml``, whose comments document the format). Every problem is
reported with file, line and key; a file with any problem yields no config at all, because
half an SLA policy silently computes wrong deadlines.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from config.categories import PRIORITIES, Text
from config.problems import Problem
from config.yamlfile import KeyPath, LocatedYaml, load_yaml, parse_yaml
from escalation.calendar import (
    FULL_DAY,
    WEEKDAYS,
    BusinessCalendar,
    CalendarError,
    DayHours,
    Pause,
    parse_hours,
)

DEFAULT_SLA_PATH = Path(__file__).resolve().parent.parent / "config" / "defaults" / "sla.yaml"
DEFAULT_WARN_FRACTIONS = (0.75, 0.9)
DEFAULT_MANAGER_ESCALATION_AFTER = timedelta(hours=1)
DEFAULT_OWNER_SILENCE_AFTER = timedelta(hours=1)

TARGET_KINDS = ("first_response", "next_response", "resolution")
_ID_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
_DURATION_RE = re.compile(
    r"^(?:(?P<d>\d+)d)?\s*(?:(?P<h>\d+)h)?\s*(?:(?P<m>\d+)m)?\s*(?:(?P<s>\d+)s)?$"
)
_TOP_KEYS = {
    "default_tier",
    "warn_fractions",
    "manager_escalation_after",
    "owner_silence_after",
    "calendars",
    "tiers",
    "targets",
    "l3",
}
_CALENDAR_KEYS = {
    "timezone",
    "hours",
    "holidays",
    "workday_hours",
    "extra_holidays",
    "extra_working_days",
}


def parse_duration(text: str) -> timedelta:
    """``"30m"``, ``"4h"``, ``"1h30m"``, ``"2d"`` -> timedelta of *business* time.

    ``d`` is 24 hours of business time (not a business day: in a 9-hour calendar ``1d``
    spans almost three working days). Units must come in the order d, h, m, s.
    """
    m = _DURATION_RE.match(text.strip().lower())
    if not text.strip() or not m or not any(m.group(u) for u in "dhms"):
        raise ValueError(f"bad duration {text!r}: expected e.g. 30m, 4h, 1h30m, 2d")
    return timedelta(
        days=int(m.group("d") or 0),
        hours=int(m.group("h") or 0),
        minutes=int(m.group("m") or 0),
        seconds=int(m.group("s") or 0),
    )


def parse_days(spec: str) -> list[int]:
    """``"mon-fri"``, ``"sat,sun"``, ``"fri-mon"``, ``"daily"`` -> weekday numbers (Mon=0)."""
    spec = spec.strip().lower()
    if spec in ("daily", "all", "every day"):
        return list(range(7))
    days: list[int] = []
    for part in spec.split(","):
        bounds = [b.strip() for b in part.split("-")]
        if len(bounds) > 2 or any(b not in WEEKDAYS for b in bounds):
            raise ValueError(f"bad days {part.strip()!r}: use mon..sun, ranges like mon-fri")
        first, last = WEEKDAYS.index(bounds[0]), WEEKDAYS.index(bounds[-1])
        span = (last - first) % 7
        days.extend((first + i) % 7 for i in range(span + 1))
    return days


@dataclass(frozen=True)
class Targets:
    """Business-time targets of one tier x priority (or of L3 for one priority)."""

    first_response: timedelta
    next_response: timedelta
    resolution: timedelta

    def get(self, kind: str) -> timedelta:
        """The target named ``kind`` (one of :data:`TARGET_KINDS`)."""
        if kind not in TARGET_KINDS:
            raise KeyError(kind)
        value: timedelta = getattr(self, kind)
        return value


@dataclass(frozen=True)
class Tier:
    """A license tier: what customers bought, and the calendar their SLA counts in."""

    id: str
    title: Text
    calendar: str


@dataclass(frozen=True)
class SlaConfig:
    """The whole SLA policy. Build it with :func:`load_sla`."""

    calendars: dict[str, BusinessCalendar]
    tiers: dict[str, Tier]
    default_tier: str
    targets: dict[tuple[str, str], Targets]  # (tier, priority)
    l3_targets: dict[str, Targets]  # priority -> operational-level targets at L3
    warn_fractions: tuple[float, ...] = DEFAULT_WARN_FRACTIONS
    manager_escalation_after: timedelta = DEFAULT_MANAGER_ESCALATION_AFTER
    owner_silence_after: timedelta = DEFAULT_OWNER_SILENCE_AFTER
    l3_calendar: str | None = None  # None: L3 counts in the ticket tier's calendar
    source: str = field(default="", compare=False)

    def tier(self, tier: str) -> Tier:
        """The tier ``tier``; an unknown one (e.g. removed since the ticket opened) falls
        back to the default tier, so a stored ticket never breaks the timers."""
        return self.tiers.get(tier) or self.tiers[self.default_tier]

    def calendar_for(self, tier: str) -> BusinessCalendar:
        """The business calendar of ``tier``."""
        return self.calendars[self.tier(tier).calendar]

    def targets_for(self, tier: str, priority: str) -> Targets:
        """Targets for ``tier`` x ``priority``; raises ``KeyError`` for an unknown priority."""
        key = (self.tier(tier).id, priority)
        if key not in self.targets:
            raise KeyError(f"no SLA targets for priority {priority!r}")
        return self.targets[key]

    def l3_calendar_for(self, tier: str) -> BusinessCalendar:
        """The calendar L3 targets count in: ``l3.calendar`` or the ticket tier's one."""
        if self.l3_calendar is not None:
            return self.calendars[self.l3_calendar]
        return self.calendar_for(tier)

    def l3_targets_for(self, priority: str) -> Targets | None:
        """L3 operational-level targets for ``priority``; ``None`` when none configured."""
        return self.l3_targets.get(priority)


# --------------------------------------------------------------------------- deadlines


def compute_deadlines(
    config: SlaConfig,
    tier: str,
    priority: str,
    opened_at: datetime,
    pauses: Sequence[Pause] = (),
    first_response_at: datetime | None = None,
    awaiting_reply_since: datetime | None = None,
) -> dict[str, datetime | None]:
    """The ticket's SLA deadlines, recomputed from scratch (so a priority or tier change
    is just another call with the new values).

    ``first_response`` and ``resolution`` run from ``opened_at``; ``next_response`` runs
    from ``awaiting_reply_since`` (the customer's oldest unanswered message after the
    first response) and is ``None`` when nothing awaits a reply. A deadline is ``None``
    while an open pause stops the clock. Whether a deadline was met is the caller's call
    (``first_response_at`` only gates ``next_response`` here).
    """
    calendar = config.calendar_for(tier)
    targets = config.targets_for(tier, priority)
    next_response: datetime | None = None
    if first_response_at is not None and awaiting_reply_since is not None:
        next_response = calendar.deadline(awaiting_reply_since, targets.next_response, pauses)
    return {
        "first_response": calendar.deadline(opened_at, targets.first_response, pauses),
        "next_response": next_response,
        "resolution": calendar.deadline(opened_at, targets.resolution, pauses),
    }


def compute_l3_deadlines(
    config: SlaConfig,
    tier: str,
    priority: str,
    escalated_at: datetime,
    pauses: Sequence[Pause] = (),
) -> dict[str, datetime | None]:
    """L3 operational-level deadlines from the moment the ticket reached L3 (empty dict
    when no L3 targets are configured for ``priority``)."""
    targets = config.l3_targets_for(priority)
    if targets is None:
        return {}
    calendar = config.l3_calendar_for(tier)
    return {
        "first_response": calendar.deadline(escalated_at, targets.first_response, pauses),
        "resolution": calendar.deadline(escalated_at, targets.resolution, pauses),
    }


def warning_times(
    config: SlaConfig,
    calendar: BusinessCalendar,
    start: datetime,
    target: timedelta,
    pauses: Sequence[Pause] = (),
) -> list[tuple[float, datetime | None]]:
    """``(fraction, instant)`` for each warning: when that share of ``target`` is used."""
    return [
        (fraction, calendar.deadline(start, target * fraction, pauses))
        for fraction in config.warn_fractions
    ]


# --------------------------------------------------------------------------- loading


def load_sla(path: Path) -> tuple[SlaConfig | None, list[Problem]]:
    """Load and validate ``sla.yaml``; with any problem the config is ``None``."""
    try:
        located, problems = load_yaml(path)
    except ValueError as exc:  # PyYAML raises a bare ValueError for dates like 2025-02-30
        return None, [Problem(str(path), None, "", f"invalid YAML value: {exc}")]
    if located is None:
        return None, problems
    return build_sla(located)


def load_sla_text(text: str, file: str = "sla.yaml") -> tuple[SlaConfig | None, list[Problem]]:
    """Like :func:`load_sla` for YAML already in memory (tests, admin previews)."""
    try:
        located, problems = parse_yaml(text, file)
    except ValueError as exc:  # PyYAML raises a bare ValueError for dates like 2025-02-30
        return None, [Problem(file, None, "", f"invalid YAML value: {exc}")]
    if located is None:
        return None, problems
    return build_sla(located)


def build_sla(doc: LocatedYaml) -> tuple[SlaConfig | None, list[Problem]]:
    """Validate parsed YAML into an :class:`SlaConfig`, collecting every problem."""
    return _Builder(doc).build()


class _Builder:
    """Walks the document once, collecting problems instead of stopping at the first."""

    def __init__(self, doc: LocatedYaml) -> None:
        self.doc = doc
        self.problems: list[Problem] = []

    def fail(self, path: KeyPath, message: str) -> None:
        self.problems.append(self.doc.problem(path, message))

    def mapping(self, value: Any, path: KeyPath, what: str) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.fail(path, f"{what} must be a mapping, got {_kind(value)}")
            return None
        return {str(k): v for k, v in value.items()}

    def declared(self, section: str) -> set[str]:
        """Keys of a top-level section as written, valid or not (to avoid double reports)."""
        value = self.doc.data.get(section) if isinstance(self.doc.data, dict) else None
        return {str(k) for k in value} if isinstance(value, dict) else set()

    def unknown_keys(self, data: dict[str, Any], allowed: set[str], path: KeyPath) -> None:
        for key in data:
            if key not in allowed:
                self.fail(
                    (*path, key),
                    f"unknown key {key!r}; expected one of " + ", ".join(sorted(allowed)),
                )

    def duration(self, value: Any, path: KeyPath, *, allow_zero: bool = False) -> timedelta | None:
        # YAML reads 1:30 as the integer 90 and 30 as minutes-or-hours-who-knows: insist on units.
        if not isinstance(value, str):
            self.fail(path, f"duration must be a string like 30m, 4h, 2d; got {value!r}")
            return None
        try:
            result = parse_duration(value)
        except ValueError as exc:
            self.fail(path, str(exc))
            return None
        if result <= timedelta(0) and not allow_zero:
            self.fail(path, "duration must be positive")
            return None
        return result

    # ------------------------------------------------------------------ sections

    def build(self) -> tuple[SlaConfig | None, list[Problem]]:
        root = self.mapping(self.doc.data, (), "sla.yaml")
        if root is None:
            return None, self.problems
        self.unknown_keys(root, _TOP_KEYS, ())
        for key in ("calendars", "tiers", "targets", "default_tier"):
            if key not in root:
                self.fail((key,), f"missing required key {key!r}")

        calendars = self.calendars(root.get("calendars"))
        tiers = self.tiers(root.get("tiers"), calendars)
        default_tier = root.get("default_tier")
        declared_tiers = self.declared("tiers")
        if "default_tier" in root and default_tier not in declared_tiers and declared_tiers:
            self.fail(
                ("default_tier",),
                f"unknown tier {default_tier!r}; known: " + ", ".join(sorted(declared_tiers)),
            )
        targets = self.targets(root.get("targets"), tiers)
        l3_calendar, l3_targets = self.l3(root.get("l3"), calendars)
        warn = self.warn_fractions(root.get("warn_fractions", list(DEFAULT_WARN_FRACTIONS)))
        manager_after = DEFAULT_MANAGER_ESCALATION_AFTER
        if "manager_escalation_after" in root:
            manager_after = self.duration(
                root["manager_escalation_after"], ("manager_escalation_after",), allow_zero=True
            ) or timedelta(0)
        silence_after = DEFAULT_OWNER_SILENCE_AFTER
        if "owner_silence_after" in root:
            silence_after = (
                self.duration(root["owner_silence_after"], ("owner_silence_after",))
                or silence_after
            )

        if self.problems:
            return None, sorted(self.problems, key=lambda p: (p.line or 0, p.key))
        return SlaConfig(
            calendars=calendars,
            tiers=tiers,
            default_tier=str(default_tier),
            targets=targets,
            l3_targets=l3_targets,
            warn_fractions=warn,
            manager_escalation_after=manager_after,
            owner_silence_after=silence_after,
            l3_calendar=l3_calendar,
            source=self.doc.file,
        ), []

    def calendars(self, value: Any) -> dict[str, BusinessCalendar]:
        result: dict[str, BusinessCalendar] = {}
        if value is None:
            return result
        data = self.mapping(value, ("calendars",), "calendars")
        if data is None:
            return result
        if not data:
            self.fail(("calendars",), "define at least one calendar")
        for name, spec in data.items():
            calendar = self.calendar(name, spec, ("calendars", name))
            if calendar is not None:
                result[name] = calendar
        return result

    def calendar(self, name: str, value: Any, path: KeyPath) -> BusinessCalendar | None:
        if not _ID_RE.match(name):
            self.fail(path, f"bad calendar id {name!r}: use lower-case letters, digits, _ and -")
        data = self.mapping(value, path, "a calendar")
        if data is None:
            return None
        before = len(self.problems)
        self.unknown_keys(data, _CALENDAR_KEYS, path)

        timezone = data.get("timezone")
        if not isinstance(timezone, str) or not timezone:
            self.fail((*path, "timezone"), "missing time zone (an IANA name like Europe/Moscow)")
            timezone = "UTC"
        else:
            try:
                BusinessCalendar(name, timezone, [()] * 7)
            except CalendarError as exc:
                self.fail((*path, "timezone"), str(exc))

        week = self.week(data.get("hours"), (*path, "hours"))
        workday_hours: DayHours | None = None
        if "workday_hours" in data:
            workday_hours = self.hours(data["workday_hours"], (*path, "workday_hours"))

        country: str | None = None
        subdiv: str | None = None
        weekend_workdays = True
        if "holidays" in data:
            hpath = (*path, "holidays")
            hol = self.mapping(data["holidays"], hpath, "holidays")
            if hol is not None:
                self.unknown_keys(hol, {"country", "subdiv", "weekend_workdays"}, hpath)
                country_value = hol.get("country")
                if not isinstance(country_value, str) or not country_value:
                    self.fail((*hpath, "country"), "missing country code (e.g. RU, US, DE)")
                else:
                    country = country_value
                    subdiv_value = hol.get("subdiv")
                    if subdiv_value is not None:
                        subdiv = str(subdiv_value)
                    try:
                        BusinessCalendar(
                            name, "UTC", [()] * 7, holiday_country=country, holiday_subdiv=subdiv
                        )
                    except CalendarError as exc:
                        key = "subdiv" if subdiv is not None and "subdiv" in str(exc) else "country"
                        self.fail((*hpath, key), str(exc))
                if "weekend_workdays" in hol:
                    if not isinstance(hol["weekend_workdays"], bool):
                        self.fail((*hpath, "weekend_workdays"), "must be true or false")
                    else:
                        weekend_workdays = hol["weekend_workdays"]

        extra_holidays = self.extra_holidays(data.get("extra_holidays"), (*path, "extra_holidays"))
        extra_days = self.extra_working_days(
            data.get("extra_working_days"), (*path, "extra_working_days")
        )
        for day in sorted(set(extra_holidays) & set(extra_days)):
            self.fail(
                (*path, "extra_working_days"),
                f"{day} is both an extra holiday and an extra working day",
            )

        if len(self.problems) > before:
            return None
        calendar = BusinessCalendar(
            name,
            timezone,
            week,
            holiday_country=country,
            holiday_subdiv=subdiv,
            weekend_workdays=weekend_workdays,
            extra_holidays=extra_holidays,
            extra_working_days=extra_days,
            workday_hours=workday_hours,
        )
        if not any(calendar.week):
            self.fail((*path, "hours"), "the calendar has no weekly working hours")
            return None
        return calendar

    def hours(self, value: Any, path: KeyPath) -> DayHours | None:
        """One day's hours: ``"09:00-18:00"``, ``"09:00-13:00, 14:00-18:00"``, a list, closed."""
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = ", ".join(value) if value else "closed"
        if value is False or value is None:  # YAML reads a bare `off` as false
            value = "closed"
        if not isinstance(value, str):
            self.fail(
                path,
                f'hours must look like "09:00-18:00", got {value!r}'
                " (quote times: YAML reads 09:30 alone as a number)",
            )
            return None
        try:
            return parse_hours(value)
        except CalendarError as exc:
            self.fail(path, str(exc))
            return None

    def week(self, value: Any, path: KeyPath) -> list[DayHours]:
        week: list[DayHours] = [()] * 7
        if value is None:
            self.fail(path, 'missing working hours (e.g. mon-fri: "09:00-18:00", or 24/7)')
            return week
        if isinstance(value, str) and value.strip().replace(" ", "") in ("24/7", "24x7"):
            return [FULL_DAY] * 7
        data = self.mapping(value, path, "hours (or the string 24/7)")
        if data is None:
            return week
        seen: dict[int, str] = {}
        for spec, hours_value in data.items():
            try:
                days = parse_days(spec)
            except ValueError as exc:
                self.fail((*path, spec), str(exc))
                continue
            hours = self.hours(hours_value, (*path, spec))
            for day in days:
                if day in seen:
                    self.fail((*path, spec), f"{WEEKDAYS[day]} is already set by {seen[day]!r}")
                    continue
                seen[day] = spec
                if hours is not None:
                    week[day] = hours
        return week

    def dates(self, value: Any, path: KeyPath) -> list[tuple[KeyPath, date, dict[str, Any]]]:
        """Items of a date list: a date, or a mapping with ``date`` and more fields."""
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, f"must be a list of dates, got {_kind(value)}")
            return []
        items: list[tuple[KeyPath, date, dict[str, Any]]] = []
        for i, item in enumerate(value):
            ipath: KeyPath = (*path, i)
            extra: dict[str, Any] = {}
            if isinstance(item, dict):
                extra = {str(k): v for k, v in item.items()}
                item = extra.pop("date", None)
                ipath = (*ipath, "date")
            parsed = _as_date(item)
            if parsed is None:
                self.fail(ipath, f"bad date {item!r}: expected YYYY-MM-DD")
                continue
            items.append(((*path, i), parsed, extra))
        return items

    def extra_holidays(self, value: Any, path: KeyPath) -> dict[date, str]:
        result: dict[date, str] = {}
        for ipath, day, extra in self.dates(value, path):
            self.unknown_keys(extra, {"name"}, ipath)
            if day in result:
                self.fail(ipath, f"{day} is listed twice")
            result[day] = str(extra.get("name") or "")
        return result

    def extra_working_days(self, value: Any, path: KeyPath) -> dict[date, DayHours | None]:
        result: dict[date, DayHours | None] = {}
        for ipath, day, extra in self.dates(value, path):
            self.unknown_keys(extra, {"hours"}, ipath)
            if day in result:
                self.fail(ipath, f"{day} is listed twice")
            result[day] = (
                self.hours(extra["hours"], (*ipath, "hours")) if "hours" in extra else None
            )
        return result

    def tiers(self, value: Any, calendars: dict[str, BusinessCalendar]) -> dict[str, Tier]:
        result: dict[str, Tier] = {}
        if value is None:
            return result
        data = self.mapping(value, ("tiers",), "tiers")
        if data is None:
            return result
        if not data:
            self.fail(("tiers",), "define at least one tier")
        for tier_id, spec in data.items():
            path: KeyPath = ("tiers", tier_id)
            if not _ID_RE.match(tier_id):
                self.fail(path, f"bad tier id {tier_id!r}: use lower-case letters, digits, _, -")
            tier = self.mapping(spec, path, "a tier")
            if tier is None:
                continue
            self.unknown_keys(tier, {"title", "calendar"}, path)
            title = self.text(tier.get("title"), (*path, "title"))
            calendar = tier.get("calendar")
            if not isinstance(calendar, str):
                self.fail((*path, "calendar"), "missing calendar (a key of calendars)")
            # A calendar that failed validation was already reported; don't pile on.
            elif calendar not in calendars and calendar not in self.declared("calendars"):
                self.fail(
                    (*path, "calendar"),
                    f"unknown calendar {calendar!r}; known: " + ", ".join(sorted(calendars)),
                )
            if title is not None and isinstance(calendar, str):
                result[tier_id] = Tier(tier_id, title, calendar)
        return result

    def text(self, value: Any, path: KeyPath) -> Text | None:
        if isinstance(value, str):
            self.fail(path, "title needs both languages: {en: ..., ru: ...}")
            return None
        data = self.mapping(value, path, "a title")
        if data is None:
            return None
        ok = True
        for lang in ("en", "ru"):
            if not isinstance(data.get(lang), str) or not data[lang].strip():
                self.fail((*path, lang), f"missing {lang} text")
                ok = False
        self.unknown_keys(data, {"en", "ru"}, path)
        return Text(en=data["en"], ru=data["ru"]) if ok else None

    def targets(self, value: Any, tiers: dict[str, Tier]) -> dict[tuple[str, str], Targets]:
        result: dict[tuple[str, str], Targets] = {}
        if value is None:
            return result
        data = self.mapping(value, ("targets",), "targets")
        if data is None:
            return result
        declared = self.declared("tiers")
        for tier_id in data:
            if tier_id not in declared:
                self.fail(("targets", tier_id), f"targets for unknown tier {tier_id!r}")
        # Declared, not just valid, tiers: a tier with a typo in its title still gets its
        # targets checked in the same run.
        for tier_id in declared:
            if tier_id not in data:
                self.fail(("targets", tier_id), f"tier {tier_id!r} has no targets")
                continue
            path: KeyPath = ("targets", tier_id)
            per_priority = self.mapping(data[tier_id], path, "targets of a tier")
            if per_priority is None:
                continue
            for priority in per_priority:
                if priority not in PRIORITIES:
                    self.fail(
                        (*path, priority),
                        f"unknown priority {priority!r}; expected " + ", ".join(PRIORITIES),
                    )
            for priority in PRIORITIES:
                if priority not in per_priority:
                    self.fail(
                        (*path, priority), f"tier {tier_id!r} is missing priority {priority!r}"
                    )
                    continue
                targets = self.target_set(per_priority[priority], (*path, priority))
                if targets is not None:
                    result[(tier_id, priority)] = targets
        return result

    def target_set(self, value: Any, path: KeyPath, *, l3: bool = False) -> Targets | None:
        data = self.mapping(value, path, "targets")
        if data is None:
            return None
        self.unknown_keys(data, set(TARGET_KINDS), path)
        found: dict[str, timedelta] = {}
        for kind in TARGET_KINDS:
            if kind not in data:
                # At L3 "next response" is optional: L2 relays, so it defaults to first response.
                if not (l3 and kind == "next_response"):
                    self.fail((*path, kind), f"missing {kind}")
                continue
            parsed = self.duration(data[kind], (*path, kind))
            if parsed is not None:
                found[kind] = parsed
        first, resolution = found.get("first_response"), found.get("resolution")
        if first is not None and resolution is not None and resolution < first:
            self.fail((*path, "resolution"), "resolution is shorter than first_response")
        if l3 and "next_response" not in data and "first_response" in found:
            found["next_response"] = found["first_response"]
        if set(found) != set(TARGET_KINDS):
            return None
        return Targets(found["first_response"], found["next_response"], found["resolution"])

    def l3(
        self, value: Any, calendars: dict[str, BusinessCalendar]
    ) -> tuple[str | None, dict[str, Targets]]:
        if value is None:
            return None, {}
        data = self.mapping(value, ("l3",), "l3")
        if data is None:
            return None, {}
        self.unknown_keys(data, {"calendar", "targets"}, ("l3",))
        calendar = data.get("calendar")
        if calendar is not None and (not isinstance(calendar, str) or calendar not in calendars):
            if not isinstance(calendar, str) or calendar not in self.declared("calendars"):
                self.fail(("l3", "calendar"), f"unknown calendar {calendar!r}")
            calendar = None
        result: dict[str, Targets] = {}
        per_priority = self.mapping(data.get("targets"), ("l3", "targets"), "l3.targets")
        if per_priority is None:
            return calendar, result
        for priority, spec in per_priority.items():
            path: KeyPath = ("l3", "targets", priority)
            if priority not in PRIORITIES:
                self.fail(path, f"unknown priority {priority!r}; expected " + ", ".join(PRIORITIES))
                continue
            targets = self.target_set(spec, path, l3=True)
            if targets is not None:
                result[priority] = targets
        for priority in PRIORITIES:
            if priority not in per_priority:
                self.fail(("l3", "targets", priority), f"l3 is missing priority {priority!r}")
        return calendar, result

    def warn_fractions(self, value: Any) -> tuple[float, ...]:
        path: KeyPath = ("warn_fractions",)
        if not isinstance(value, list):
            self.fail(path, f"must be a list of fractions like [0.75, 0.9], got {_kind(value)}")
            return DEFAULT_WARN_FRACTIONS
        result: list[float] = []
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, int | float):
                self.fail((*path, i), f"not a number: {item!r}")
            elif not 0 < item < 1:
                self.fail((*path, i), f"fraction {item} must be between 0 and 1 (exclusive)")
            elif item in result:
                self.fail((*path, i), f"fraction {item} is listed twice")
            else:
                result.append(float(item))
        return tuple(sorted(result))


def _as_date(value: Any) -> date | None:
    if isinstance(value, datetime):
        return None  # a timestamp is not a day; refuse rather than guess a time zone
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            return None
    return None


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    names = {"dict": "a mapping", "list": "a list", "str": "a string"}
    kind = type(value).__name__
    return names.get(kind, kind)
