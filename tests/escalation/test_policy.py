"""SLA policy loading, validation with file/line/key, and deadline computation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from config.categories import PRIORITIES, Text
from escalation.policy import (
    DEFAULT_SLA_PATH,
    SlaConfig,
    Targets,
    compute_deadlines,
    compute_l3_deadlines,
    load_sla,
    load_sla_text,
    parse_days,
    parse_duration,
    warning_times,
)

MSK = ZoneInfo("Europe/Moscow")
H = timedelta(hours=1)
M = timedelta(minutes=1)


def msk(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=MSK)


# A small valid policy; tests break one line of it at a time.
BASE = """\
default_tier: standard
warn_fractions: [0.75, 0.9]
manager_escalation_after: 30m
owner_silence_after: 2h
calendars:
  office:
    timezone: Europe/Moscow
    hours:
      mon-fri: "09:00-18:00"
    holidays:
      country: RU
    extra_holidays:
      - {date: 2025-03-18, name: Company day off}
    extra_working_days:
      - 2025-03-22
  always:
    timezone: UTC
    hours: 24/7
tiers:
  standard:
    title: {en: Standard, ru: Стандарт}
    calendar: office
  enterprise:
    title: {en: Enterprise, ru: Корпоративный}
    calendar: always
targets:
  standard:
    critical: {first_response: 1h, next_response: 2h, resolution: 8h}
    high: {first_response: 2h, next_response: 4h, resolution: 16h}
    normal: {first_response: 4h, next_response: 8h, resolution: 40h}
    low: {first_response: 8h, next_response: 16h, resolution: 80h}
  enterprise:
    critical: {first_response: 15m, next_response: 1h, resolution: 4h}
    high: {first_response: 1h, next_response: 2h, resolution: 12h}
    normal: {first_response: 4h, next_response: 8h, resolution: 2d}
    low: {first_response: 8h, next_response: 1d, resolution: 5d}
l3:
  calendar: office
  targets:
    critical: {first_response: 1h, resolution: 8h}
    high: {first_response: 4h, resolution: 24h}
    normal: {first_response: 8h, next_response: 4h, resolution: 40h}
    low: {first_response: 16h, resolution: 80h}
"""


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing ``needle``."""
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in text")


def load(text: str) -> SlaConfig:
    config, problems = load_sla_text(text)
    assert problems == []
    assert config is not None
    return config


def problems_of(text: str) -> list[tuple[int | None, str, str]]:
    config, problems = load_sla_text(text, "sla.yaml")
    assert config is None
    assert problems, "expected problems"
    assert all(p.file == "sla.yaml" for p in problems)
    return [(p.line, p.key, p.message) for p in problems]


def broken(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", 30 * M),
        ("4h", 4 * H),
        ("1h30m", 90 * M),
        ("1h 30m", 90 * M),
        ("2d", 48 * H),
        ("1d4h", 28 * H),
        ("45s", timedelta(seconds=45)),
        (" 8H ", 8 * H),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "4", "h", "4x", "30m1h", "-1h", "1.5h", "4 hours"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(text)


def test_parse_days() -> None:
    assert parse_days("mon-fri") == [0, 1, 2, 3, 4]
    assert parse_days("sat,sun") == [5, 6]
    assert parse_days("fri-mon") == [4, 5, 6, 0]
    assert parse_days("daily") == list(range(7))
    with pytest.raises(ValueError):
        parse_days("monday-friday")


# --------------------------------------------------------------------------- bundled file


def test_bundled_sla_loads_without_problems() -> None:
    config, problems = load_sla(DEFAULT_SLA_PATH)
    assert problems == []
    assert config is not None
    assert config.default_tier in config.tiers
    assert set(config.tiers) == {"free", "standard", "business", "enterprise"}
    for tier in config.tiers:
        for priority in PRIORITIES:
            targets = config.targets_for(tier, priority)
            assert targets.first_response <= targets.resolution
        assert isinstance(config.tiers[tier].title, Text)
    assert config.calendar_for("enterprise").always_open
    assert not config.calendar_for("standard").always_open
    assert config.warn_fractions == (0.75, 0.9)
    assert set(config.l3_targets) == set(PRIORITIES)
    # Stricter tiers answer faster.
    order = ["free", "standard", "business", "enterprise"]
    for priority in PRIORITIES:
        firsts = [config.targets_for(t, priority).first_response for t in order]
        assert firsts == sorted(firsts, reverse=True)


def test_bundled_office_calendar_knows_russian_holidays() -> None:
    config, _ = load_sla(DEFAULT_SLA_PATH)
    assert config is not None
    cal = config.calendar_for("standard")
    assert not cal.is_open(msk(2025, 1, 3, 12))
    assert cal.is_open(msk(2025, 11, 1, 12))  # a working Saturday in Russia
    assert not cal.is_open(msk(2025, 12, 30, 12))  # the company's own day off


def test_small_policy_loads() -> None:
    config = load(BASE)
    assert config.default_tier == "standard"
    assert config.manager_escalation_after == 30 * M
    assert config.owner_silence_after == 2 * H
    assert config.targets[("enterprise", "normal")] == Targets(4 * H, 8 * H, 48 * H)
    assert config.tiers["enterprise"].title == Text("Enterprise", "Корпоративный")
    assert config.l3_targets["critical"] == Targets(H, H, 8 * H)  # next defaults to first
    assert config.l3_targets["normal"].next_response == 4 * H
    assert config.l3_calendar_for("enterprise") is config.calendars["office"]
    cal = config.calendars["office"]
    assert not cal.is_open(msk(2025, 3, 18, 12))
    assert cal.is_open(msk(2025, 3, 22, 12))


def test_optional_keys_have_defaults() -> None:
    text = BASE
    for key in ("warn_fractions", "manager_escalation_after", "owner_silence_after"):
        text = "\n".join(line for line in text.splitlines() if not line.startswith(key)) + "\n"
    text = text[: text.index("l3:")]
    config = load(text)
    assert config.warn_fractions == (0.75, 0.9)
    assert config.manager_escalation_after == H
    assert config.owner_silence_after == H
    assert config.l3_targets_for("critical") is None


def test_hours_variants() -> None:
    text = broken(
        '      mon-fri: "09:00-18:00"\n',
        '      mon-thu: ["09:00-13:00", "14:00-18:00"]\n'
        '      fri: "09:00-16:45"\n      sat: closed\n      sun: off\n',
    )
    cal = load(text).calendars["office"]
    assert cal.summary().startswith("mon-thu 09:00-13:00, 14:00-18:00; fri 09:00-16:45")


# --------------------------------------------------------------------------- problems


def test_unknown_calendar_in_tier() -> None:
    text = broken("    calendar: always", "    calendar: nights")
    assert problems_of(text) == [
        (
            line_of(text, "calendar: nights"),
            "tiers.enterprise.calendar",
            "unknown calendar 'nights'; known: always, office",
        )
    ]


def test_unknown_time_zone() -> None:
    text = broken("timezone: Europe/Moscow", "timezone: Europe/Moskva")
    [(line, key, message)] = problems_of(text)
    assert (line, key) == (line_of(text, "Moskva"), "calendars.office.timezone")
    assert "Europe/Moskva" in message


@pytest.mark.parametrize(
    ("hours", "message"),
    [
        ('"25:00-26:00"', "between 00:00 and 24:00"),
        ('"18:00-09:00"', "end must be after start"),
        ('"09:00-13:00, 12:00-18:00"', "overlapping"),
        ("10:00", "quote times"),  # YAML 1.1 reads it as the number 600
    ],
)
def test_bad_hours(hours: str, message: str) -> None:
    text = broken('mon-fri: "09:00-18:00"', f"mon-fri: {hours}")
    [(line, key, got)] = problems_of(text)
    assert (line, key) == (line_of(text, "mon-fri"), "calendars.office.hours.mon-fri")
    assert message in got


def test_bad_day_names_and_duplicates() -> None:
    text = broken(
        '      mon-fri: "09:00-18:00"\n',
        '      mon-fri: "09:00-18:00"\n      fri: "10:00-12:00"\n      funday: closed\n',
    )
    assert problems_of(text) == [
        (
            line_of(text, 'fri: "10'),
            "calendars.office.hours.fri",
            "fri is already set by 'mon-fri'",
        ),
        (
            line_of(text, "funday"),
            "calendars.office.hours.funday",
            "bad days 'funday': use mon..sun, ranges like mon-fri",
        ),
    ]


def test_bad_duration() -> None:
    text = broken("high: {first_response: 2h,", "high: {first_response: 2 hours,")
    [(line, key, message)] = problems_of(text)
    assert (line, key) == (line_of(text, "2 hours"), "targets.standard.high.first_response")
    assert "bad duration '2 hours'" in message


def test_duration_without_units() -> None:
    text = broken("manager_escalation_after: 30m", "manager_escalation_after: 30")
    assert problems_of(text) == [
        (3, "manager_escalation_after", "duration must be a string like 30m, 4h, 2d; got 30")
    ]


def test_tier_missing_a_priority() -> None:
    text = broken("    low: {first_response: 8h, next_response: 16h, resolution: 80h}\n", "")
    assert problems_of(text) == [
        (
            line_of(text, "targets:") + 1,
            "targets.standard.low",
            "tier 'standard' is missing priority 'low'",
        )
    ]


def test_unknown_priority_and_missing_target_kind() -> None:
    text = broken(
        "    critical: {first_response: 1h, next_response: 2h, resolution: 8h}",
        "    urgent: {first_response: 1h, next_response: 2h, resolution: 8h}\n"
        "    critical: {first_response: 1h, resolution: 8h}",
    )
    got = problems_of(text)
    assert (
        line_of(text, "urgent"),
        "targets.standard.urgent",
        "unknown priority 'urgent'; expected critical, high, normal, low",
    ) in got
    assert (
        line_of(text, "    critical: {first_response: 1h, resolution"),
        "targets.standard.critical.next_response",
        "missing next_response",
    ) in got


def test_tier_without_targets_and_targets_for_unknown_tier() -> None:
    text = broken("  enterprise:\n    critical", "  premium:\n    critical")
    got = problems_of(text)
    assert (
        line_of(text, "premium"),
        "targets.premium",
        "targets for unknown tier 'premium'",
    ) in got
    assert (
        line_of(text, "targets:"),
        "targets.enterprise",
        "tier 'enterprise' has no targets",
    ) in got


def test_resolution_shorter_than_first_response() -> None:
    text = broken(
        "critical: {first_response: 1h, next_response: 2h, resolution: 8h}",
        "critical: {first_response: 1h, next_response: 2h, resolution: 30m}",
    )
    assert problems_of(text) == [
        (
            line_of(text, "resolution: 30m"),
            "targets.standard.critical.resolution",
            "resolution is shorter than first_response",
        )
    ]


def test_unknown_holiday_country_and_subdivision() -> None:
    text = broken("country: RU", "country: XX")
    [(line, key, message)] = problems_of(text)
    assert (line, key) == (line_of(text, "country: XX"), "calendars.office.holidays.country")
    assert "XX" in message
    text = broken("country: RU", "country: US\n      subdiv: ZZ")
    [(line, key, message)] = problems_of(text)
    assert (line, key) == (line_of(text, "subdiv: ZZ"), "calendars.office.holidays.subdiv")
    assert "ZZ" in message


def test_failed_calendar_is_not_reported_again_by_its_tier() -> None:
    text = broken("timezone: UTC", "timezone: Nowhere/Land")
    assert [key for _, key, _ in problems_of(text)] == ["calendars.always.timezone"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[0.75, 1.0]", "fraction 1.0 must be between 0 and 1 (exclusive)"),
        ("[0, 0.5]", "fraction 0 must be between 0 and 1 (exclusive)"),
        ("[0.5, 0.5]", "fraction 0.5 is listed twice"),
        ("[high]", "not a number: 'high'"),
    ],
)
def test_bad_warn_fractions(value: str, message: str) -> None:
    text = broken("warn_fractions: [0.75, 0.9]", f"warn_fractions: {value}")
    [(line, key, got)] = problems_of(text)
    assert line == 2
    assert key.startswith("warn_fractions.")
    assert got == message


def test_unsorted_warn_fractions_are_sorted() -> None:
    config = load(broken("[0.75, 0.9]", "[0.9, 0.5]"))
    assert config.warn_fractions == (0.5, 0.9)


def test_unknown_default_tier() -> None:
    text = broken("default_tier: standard", "default_tier: gold")
    assert problems_of(text) == [
        (1, "default_tier", "unknown tier 'gold'; known: enterprise, standard")
    ]


def test_unknown_keys_are_reported() -> None:
    text = broken("    timezone: UTC", "    timezone: UTC\n    timzone: UTC")
    text = text.replace("owner_silence_after: 2h", "owner_silence_afte: 2h")
    keys = [key for _, key, _ in problems_of(text)]
    assert keys == ["owner_silence_afte", "calendars.always.timzone"]


def test_bilingual_title_required() -> None:
    text = broken("title: {en: Standard, ru: Стандарт}", "title: {en: Standard}")
    assert problems_of(text) == [
        (line_of(text, "{en: Standard}"), "tiers.standard.title.ru", "missing ru text")
    ]


def test_bad_dates() -> None:
    text = broken("      - 2025-03-22", '      - "2025-02-30"')
    assert problems_of(text) == [
        (
            line_of(text, "2025-02-30"),
            "calendars.office.extra_working_days.0",
            "bad date '2025-02-30': expected YYYY-MM-DD",
        )
    ]
    # Unquoted, PyYAML itself fails on the impossible date; that must not crash the loader.
    text = broken("      - 2025-03-22", "      - 2025-02-30")
    assert problems_of(text) == [
        (
            line_of(text, "2025-02-30"),
            "calendars.office.extra_working_days.0",
            "invalid date '2025-02-30': day is out of range for month",
        )
    ]


def test_date_both_holiday_and_working_day() -> None:
    text = broken("      - 2025-03-22", "      - 2025-03-18")
    assert problems_of(text) == [
        (
            line_of(text, "extra_working_days"),
            "calendars.office.extra_working_days",
            "2025-03-18 is both an extra holiday and an extra working day",
        )
    ]


def test_calendar_without_hours() -> None:
    text = broken('      mon-fri: "09:00-18:00"', "      mon-fri: closed")
    assert problems_of(text) == [
        (
            line_of(text, "hours:"),
            "calendars.office.hours",
            "the calendar has no weekly working hours",
        )
    ]


def test_every_problem_is_reported_at_once() -> None:
    text = (
        broken("timezone: Europe/Moscow", "timezone: Europe/Moskva")
        .replace("default_tier: standard", "default_tier: gold")
        .replace("resolution: 16h}", "resolution: 16x}")
    )
    assert [key for _, key, _ in problems_of(text)] == [
        "default_tier",
        "calendars.office.timezone",
        "targets.standard.high.resolution",
    ]


def test_yaml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    config, problems = load_sla_text("calendars: [\n", "sla.yaml")
    assert config is None
    assert problems[0].line == 2
    config, problems = load_sla(tmp_path / "missing.yaml")
    assert config is None
    assert problems[0].message == "file not found"


def test_not_a_mapping() -> None:
    assert problems_of("- 1\n- 2\n") == [(1, "", "sla.yaml must be a mapping, got a list")]


def test_missing_sections() -> None:
    keys = [key for _, key, _ in problems_of("default_tier: free\n")]
    assert keys == ["calendars", "targets", "tiers"]


def test_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "sla.yaml"
    path.write_text(BASE.replace("country: RU", "country: XX"), encoding="utf-8")
    config, problems = load_sla(path)
    assert config is None
    assert [(p.file, p.key) for p in problems] == [(str(path), "calendars.office.holidays.country")]
    assert str(problems[0]).startswith(f"{path}:{line_of(BASE, 'country: RU')} [calendars.office")


# --------------------------------------------------------------------------- deadlines


def test_compute_deadlines_business_hours() -> None:
    config = load(BASE)
    opened = msk(2025, 3, 14, 17, 55)  # Friday
    deadlines = compute_deadlines(config, "standard", "critical", opened)
    assert deadlines == {
        "first_response": msk(2025, 3, 17, 9, 55),
        "resolution": msk(2025, 3, 17, 16, 55),
        "next_response": None,
    }
    # Tuesday 18 March is the company day off.
    high = compute_deadlines(config, "standard", "high", opened)
    assert high["resolution"] == msk(2025, 3, 19, 15, 55)


def test_twenty_four_seven_tier_vs_business_hours_tier() -> None:
    config = load(BASE)
    opened = msk(2025, 3, 14, 17, 55)
    enterprise = compute_deadlines(config, "enterprise", "critical", opened)
    assert enterprise["first_response"] == msk(2025, 3, 14, 18, 10)
    assert enterprise["resolution"] == msk(2025, 3, 14, 21, 55)


def test_next_response_runs_from_the_unanswered_message() -> None:
    config = load(BASE)
    opened = msk(2025, 3, 17, 10)
    deadlines = compute_deadlines(
        config,
        "standard",
        "high",
        opened,
        first_response_at=msk(2025, 3, 17, 11),
        awaiting_reply_since=msk(2025, 3, 17, 17),
    )
    assert deadlines["next_response"] == msk(2025, 3, 19, 12)  # 1h Mon, Tue off, 3h Wed


def test_priority_change_is_a_pure_recompute_from_opening() -> None:
    config = load(BASE)
    opened = msk(2025, 3, 17, 10)
    pauses = [(msk(2025, 3, 17, 10, 30), msk(2025, 3, 17, 11, 30))]
    before = compute_deadlines(config, "standard", "normal", opened, pauses)
    after = compute_deadlines(config, "standard", "critical", opened, pauses)
    assert before["first_response"] == msk(2025, 3, 17, 15)
    assert after["first_response"] == msk(2025, 3, 17, 12)  # 1h counted, 1h paused
    cal = config.calendar_for("standard")
    # 7h on Monday (half an hour paused), Tuesday off, the last hour on Wednesday.
    assert after["resolution"] == cal.deadline(opened, 8 * H, pauses) == msk(2025, 3, 19, 10)
    # Lowering it back gives exactly the original deadlines: no state carried over.
    assert compute_deadlines(config, "standard", "normal", opened, pauses) == before


def test_open_pause_means_no_deadline() -> None:
    config = load(BASE)
    opened = msk(2025, 3, 17, 10)
    deadlines = compute_deadlines(
        config, "standard", "low", opened, [(msk(2025, 3, 17, 10, 30), None)]
    )
    assert deadlines["resolution"] is None
    assert deadlines["first_response"] is None


def test_tier_change_recomputes_with_the_other_calendar() -> None:
    config = load(BASE)
    opened = msk(2025, 3, 15, 12)  # Saturday
    assert compute_deadlines(config, "standard", "high", opened)["first_response"] == msk(
        2025, 3, 17, 11
    )
    assert compute_deadlines(config, "enterprise", "high", opened)["first_response"] == msk(
        2025, 3, 15, 13
    )


def test_unknown_tier_falls_back_to_default() -> None:
    config = load(BASE)
    assert config.calendar_for("gold") is config.calendars["office"]
    assert config.targets_for("gold", "high") == config.targets_for("standard", "high")
    with pytest.raises(KeyError):
        config.targets_for("standard", "urgent")


def test_l3_deadlines() -> None:
    config = load(BASE)
    escalated = datetime(2025, 3, 14, 20, tzinfo=UTC)  # Friday 23:00 in Moscow
    assert compute_l3_deadlines(config, "enterprise", "critical", escalated) == {
        "first_response": msk(2025, 3, 17, 10),  # l3.calendar is the office, even for 24/7
        "resolution": msk(2025, 3, 17, 17),
    }
    no_l3 = load(BASE[: BASE.index("l3:")])
    assert compute_l3_deadlines(no_l3, "enterprise", "critical", escalated) == {}


def test_warning_times() -> None:
    config = load(BASE)
    cal = config.calendar_for("standard")
    opened = msk(2025, 3, 17, 17)
    assert warning_times(config, cal, opened, 4 * H) == [
        (0.75, msk(2025, 3, 19, 11)),
        (0.9, msk(2025, 3, 19, 11, 36)),
    ]
