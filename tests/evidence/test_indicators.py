"""Indicators over three months of history built through the real runner with a controllable clock:
passes, failures, late deliveries, could-not-verify runs, days when reversib was down, a sudden
shrinkage and an incident still open at the end.  Every figure is asserted exactly."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from reversib.evidence.indicators import compute
from reversib.evidence.report import build_report
from reversib.history import History
from reversib.model import Outcome
from reversib.runner import run_check
from tests.evidence.conftest import DAY, T0, Clock, make_check, write_export
from tests.helpers import DEFAULT_FILES, flip_byte

DAYS = 92
HOUR = 3600.0
# day -> what happens; every other day the export is delivered before the 06:00 deadline and the 07:00 run passes
SCENARIO = {
    5: "late",  # not there at 07:00 (failed), delivered, passes at 12:00
    10: "corrupt",  # delivered corrupt: failed; the next day's export passes
    20: "down",  # reversib did not run
    30: "cnv",  # the source could not be reached: could not verify
    40: "corrupt", 41: "cnv",  # the could-not-verify run neither closes the incident ...
    50: "cnv", 51: "corrupt",  # ... nor opens one
    60: "shrink",  # one small file instead of four: passes, flagged as a sudden shrinkage
    70: "down", 71: "down", 72: "down",  # the longest gap
    90: "corrupt", 91: "corrupt",  # still open at the end
}
SMALL = {"a.txt": b"alpha\n"}


def day_name(day: int) -> str:
    return dt.datetime.fromtimestamp(T0 + day * DAY, dt.timezone.utc).strftime("%Y-%m-%d")


def at(day: int, hour: float) -> float:
    return T0 + day * DAY + hour * HOUR


def deliver(root: Path, day: int, *, small: bool = False, corrupt: bool = False) -> None:
    gen = write_export(root / day_name(day), SMALL if small else None)
    if corrupt:
        flip_byte(gen / "b/c.csv")


def build_history(tmp_path: Path) -> tuple[History, list[Outcome], str]:
    root = tmp_path / "exports"
    root.mkdir(parents=True)
    clock = Clock()
    history = History.open(f"sqlite:///{tmp_path / 'history.db'}", clock=clock, host="test-host")
    check = make_check(root, generation={"pattern": "%Y-%m-%d"}, expect={"deadline": "06:00"})
    seen: list[Outcome] = []

    def run(t: float) -> None:
        clock.t = t
        seen.append(run_check(check, history, clock=clock).outcome)

    for day in range(DAYS):
        kind = SCENARIO.get(day, "ok")
        if kind == "late":
            run(at(day, 7))
            deliver(root, day)
            run(at(day, 12))
            continue
        deliver(root, day, small=kind == "shrink", corrupt=kind == "corrupt")
        if kind == "down":
            continue
        if kind == "cnv":
            os.rename(root, tmp_path / "away")
            try:
                run(at(day, 7))
            finally:
                os.rename(tmp_path / "away", root)
            continue
        run(at(day, 7))
    return history, seen, check.check_id


SINCE = dt.datetime.fromtimestamp(T0, dt.timezone.utc)
UNTIL = dt.datetime.fromtimestamp(T0 + DAYS * DAY, dt.timezone.utc)


def test_the_history_is_what_the_scenario_says(three_months: tuple[History, list[Outcome], str]) -> None:
    _, seen, _ = three_months
    assert len(seen) == DAYS - 4 + 1  # four days down, one extra run on the late day
    assert seen.count(Outcome.ERROR) == 3
    assert seen.count(Outcome.FAILED) == 1 + 1 + 1 + 1 + 2  # late 07:00, and the five corrupt days
    assert seen.count(Outcome.PASSED) == len(seen) - 3 - 6


def test_indicators_exact_values(three_months: tuple[History, list[Outcome], str]) -> None:
    history, _, check_id = three_months
    doc = build_report(history, [make_check(Path("/x"), generation={"pattern": "%Y-%m-%d"},
                                            expect={"deadline": "06:00"})],
                       since=SINCE, until=UNTIL)
    [c] = doc["checks"]
    assert c["check_id"] == check_id
    # windows: 92 deadlines; missed 5, 10, 40, 51, 90, 91; unmeasured 20, 30, 41, 50, 70, 71, 72
    assert c["windows"] == {"on_time": 79, "missed": 6, "unmeasured": 7, "pending": 0}
    assert c["on_time_ratio"] == round(79 / 85, 6)
    assert [w["day"] for w in c["missed_windows"]] == [day_name(d) for d in (5, 10, 40, 51, 90, 91)]
    assert [(w["day"], w["reason"]) for w in c["unmeasured_windows"]] == [
        (day_name(20), "no run: reversib was not running"), (day_name(30), "reversib could not verify"),
        (day_name(41), "reversib could not verify"), (day_name(50), "reversib could not verify"),
        (day_name(70), "no run: reversib was not running"), (day_name(71), "no run: reversib was not running"),
        (day_name(72), "no run: reversib was not running")]
    # last complete export: day 89 07:00; the period ends at day 92 00:00
    assert c["since_last_complete_seconds"] == 2 * DAY + 17 * HOUR
    # longest gap: day 69 07:00 to day 73 07:00 (reversib down 70-72)
    assert c["longest_gap_seconds"] == 4 * DAY
    assert c["longest_gap_from"].startswith(day_name(69) + "T07:00")
    # incidents: 5 (5 h), 10 (24 h), 40 -> 42 across the could-not-verify day (48 h), 51 (24 h), 90 open
    incidents = c["incident_list"]
    assert [(i["started_at"][:13], i["open"], i["duration_seconds"], i["failed_runs"]) for i in incidents] == [
        (day_name(5) + "T07", False, 5 * HOUR, 1),
        (day_name(10) + "T07", False, DAY, 1),
        (day_name(40) + "T07", False, 2 * DAY, 1),
        (day_name(51) + "T07", False, DAY, 1),
        (day_name(90) + "T07", True, UNTIL.timestamp() - at(90, 7), 2),
    ]
    assert c["mttr_seconds"] == (5 * HOUR + DAY + 2 * DAY + DAY) / 4
    assert c["incidents"] == 5 and c["open_incidents"] == 1
    assert incidents[1]["findings"][0]["kind"] == "digest_mismatch"
    assert incidents[1]["findings"][0]["path"] == "b/c.csv"
    assert incidents[0]["findings"][0]["kind"] == "generation_missing"
    # could not verify: 3 of 89 runs
    assert c["runs"] == 89 and c["could_not_verify_ratio"] == round(3 / 89, 6)
    # growth: every conclusive run; one sudden shrinkage, on day 60
    full = sum(len(v) for v in DEFAULT_FILES.values())
    assert len(c["growth"]) == 86
    assert [(g["at"][:10], g["files"], g["bytes"]) for g in c["growth"] if g["sudden_shrinkage"]] == [
        (day_name(60), 1, len(SMALL["a.txt"]))]
    assert (c["growth"][0]["files"], c["growth"][0]["bytes"]) == (len(DEFAULT_FILES), full)
    assert c["sudden_shrinkages"] == 1
    assert c["chain_head"]["seq"] == 89


def test_a_shorter_period_and_a_pending_window(three_months: tuple[History, list[Outcome], str]) -> None:
    history, _, check_id = three_months
    since = dt.datetime.fromtimestamp(at(88, 0), dt.timezone.utc)
    until = dt.datetime.fromtimestamp(at(91, 6.5), dt.timezone.utc)  # day 91's window opened, no run yet
    doc = build_report(history, [make_check(Path("/x"), generation={"pattern": "%Y-%m-%d"},
                                            expect={"deadline": "06:00"})], since=since, until=until)
    [c] = doc["checks"]
    assert c["windows"] == {"on_time": 2, "missed": 1, "unmeasured": 0, "pending": 1}
    assert c["window_strip"] == "oomp"
    assert [(i["started_at"][:13], i["open"]) for i in c["incident_list"]] == [(day_name(90) + "T07", True)]
    assert c["mttr_seconds"] is None


def test_without_a_deadline_there_are_no_windows() -> None:
    ind = compute("x", [], since=SINCE, until=UNTIL)
    assert ind.on_time_ratio is None and ind.windows == []
    assert ind.summary()["longest_gap_seconds"] == DAYS * DAY
    assert ind.since_last_complete_seconds is None and ind.could_not_verify_ratio is None


def test_a_run_of_a_generation_not_yet_due_says_nothing_of_the_open_window() -> None:
    """Day 4's export is on time but reversib is down all day 4; at 03:00 on day 5, before day 5's deadline,
    it checks day 5's export while it is still being written and fails.  Window 4 was never measured: it
    is `unmeasured`, not `missed`.  A run that checked day 4's (or an older) generation still counts."""
    from zoneinfo import ZoneInfo

    from reversib.evidence.indicators import RunPoint, delivery_windows

    utc = dt.timezone.utc
    day = dt.date(2026, 1, 4)

    def point(run_id: str, hour: float, outcome: str, gen: dt.date) -> RunPoint:
        t = dt.datetime(2026, 1, 5, tzinfo=utc) + dt.timedelta(hours=hour)
        return RunPoint(run_id, outcome, t, t, generation_day=gen)

    since, until = dt.datetime(2026, 1, 4, tzinfo=utc), dt.datetime(2026, 1, 7, tzinfo=utc)
    early = point("early", 3, "failed", day + dt.timedelta(days=1))
    [w4, *_] = delivery_windows([early], dt.time(6), ZoneInfo("UTC"), since, until)
    assert (w4.day, w4.status, w4.run_id) == (day, "unmeasured", None)
    late = point("late", 4, "failed", day)  # the day-4 export itself, checked before day 5's deadline
    [w4, *_] = delivery_windows([early, late], dt.time(6), ZoneInfo("UTC"), since, until)
    assert (w4.day, w4.status, w4.run_id) == (day, "missed", "late")


def test_the_generation_day_comes_from_the_check_template() -> None:
    from reversib.evidence.indicators import generation_day

    dated = make_check(Path("/x"), generation={"pattern": "%Y-%m-%d"}, expect={"deadline": "06:00"})
    assert generation_day(dated, "2026-01-05") == dt.date(2026, 1, 5)
    assert generation_day(dated, "not-a-date") is None and generation_day(dated, None) is None
    assert generation_day(make_check(Path("/x")), "2026-01-05") is None  # no dated generation


def test_the_run_strip_shows_each_day(three_months: tuple[History, list[Outcome], str]) -> None:
    """One letter per day: the late day's 12:00 pass wins over its 07:00 failure; days down are `-`;
    could-not-verify days are `e` unless a conclusive run followed."""
    history, _, _ = three_months
    doc = build_report(history, [make_check(Path("/x"), generation={"pattern": "%Y-%m-%d"},
                                            expect={"deadline": "06:00"})], since=SINCE, until=UNTIL)
    strip = doc["checks"][0]["run_strip"]
    assert len(strip) == DAYS + 1 and strip[-1] == "-"  # the period ends at midnight of day 92
    assert (strip[5], strip[10], strip[20], strip[30], strip[41]) == ("p", "f", "-", "e", "e")
    assert strip[70:73] == "---" and strip[90:92] == "ff"
    assert strip.count("e") == 3 and strip.count("f") == 5


def test_the_run_strip_letters() -> None:
    """The last conclusive run of a day decides it; a could-not-verify run outranks a deferred one."""
    from zoneinfo import ZoneInfo

    from reversib.evidence.indicators import RunPoint
    from reversib.evidence.report import run_strip

    utc = dt.timezone.utc
    day0 = dt.datetime(2026, 3, 1, tzinfo=utc)

    def p(day: int, hour: int, outcome: str) -> RunPoint:
        t = day0 + dt.timedelta(days=day, hours=hour)
        return RunPoint(f"{day}-{hour}", outcome, t, t)

    runs = [p(0, 7, "failed"), p(0, 12, "passed"), p(1, 7, "deferred"), p(2, 7, "deferred"), p(2, 9, "error"),
            p(3, 7, "error"), p(3, 9, "deferred"), p(4, 7, "deferred"), p(4, 9, "failed")]
    assert run_strip(runs, day0, day0 + dt.timedelta(days=5, hours=1), ZoneInfo("UTC")) == "pdeef-"

