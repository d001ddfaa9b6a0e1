"""Business-time maths on the tricky cases: weekends, holidays, time zones, DST, pauses."""

from __future__ import annotations

import time as wallclock
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from escalation.calendar import (
    FULL_DAY,
    BusinessCalendar,
    CalendarError,
    NoWorkingTimeError,
    format_duration,
    parse_clock,
    parse_hours,
)

MSK = ZoneInfo("Europe/Moscow")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
H = timedelta(hours=1)
M = timedelta(minutes=1)
NINE_TO_SIX = parse_hours("09:00-18:00")


def weekdays(hours: str, weekend: str = "closed") -> list[tuple[tuple[int, int], ...]]:
    return [parse_hours(hours)] * 5 + [parse_hours(weekend)] * 2


def office(**kwargs: Any) -> BusinessCalendar:
    """Mon-Fri 09:00-18:00 in Moscow; holidays only when asked for."""
    return BusinessCalendar("office", "Europe/Moscow", weekdays("09:00-18:00"), **kwargs)


def msk(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=MSK)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=UTC)


# --------------------------------------------------------------------------- parsing


def test_parse_hours() -> None:
    assert parse_hours("09:00-18:00") == ((9 * 3600, 18 * 3600),)
    assert parse_hours("14:00-18:00, 09:00-13:00") == (
        (9 * 3600, 13 * 3600),
        (14 * 3600, 18 * 3600),
    )
    assert parse_hours("22:00-24:00") == ((22 * 3600, 86400),)
    assert parse_hours("closed") == ()
    assert parse_clock("9:05") == 9 * 3600 + 300


@pytest.mark.parametrize(
    "text",
    [
        "25:00-26:00",
        "18:00-09:00",
        "09:00-09:00",
        "24:00-24:00",
        "09:60-10:00",
        "9-18",
        "09:00-13:00, 12:00-18:00",
        "09:00-18:00-19:00",
        "24:30-24:45",
    ],
)
def test_parse_hours_rejects(text: str) -> None:
    with pytest.raises(CalendarError):
        parse_hours(text)


def test_format_duration() -> None:
    assert format_duration(timedelta(hours=26, minutes=5)) == "26h05m"
    assert format_duration(timedelta(seconds=61)) == "0h01m01s"


def test_bad_definitions() -> None:
    with pytest.raises(CalendarError, match="time zone"):
        BusinessCalendar("x", "Mars/Olympus", weekdays("09:00-18:00"))
    with pytest.raises(CalendarError, match="XX"):
        BusinessCalendar("x", "UTC", weekdays("09:00-18:00"), holiday_country="XX")
    with pytest.raises(CalendarError, match="ZZ"):
        BusinessCalendar(
            "x", "UTC", weekdays("09:00-18:00"), holiday_country="US", holiday_subdiv="ZZ"
        )
    with pytest.raises(CalendarError, match="7 days"):
        BusinessCalendar("x", "UTC", [NINE_TO_SIX] * 5)


def test_naive_datetimes_are_rejected() -> None:
    cal = office()
    with pytest.raises(ValueError, match="timezone-aware"):
        cal.add(datetime(2025, 3, 14, 17, 55), H)
    with pytest.raises(ValueError, match="timezone-aware"):
        cal.is_open(datetime(2025, 3, 14, 17, 55))
    with pytest.raises(ValueError, match="timezone-aware"):
        cal.deadline(msk(2025, 3, 14, 9), H, [(datetime(2025, 3, 14, 10), None)])


def test_no_working_time_is_a_clear_error() -> None:
    cal = BusinessCalendar("never", "UTC", [()] * 7)
    assert not cal.has_working_time()
    with pytest.raises(NoWorkingTimeError, match="never"):
        cal.add(utc(2025, 1, 1), H)
    with pytest.raises(NoWorkingTimeError):
        cal.next_open(utc(2025, 1, 1))


# --------------------------------------------------------------------------- add


def test_friday_1755_with_one_hour_target_is_due_monday_0955() -> None:
    cal = office()
    due = cal.add(msk(2025, 3, 14, 17, 55), H)  # a Friday
    assert due == msk(2025, 3, 17, 9, 55)
    assert due.tzinfo is UTC
    assert due == utc(2025, 3, 17, 6, 55)


def test_target_ending_exactly_at_closing_lands_at_closing() -> None:
    assert office().add(msk(2025, 3, 14, 17), H) == msk(2025, 3, 14, 18)


def test_zero_duration_is_the_start() -> None:
    assert office().add(msk(2025, 3, 15, 3), timedelta(0)) == msk(2025, 3, 15, 3)


def test_negative_duration_rejected() -> None:
    with pytest.raises(ValueError):
        office().add(msk(2025, 3, 14, 12), -H)


@pytest.mark.parametrize(
    ("start", "duration", "due"),
    [
        (msk(2025, 3, 17, 7, 0), H, msk(2025, 3, 17, 10, 0)),  # before opening
        (msk(2025, 3, 18, 2, 0), 30 * M, msk(2025, 3, 18, 9, 30)),  # at night
        (msk(2025, 3, 17, 23, 59), 30 * M, msk(2025, 3, 18, 9, 30)),  # late evening
        (msk(2025, 3, 15, 12, 0), 2 * H, msk(2025, 3, 17, 11, 0)),  # Saturday
        (msk(2025, 3, 16, 23, 59, 59), 2 * H, msk(2025, 3, 17, 11, 0)),  # Sunday night
        (msk(2025, 3, 17, 9, 0), 9 * H, msk(2025, 3, 17, 18, 0)),  # a full day
        (msk(2025, 3, 17, 9, 0), 9 * H + M, msk(2025, 3, 18, 9, 1)),
        (msk(2025, 3, 14, 10, 0), 45 * H, msk(2025, 3, 21, 10, 0)),  # a working week
    ],
)
def test_start_outside_hours(start: datetime, duration: timedelta, due: datetime) -> None:
    assert office().add(start, duration) == due


def test_split_hours_and_lunch_break() -> None:
    cal = BusinessCalendar("split", "Europe/Moscow", weekdays("09:00-13:00, 14:00-18:00"))
    assert cal.add(msk(2025, 3, 17, 12, 30), H) == msk(2025, 3, 17, 14, 30)
    assert cal.elapsed(msk(2025, 3, 17, 8), msk(2025, 3, 17, 20)) == 8 * H


def test_second_exact() -> None:
    start = msk(2025, 3, 14, 17, 59, 59)
    assert office().add(start, timedelta(seconds=2)) == msk(2025, 3, 17, 9, 0, 1)
    # The last microsecond of Friday fits exactly: due at closing, not on Monday.
    just_before = start + timedelta(microseconds=1)
    assert office().add(just_before, timedelta(microseconds=999_999)) == msk(2025, 3, 14, 18)
    assert office().add(just_before, timedelta(seconds=1)) == msk(2025, 3, 17, 9, 0, 0, 1)


def test_interval_to_midnight_and_night_shift() -> None:
    # An evening shift 22:00-24:00 followed by 00:00-02:00 the next day is one stretch.
    week = [parse_hours("00:00-02:00, 22:00-24:00")] * 7
    cal = BusinessCalendar("night", "Europe/Moscow", week)
    assert cal.is_open(msk(2025, 3, 17, 23, 59))
    assert cal.is_open(msk(2025, 3, 18, 0, 0))
    assert not cal.is_open(msk(2025, 3, 18, 2, 0))
    assert cal.add(msk(2025, 3, 17, 23, 0), 2 * H) == msk(2025, 3, 18, 1, 0)
    assert cal.add(msk(2025, 3, 17, 12, 0), 3 * H) == msk(2025, 3, 18, 1, 0)


def test_is_open_and_next_open() -> None:
    cal = office()
    assert cal.is_open(msk(2025, 3, 17, 9, 0))
    assert not cal.is_open(msk(2025, 3, 17, 18, 0))
    assert not cal.is_open(msk(2025, 3, 15, 12, 0))
    assert cal.next_open(msk(2025, 3, 17, 10, 0)) == msk(2025, 3, 17, 10, 0)
    assert cal.next_open(msk(2025, 3, 14, 18, 0)) == msk(2025, 3, 17, 9, 0)
    assert cal.next_open(msk(2025, 3, 17, 8, 59, 59)) == msk(2025, 3, 17, 9, 0)


# --------------------------------------------------------------------------- holidays


def test_russian_new_year_holidays_and_working_saturday() -> None:
    cal = office(holiday_country="RU")
    # Fri 27 Dec 2024 17:00 + 2h: Sat 28 Dec 2024 was a working day in Russia.
    assert cal.add(msk(2024, 12, 27, 17), 2 * H) == msk(2024, 12, 28, 10)
    # The holidays library's working weekends can be ignored: then 30 Dec - 8 Jan are off.
    strict = office(holiday_country="RU", weekend_workdays=False)
    assert strict.add(msk(2024, 12, 27, 17), 2 * H) == msk(2025, 1, 9, 10)
    # Elapsed across the New Year break counts only the two working hours.
    assert strict.elapsed(msk(2024, 12, 27, 17), msk(2025, 1, 9, 10)) == 2 * H
    assert not cal.is_open(msk(2025, 1, 3, 12))


def test_extra_holiday_in_the_middle() -> None:
    cal = office(extra_holidays={date(2025, 3, 18): "Company day off"})
    assert cal.add(msk(2025, 3, 17, 17), 2 * H) == msk(2025, 3, 19, 10)
    assert cal.day_plan(date(2025, 3, 18)).note == "Company day off"


def test_extra_working_saturday() -> None:
    cal = office(extra_working_days=[date(2025, 3, 15)])
    assert cal.add(msk(2025, 3, 14, 17), 2 * H) == msk(2025, 3, 15, 10)
    short = office(extra_working_days={date(2025, 3, 15): parse_hours("10:00-14:00")})
    assert short.add(msk(2025, 3, 14, 17), 2 * H) == msk(2025, 3, 15, 11)
    assert short.add(msk(2025, 3, 14, 17), 6 * H) == msk(2025, 3, 17, 10)


def test_extra_working_day_overrides_a_public_holiday() -> None:
    cal = office(holiday_country="RU", extra_working_days=[date(2025, 1, 8)])
    assert cal.add(msk(2024, 12, 31, 12), H) == msk(2025, 1, 8, 10)


def test_us_california_holidays() -> None:
    cal = BusinessCalendar(
        "ca",
        "America/Los_Angeles",
        weekdays("09:00-17:00"),
        holiday_country="US",
        holiday_subdiv="CA",
    )
    la = ZoneInfo("America/Los_Angeles")
    # Cesar Chavez Day, Monday 31 March 2025, is a California holiday.
    due = cal.add(datetime(2025, 3, 28, 16, tzinfo=la), 2 * H)
    assert due == datetime(2025, 4, 1, 10, tzinfo=la)


# --------------------------------------------------------------------------- time zones


def test_calendar_in_moscow_input_in_utc_or_any_zone() -> None:
    cal = office()
    start_utc = utc(2025, 3, 14, 14, 55)  # Fri 17:55 in Moscow (UTC+3)
    assert cal.add(start_utc, H) == utc(2025, 3, 17, 6, 55)
    start_ny = start_utc.astimezone(NEW_YORK)
    assert cal.add(start_ny, H) == utc(2025, 3, 17, 6, 55)
    assert cal.add(start_ny, H).tzinfo is UTC
    # 05:00 UTC is 08:00 in Moscow: closed; 06:00 UTC is 09:00: open.
    assert not cal.is_open(utc(2025, 3, 17, 5, 59))
    assert cal.is_open(utc(2025, 3, 17, 6, 0))


def test_dst_spring_forward_berlin() -> None:
    cal = BusinessCalendar("berlin", "Europe/Berlin", weekdays("09:00-17:00"))
    start = datetime(2025, 3, 28, 13, tzinfo=BERLIN)  # Fri, CET (UTC+1)
    due = cal.add(start, 8 * H)
    # 4h on Friday, 4h on Monday after the switch: 13:00 wall clock, now CEST (UTC+2).
    assert due == datetime(2025, 3, 31, 13, tzinfo=BERLIN)
    assert due == utc(2025, 3, 31, 11)
    assert cal.elapsed(start, due) == 8 * H


def test_dst_fall_back_berlin() -> None:
    cal = BusinessCalendar("berlin", "Europe/Berlin", weekdays("09:00-17:00"))
    start = datetime(2025, 10, 24, 13, tzinfo=BERLIN)  # Fri, CEST (UTC+2)
    due = cal.add(start, 8 * H)
    assert due == datetime(2025, 10, 27, 13, tzinfo=BERLIN)
    assert due == utc(2025, 10, 27, 12)


def test_dst_new_york_both_switches() -> None:
    cal = BusinessCalendar("ny", "America/New_York", weekdays("09:00-17:00"))
    assert cal.add(datetime(2025, 3, 7, 13, tzinfo=NEW_YORK), 8 * H) == utc(2025, 3, 10, 17)
    assert cal.add(datetime(2025, 10, 31, 13, tzinfo=NEW_YORK), 8 * H) == utc(2025, 11, 3, 18)


def test_dst_day_counts_real_time_in_a_night_shift() -> None:
    cal = BusinessCalendar("night", "Europe/Berlin", [parse_hours("00:00-06:00")] * 7)
    spring, autumn = date(2025, 3, 30), date(2025, 10, 26)
    assert (
        cal.elapsed(
            datetime(2025, 3, 30, tzinfo=UTC) - 2 * H, datetime(2025, 3, 30, 12, tzinfo=UTC)
        )
        == 5 * H
    )
    assert (
        cal.elapsed(
            datetime(2025, 10, 26, tzinfo=UTC) - 2 * H, datetime(2025, 10, 26, 12, tzinfo=UTC)
        )
        == 7 * H
    )
    assert cal.day_plan(spring).intervals == ((utc(2025, 3, 29, 23), utc(2025, 3, 30, 4)),)
    assert cal.day_plan(autumn).intervals == ((utc(2025, 10, 25, 22), utc(2025, 10, 26, 5)),)


def test_interval_starting_in_the_dst_gap_starts_when_clocks_jump() -> None:
    cal = BusinessCalendar("gap", "Europe/Berlin", [parse_hours("02:30-05:00")] * 7)
    # 02:30 does not exist on 30 March 2025: clocks jump from 02:00 CET to 03:00 CEST.
    assert cal.day_plan(date(2025, 3, 30)).intervals == (
        (utc(2025, 3, 30, 1), utc(2025, 3, 30, 3)),
    )
    swallowed = BusinessCalendar("gap", "Europe/Berlin", [parse_hours("02:10-02:50")] * 7)
    assert swallowed.day_plan(date(2025, 3, 30)).intervals == ()


def test_daily_full_day_calendar_with_holidays_is_continuous_across_dst() -> None:
    cal = BusinessCalendar("ny247", "America/New_York", [FULL_DAY] * 7, holiday_country="US")
    assert not cal.always_open
    start = datetime(2025, 3, 8, 12, tzinfo=NEW_YORK)  # EST
    # Real time: 24h after Saturday 12:00 EST is Sunday 13:00 EDT (17:00 UTC both).
    assert cal.add(start, 24 * H) == utc(2025, 3, 9, 17)
    assert cal.add(start, 24 * H) == datetime(2025, 3, 9, 13, tzinfo=NEW_YORK)
    # Independence Day (a Friday in 2025) is skipped entirely.
    start = datetime(2025, 7, 3, 12, tzinfo=NEW_YORK)
    assert cal.add(start, 24 * H) == datetime(2025, 7, 5, 12, tzinfo=NEW_YORK)


# --------------------------------------------------------------------------- 24/7


def test_twenty_four_seven() -> None:
    cal = BusinessCalendar.twenty_four_seven()
    assert cal.always_open
    start = msk(2025, 3, 14, 17, 55)
    assert cal.add(start, H) == msk(2025, 3, 14, 18, 55)
    assert cal.is_open(msk(2025, 1, 1, 3))
    assert cal.next_open(start) == start
    assert cal.elapsed(start, start + 50 * H) == 50 * H
    assert cal.deadline(start, H, [(start, start + 30 * M)]) == start + 90 * M


def test_twenty_four_seven_vs_business_hours() -> None:
    start = msk(2025, 3, 14, 17, 55)
    assert BusinessCalendar.twenty_four_seven().add(start, 4 * H) == msk(2025, 3, 14, 21, 55)
    assert office().add(start, 4 * H) == msk(2025, 3, 17, 12, 55)


# --------------------------------------------------------------------------- pauses


def test_pause_inside_hours_pushes_the_deadline() -> None:
    cal = office()
    start = msk(2025, 3, 17, 10)
    pauses = [(msk(2025, 3, 17, 11), msk(2025, 3, 17, 12, 30))]
    assert cal.deadline(start, 2 * H, pauses) == msk(2025, 3, 17, 13, 30)
    assert cal.consumed(start, msk(2025, 3, 17, 13), pauses) == 90 * M


def test_pause_outside_hours_changes_nothing() -> None:
    cal = office()
    start = msk(2025, 3, 14, 17)
    pauses = [(msk(2025, 3, 14, 19), msk(2025, 3, 17, 8, 30))]  # the weekend
    assert cal.deadline(start, 2 * H, pauses) == cal.add(start, 2 * H) == msk(2025, 3, 17, 10)


def test_pause_across_the_weekend() -> None:
    cal = office()
    start = msk(2025, 3, 14, 16)
    pauses = [(msk(2025, 3, 14, 17), msk(2025, 3, 17, 11))]
    assert cal.deadline(start, 2 * H, pauses) == msk(2025, 3, 17, 12)


def test_overlapping_and_nested_pauses_count_once() -> None:
    cal = office()
    start = msk(2025, 3, 17, 9)
    pauses = [
        (msk(2025, 3, 17, 10), msk(2025, 3, 17, 11)),
        (msk(2025, 3, 17, 10, 30), msk(2025, 3, 17, 12)),
        (msk(2025, 3, 17, 10, 45), msk(2025, 3, 17, 11, 15)),
        (msk(2025, 3, 17, 12), msk(2025, 3, 17, 12)),  # empty
    ]
    # Unordered input is fine too.
    assert cal.deadline(start, 3 * H, pauses[::-1]) == msk(2025, 3, 17, 14)
    assert cal.consumed(start, msk(2025, 3, 17, 14), pauses) == 3 * H


def test_pause_that_began_before_the_start() -> None:
    cal = office()
    pauses = [(msk(2025, 3, 17, 8), msk(2025, 3, 17, 10))]
    assert cal.deadline(msk(2025, 3, 17, 9), H, pauses) == msk(2025, 3, 17, 11)


def test_open_pause_stops_the_clock() -> None:
    cal = office()
    start = msk(2025, 3, 17, 9)
    open_pause = [(msk(2025, 3, 17, 10), None)]
    assert cal.deadline(start, 2 * H, open_pause) is None
    assert cal.consumed(start, msk(2025, 3, 20, 12), open_pause) == H
    # Paused at night: nothing counts from the pause on.
    assert cal.deadline(start, 10 * H, [(msk(2025, 3, 17, 20), None)]) is None
    assert cal.consumed(start, msk(2025, 3, 19, 12), [(msk(2025, 3, 17, 20), None)]) == 9 * H


def test_open_pause_after_the_deadline_keeps_the_past_deadline() -> None:
    cal = office()
    start = msk(2025, 3, 17, 9)
    assert cal.deadline(start, H, [(msk(2025, 3, 17, 15), None)]) == msk(2025, 3, 17, 10)


def test_closed_then_open_pause() -> None:
    cal = office()
    start = msk(2025, 3, 17, 9)
    pauses = [(msk(2025, 3, 17, 10), msk(2025, 3, 17, 11)), (msk(2025, 3, 17, 12), None)]
    assert cal.deadline(start, 2 * H + 30 * M, pauses) is None
    assert cal.deadline(start, 2 * H, pauses) == msk(2025, 3, 17, 12)
    assert cal.consumed(start, msk(2025, 3, 18, 12), pauses) == 2 * H


def test_pause_ending_before_it_starts_is_rejected() -> None:
    with pytest.raises(ValueError, match="before it starts"):
        office().deadline(msk(2025, 3, 17, 9), H, [(msk(2025, 3, 17, 11), msk(2025, 3, 17, 10))])


def test_consumed_before_start_is_zero() -> None:
    assert office().consumed(msk(2025, 3, 17, 12), msk(2025, 3, 17, 11)) == timedelta(0)


def test_elapsed_rejects_reversed_range() -> None:
    with pytest.raises(ValueError):
        office().elapsed(msk(2025, 3, 17, 12), msk(2025, 3, 17, 11))


# --------------------------------------------------------------------------- explain


def test_explain_names_every_counted_and_skipped_stretch() -> None:
    cal = office(holiday_country="RU")
    start = msk(2024, 12, 27, 17)
    pauses = [(msk(2024, 12, 28, 12), msk(2024, 12, 28, 13))]
    exp = cal.explain(start, 12 * H, pauses)
    assert exp.deadline == cal.deadline(start, 12 * H, pauses) == msk(2025, 1, 9, 12)
    kinds = [s.kind for s in exp.steps]
    assert kinds == [
        "counted",
        "counted",
        "pause",
        "counted",
        "day_off",
        "holiday",
        "holiday",
        "holiday",
        "holiday",
        "holiday",
        "counted",
    ]
    counted = [s for s in exp.steps if s.kind == "counted"]
    assert sum((s.counted for s in counted), timedelta(0)) == 12 * H
    assert exp.steps[-1].total == 12 * H
    new_year = next(s for s in exp.steps if s.note == "New Year Holidays")
    assert (new_year.start, new_year.end) == (msk(2025, 1, 1), msk(2025, 1, 7))
    text = "\n".join(exp.lines())
    assert "holidays RU" in text
    assert "working weekend day (RU)" in text
    assert "New Year Holidays" in text
    assert "waiting for customer" in text
    assert "deadline Thu 2025-01-09 12:00:00" in text


def test_explain_open_pause() -> None:
    cal = office()
    exp = cal.explain(msk(2025, 3, 17, 9), 2 * H, [(msk(2025, 3, 17, 10), None)])
    assert exp.deadline is None
    assert exp.steps[-1].kind == "pause"
    assert exp.steps[-1].end is None
    assert exp.steps[-1].total == H
    assert "clock is stopped" in exp.lines()[-1] or "clock stopped" in "\n".join(exp.lines())


def test_explain_open_pause_on_a_weekend() -> None:
    cal = office()
    exp = cal.explain(msk(2025, 3, 14, 17), 2 * H, [(msk(2025, 3, 15, 10), None)])
    assert exp.deadline is None
    assert [s.kind for s in exp.steps] == ["counted", "day_off", "pause"]
    assert exp.steps[1].end == exp.steps[2].start == msk(2025, 3, 15, 10)


def test_explain_merges_a_weekend_into_one_line() -> None:
    exp = office().explain(msk(2025, 3, 14, 17), 2 * H)
    assert [(s.kind, s.note) for s in exp.steps] == [
        ("counted", "fri"),
        ("day_off", "sat-sun"),
        ("counted", "mon"),
    ]


def test_explain_24_7() -> None:
    cal = BusinessCalendar.twenty_four_seven()
    exp = cal.explain(utc(2025, 3, 14, 17), 10 * H)
    assert exp.deadline == utc(2025, 3, 15, 3)
    assert [(s.start, s.end, s.counted, s.note) for s in exp.steps] == [
        (utc(2025, 3, 14, 17), utc(2025, 3, 15, 3), 10 * H, "fri-sat")
    ]
    assert len(cal.explain(utc(2025, 3, 14, 17), 120 * H).steps) == 1
    assert "24/7" in exp.lines()[0]


# --------------------------------------------------------------------------- properties

CALENDARS = [
    office(
        holiday_country="RU",
        extra_holidays=[date(2025, 3, 18)],
        extra_working_days=[date(2025, 3, 22)],
    ),
    BusinessCalendar(
        "berlin",
        "Europe/Berlin",
        weekdays("09:00-12:00, 13:00-17:30", "10:00-14:00"),
        holiday_country="DE",
        holiday_subdiv="BE",
    ),
    BusinessCalendar(
        "ny-nights",
        "America/New_York",
        [parse_hours("00:00-03:00, 22:00-24:00")] * 7,
        holiday_country="US",
    ),
    BusinessCalendar.twenty_four_seven(),
]
instants = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2026, 12, 31), timezones=st.just(UTC)
)
durations = st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=300))
calendars = st.sampled_from(CALENDARS)


@settings(max_examples=300, deadline=None)
@given(cal=calendars, start=instants, duration=durations)
def test_elapsed_is_the_inverse_of_add(
    cal: BusinessCalendar, start: datetime, duration: timedelta
) -> None:
    due = cal.add(start, duration)
    assert due >= start
    assert cal.elapsed(start, due) == duration
    if duration > timedelta(0):
        assert cal.is_open(due - timedelta(microseconds=1))


@settings(max_examples=300, deadline=None)
@given(cal=calendars, start=instants, d1=durations, d2=durations)
def test_add_is_monotonic_in_duration(
    cal: BusinessCalendar, start: datetime, d1: timedelta, d2: timedelta
) -> None:
    lo, hi = sorted((d1, d2))
    assert cal.add(start, lo) <= cal.add(start, hi)


@settings(max_examples=300, deadline=None)
@given(cal=calendars, s1=instants, s2=instants, duration=durations)
def test_add_is_monotonic_in_start(
    cal: BusinessCalendar, s1: datetime, s2: datetime, duration: timedelta
) -> None:
    lo, hi = sorted((s1, s2))
    assert cal.add(lo, duration) <= cal.add(hi, duration)


@settings(max_examples=200, deadline=None)
@given(cal=calendars, a=instants, b=instants, c=instants)
def test_elapsed_is_additive(cal: BusinessCalendar, a: datetime, b: datetime, c: datetime) -> None:
    a, b, c = sorted((a, b, c))
    if c - a > timedelta(days=120):
        c = a + timedelta(days=120)
        b = min(b, c)
    assert cal.elapsed(a, b) + cal.elapsed(b, c) == cal.elapsed(a, c)


@settings(max_examples=200, deadline=None)
@given(
    cal=calendars,
    start=instants,
    target=durations,
    raw=st.lists(
        st.tuples(
            st.timedeltas(min_value=-timedelta(days=2), max_value=timedelta(days=20)),
            st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3)),
        ),
        max_size=4,
    ),
)
def test_consumed_at_the_deadline_is_the_target(
    cal: BusinessCalendar,
    start: datetime,
    target: timedelta,
    raw: list[tuple[timedelta, timedelta]],
) -> None:
    pauses: list[tuple[datetime, datetime | None]] = [
        (start + offset, start + offset + length) for offset, length in raw
    ]
    due = cal.deadline(start, target, pauses)
    assert due is not None
    assert due >= cal.add(start, target)
    assert cal.consumed(start, due, pauses) == target
    exp = cal.explain(start, target, pauses)
    assert exp.deadline == due
    assert sum((s.counted for s in exp.steps), timedelta(0)) == target


def test_fast_enough_for_thousands_of_calls() -> None:
    cal = CALENDARS[0]
    base = utc(2025, 1, 1)
    began = wallclock.perf_counter()
    for i in range(3000):
        start = base + timedelta(minutes=97 * i)
        cal.add(start, timedelta(hours=1 + i % 40))
    assert wallclock.perf_counter() - began < 10  # generous: it takes well under a second
