"""APScheduler is the daemon's timer (not the record): one job per check firing at `Schedule.next_after`,
every due slot handed to the daemon's dispatch and nothing run on APScheduler's thread; reloads add,
remove and reschedule jobs; a late wake-up hands over the slots it was for."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from reversib.config import ScheduleConfig, Settings, load_settings
from reversib.daemon import Daemon
from reversib.history import History
from reversib.model import RunResult
from reversib.runner import run_check
from reversib.scheduler import Schedule
from reversib.timer import JUMP, SlotTrigger, add_slot_job, make_timer, to_utc

from .helpers import poll, small_export, write_config

CHECK = {"source": {"url": "../exp"}, "manifest": {"path": "SHA256SUMS"}}


@pytest.fixture
def history(tmp_path: Path) -> Iterator[History]:
    with History.open(f"sqlite:///{tmp_path / 'history.db'}") as h:
        yield h


def configure(tmp_path: Path, schedules: dict[str, dict[str, Any] | None], **extra: dict[str, Any]) -> Path:
    """Write the configuration: check id -> schedule (None: no schedule), `extra` merged into a check."""
    if not (tmp_path / "exp").exists():
        small_export(tmp_path / "exp")
    checks = {cid: {**CHECK, **({"schedule": s} if s else {}), **extra.get(cid, {})} for cid, s in schedules.items()}
    return write_config(tmp_path, checks)


def expected_next(settings: Settings, check_id: str, now: float) -> datetime:
    schedule = Schedule.of(settings.find(check_id))  # type: ignore[arg-type]
    assert schedule is not None
    return to_utc(schedule.next_after(now))


def test_the_timer_is_an_apscheduler_job_per_check_at_the_schedule_slots(tmp_path: Path, history: History) -> None:
    settings = load_settings(configure(tmp_path, {"hourly": {"every": "1h"}, "paris": {"cron": "30 7 * * *"},
                                                  "manual": None}, paris={"timezone": "Europe/Paris"}))
    now = time.time()
    daemon = Daemon(settings, history, clock=lambda: now)
    daemon.start(catch_up=False)
    try:
        assert isinstance(daemon.timer, BackgroundScheduler) and daemon.timer.running and daemon.timer_alive
        jobs = {job.id: job for job in daemon.timer.get_jobs()}
        assert sorted(jobs) == ["hourly", "paris"]  # no job for a check without a schedule
        for check_id, job in jobs.items():
            assert isinstance(job.trigger, SlotTrigger)
            assert job.next_run_time == expected_next(settings, check_id, now)
            assert daemon.next_slot(check_id) == job.next_run_time.timestamp()
            assert (job.coalesce, job.misfire_grace_time, job.max_instances) == (False, None, 1)
        assert jobs["paris"].next_run_time.astimezone(ZoneInfo("Europe/Paris")).strftime("%H:%M") == "07:30"
        assert daemon.next_slot("manual") is None
    finally:
        daemon.stop(10)
    assert not daemon.timer.running and not daemon.timer_alive


def test_the_trigger_fires_at_every_slot_of_the_schedule() -> None:
    """Both agree exactly, over a thousand millisecond-offset slots (float round trips through datetime
    must never give the same slot twice) and across a daylight saving change."""
    every = Schedule(ScheduleConfig(every=71.793), offset=43.402)  # 1874888094.451 comes back 1 ulp low
    trigger = SlotTrigger("c", every)
    slot, fire = 1_874_888_000.0, None
    for _ in range(1000):
        fire = trigger.get_next_fire_time(fire, to_utc(slot))
        slot = every.next_after(slot)
        assert fire == to_utc(slot)
    paris = Schedule(ScheduleConfig(cron="30 7 * * *"), "Europe/Paris")
    trigger = SlotTrigger("p", paris)
    t = datetime(2026, 3, 27, 8, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    fire = trigger.get_next_fire_time(None, to_utc(t))
    for _ in range(4):
        assert fire == to_utc(paris.next_after(t))
        assert fire.astimezone(ZoneInfo("Europe/Paris")).strftime("%H:%M") == "07:30"
        t = fire.timestamp()
        fire = trigger.get_next_fire_time(fire, fire)


def test_a_clock_jump_moves_the_trigger_to_the_next_future_slot_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    schedule = Schedule(ScheduleConfig(every=10))
    trigger = SlotTrigger("c", schedule)
    prev = to_utc(1000.0)
    assert trigger.get_next_fire_time(prev, to_utc(1010.0 + JUMP / 2)) == to_utc(1010.0)  # late: next slot
    caplog.set_level(logging.WARNING, "reversib.daemon")
    for _ in range(2):  # APScheduler asks twice per wake-up
        assert trigger.get_next_fire_time(prev, to_utc(1100.5)) == to_utc(1110.0)
    unseen = [r for r in caplog.records if "passed unseen" in r.getMessage()]
    assert len(unseen) == 1 and "c" in unseen[0].getMessage()


def test_a_late_wake_up_hands_over_each_slot_it_was_for_once() -> None:
    handed: list[tuple[str, float, str]] = []
    timer = make_timer()
    schedule = Schedule(ScheduleConfig(every=1))
    start = time.time()
    add_slot_job(timer, "c", schedule, lambda cid, run_time: handed.append(
        (cid, run_time.timestamp(), threading.current_thread().name)), start)
    timer.start(paused=True)  # the timer sleeps through the first slots, as an overloaded host would
    try:
        first = schedule.next_after(start)
        time.sleep(max(0.0, first + 1.5 - time.time()))
        timer.resume()
        poll("slots after the wake-up", lambda: len(handed) >= 4, timeout=10)
    finally:
        timer.shutdown()
    slots = [s for _, s, _ in handed]
    assert slots[0] == pytest.approx(first, abs=1e-6)
    assert slots == [pytest.approx(first + i, abs=1e-6) for i in range(len(slots))]  # none lost, none twice
    assert {cid for cid, _, _ in handed} == {"c"} and {name for _, _, name in handed} == {"APScheduler"}


class Recorder:
    """A runner that notes on which thread it runs, blocking until released."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.release = threading.Event()

    def __call__(self, check: Any, history: History, **kw: Any) -> RunResult:
        self.threads.append(threading.current_thread().name)
        self.release.wait(30)
        return run_check(check, history, **kw)


def test_the_hand_off_returns_at_once_and_runs_nothing_on_the_timer_thread(
        tmp_path: Path, history: History, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(configure(tmp_path, {"often": {"every": "1s"}}))
    runner = Recorder()
    daemon = Daemon(settings, history, runner=runner)
    slow_writes: list[float] = []
    record = history.record_skipped

    def slow_record(check_id: str, slot: float, reason: str) -> bool:
        time.sleep(0.5)  # a slow history: must not hold the timer
        slow_writes.append(slot)
        return record(check_id, slot, reason)

    monkeypatch.setattr(history, "record_skipped", slow_record)
    handed: list[float] = []
    due = daemon._due

    def timed_due(check_id: str, run_time: datetime) -> None:
        t0 = time.perf_counter()
        due(check_id, run_time=run_time)
        handed.append(time.perf_counter() - t0)

    monkeypatch.setattr(daemon, "_due", timed_due)
    daemon.start(catch_up=False)
    try:
        poll("two slots recorded skipped while the first run blocks", lambda: len(slow_writes) >= 2)
        runner.release.set()
        assert daemon.stop(10)
    finally:
        runner.release.set()
        daemon.stop(10)
    assert runner.threads and all(name.startswith("reversib-run-") for name in runner.threads)
    assert max(handed) < 0.2, handed  # the 0.5 s skip writes happened on the helper thread
    assert {s.timestamp() for s, _ in history.skipped_slots("often")} >= set(slow_writes[:2])


def test_reload_adds_removes_and_reschedules_jobs(tmp_path: Path, history: History) -> None:
    settings = load_settings(configure(tmp_path, {"keep": {"every": "1h"}, "change": {"every": "1h"},
                                                  "drop": {"every": "1h"}}))
    daemon = Daemon(settings, history)
    daemon.start(catch_up=False)
    try:
        kept = daemon.timer.get_job("keep")
        kept_next = kept.next_run_time
        configure(tmp_path, {"keep": {"every": "1h"}, "change": {"every": "2d"}, "new": {"cron": "0 3 * * *"},
                             "manual": None})
        before = time.time()
        assert daemon.reload()
        after = time.time()
        jobs = {job.id: job for job in daemon.timer.get_jobs()}
        assert sorted(jobs) == ["change", "keep", "new"]
        assert jobs["keep"] is kept and jobs["keep"].next_run_time == kept_next  # unchanged: left alone
        fresh = daemon.settings
        for check_id in ("change", "new"):
            assert jobs[check_id].next_run_time in {expected_next(fresh, check_id, before),
                                                    expected_next(fresh, check_id, after)}
        assert jobs["change"].trigger.schedule.every == 2 * 86400
        configure(tmp_path, {"keep": {"every": "1h"}, "broken": {"every": "0s"}})
        assert not daemon.reload()  # rejected: the jobs stay as they were
        assert sorted(job.id for job in daemon.timer.get_jobs()) == ["change", "keep", "new"]
    finally:
        daemon.stop(10)
