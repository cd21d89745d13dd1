"""Schedule slots: the same instants in every process, derived from the schedule alone."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from reversib.config import ScheduleConfig
from reversib.scheduler import Schedule, spread

PARIS = ZoneInfo("Europe/Paris")


def ts(*args: int, tz: ZoneInfo = PARIS) -> float:
    return datetime(*args, tzinfo=tz).timestamp()


def test_every_slots_are_multiples_of_the_interval_since_the_epoch() -> None:
    s = Schedule(ScheduleConfig(every=3600))
    assert s.next_after(7200) == 10800 and s.next_after(7199.5) == 7200
    assert s.last_at_or_before(10799) == 7200 and s.last_at_or_before(10800) == 10800
    assert s.last_at_or_before(10799, horizon=3598) is None
    assert s.interval(0) == 3600


def test_every_slots_are_spread_by_a_stable_offset_per_check() -> None:
    offsets = {spread(f"check-{i}", 60) for i in range(1000)}
    assert len(offsets) > 900 and all(0 <= o < 60 for o in offsets)
    assert spread("acme", 60) == spread("acme", 60)
    s = Schedule(ScheduleConfig(every=60), offset=17.5)
    assert s.next_after(0) == 17.5 and s.next_after(17.5) == 77.5 and s.last_at_or_before(77.4) == 17.5


def test_cron_slots_follow_the_time_zone_across_daylight_saving() -> None:
    s = Schedule(ScheduleConfig(cron="30 7 * * *"), "Europe/Paris")
    # 2026-03-29: Paris moves from UTC+1 to UTC+2; 07:30 local stays 07:30 local.
    assert s.next_after(ts(2026, 3, 28, 8, 0)) == ts(2026, 3, 29, 7, 30)
    assert s.next_after(ts(2026, 3, 29, 7, 30)) == ts(2026, 3, 30, 7, 30)
    assert ts(2026, 3, 30, 7, 30) - ts(2026, 3, 29, 7, 30) == 86400
    assert s.last_at_or_before(ts(2026, 3, 29, 7, 29)) == ts(2026, 3, 28, 7, 30)
    assert s.last_at_or_before(ts(2026, 3, 29, 7, 30)) == ts(2026, 3, 29, 7, 30)
    assert s.last_at_or_before(ts(2026, 3, 29, 7, 29), horizon=3600) is None
    assert s.interval(ts(2026, 5, 1, 0, 0)) == 86400


def test_frequent_and_rare_cron_find_the_latest_slot() -> None:
    minute = Schedule(ScheduleConfig(cron="* * * * *"))
    now = ts(2026, 1, 5, 10, 17, 42, tz=ZoneInfo("UTC"))
    assert minute.last_at_or_before(now) == ts(2026, 1, 5, 10, 17, tz=ZoneInfo("UTC"))
    monthly = Schedule(ScheduleConfig(cron="0 3 1 * *"))
    assert monthly.last_at_or_before(now) == ts(2026, 1, 1, 3, 0, tz=ZoneInfo("UTC"))
    assert monthly.last_at_or_before(now, horizon=86400) is None
