"""The daemon's timer: an APScheduler 3.x `BackgroundScheduler` that wakes the daemon at each slot.

One job per check, whose trigger (`SlotTrigger`) asks `Schedule.next_after`: the timer, the catch-up at
start and every replica sharing the history derive the same slots.  The timer is not the record of what
ran (the history is): its only executor (`HandOffExecutor`) passes each due slot to the daemon's
dispatch, which returns at once (queue the run, or record the slot skipped), so a slow check never
holds the timer.  It is imported by the daemon only: the CLI does not pay for importing APScheduler.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.executors.base import BaseExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

from reversib.scheduler import Schedule

log = logging.getLogger("reversib.daemon")
UTC = timezone.utc
# APScheduler hands a slot back as a datetime (whole microseconds) whose `timestamp()` can be one float
# ulp below the slot `Schedule.next_after` computed (`every: 71.793s` does it), and the slot "after" it
# would be the same slot again.  Slots are at least 1 s apart, so the slot after `previous + _NUDGE`
# is the next one, never the same.
_NUDGE = 0.0005
# A slot found this far behind the timer's clock (suspended host, clock jump) is not followed by the
# slots in between: they are logged as passed unseen and the timer moves on to the next future slot.
JUMP = 1.0


def to_utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class SlotTrigger(BaseTrigger):  # type: ignore[misc]  # APScheduler 3.x is untyped
    """An APScheduler trigger that fires at the slots of a `Schedule`, so the timer wakes the daemon at
    exactly the instants the catch-up and the other replicas derive from the same schedule."""

    def __init__(self, check_id: str, schedule: Schedule) -> None:
        self.check_id = check_id
        self.schedule = schedule
        self._warned: datetime | None = None

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime:
        if previous_fire_time is None:
            return to_utc(self.schedule.next_after(now.timestamp()))
        following = self.schedule.next_after(previous_fire_time.timestamp() + _NUDGE)
        if following <= now.timestamp() - JUMP:  # APScheduler asks twice per wake-up: warn once
            later = self.schedule.next_after(now.timestamp())
            if self._warned != previous_fire_time:
                self._warned = previous_fire_time
                log.warning("check %s: slots between %s and %s passed unseen (clock jump or overload)",
                            self.check_id, to_utc(following).isoformat(), to_utc(later).isoformat(),
                            extra={"event": "slots_unseen", "check": self.check_id})
            following = later
        return to_utc(following)

    def __str__(self) -> str:
        return f"slots of {self.schedule.describe()}"

    def __repr__(self) -> str:
        return f"<SlotTrigger {self.check_id}: {self.schedule.describe()}>"


class HandOffExecutor(BaseExecutor):  # type: ignore[misc]  # APScheduler 3.x is untyped
    """Calls a job's function in APScheduler's own thread, as APScheduler's `DebugExecutor` does, but
    with each due run time (the slot) as its `run_time` keyword (a placeholder in the job, filled here),
    which APScheduler's own executors do not pass.  The function only hands the slot to the daemon and
    returns, so no thread pool sits between the timer and the daemon, and an instance lasts only for the
    hand-off (`max_instances` never refuses a slot).  `misfire_grace_time` is not applied: the daemon
    takes late slots (`SlotTrigger` bounds how late)."""

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        events = []
        for run_time in run_times:
            try:
                job.func(*job.args, **{**job.kwargs, "run_time": run_time})
            except Exception as exc:
                log.exception("timer: handing slot %s of job %s to the daemon failed", run_time, job.id)
                events.append(JobExecutionEvent(EVENT_JOB_ERROR, job.id, job._jobstore_alias, run_time,
                                                exception=exc, traceback="".join(traceback.format_tb(
                                                    sys.exc_info()[2]))))
            else:
                events.append(JobExecutionEvent(EVENT_JOB_EXECUTED, job.id, job._jobstore_alias, run_time))
        self._run_job_success(job.id, events)


def make_timer() -> Any:
    """The daemon's timer: a `BackgroundScheduler` in UTC whose only executor hands slots over.

    Job defaults chosen so that a slot is never silently dropped or doubled: `coalesce=False` hands
    every due slot over (the first runs, the others are recorded skipped as overlap); no
    `misfire_grace_time`, so a late wake-up still hands over the slot it was for; `max_instances=1`
    never bites because a hand-off returns at once."""
    return BackgroundScheduler(
        timezone=UTC, executors={"default": HandOffExecutor()},
        job_defaults={"coalesce": False, "misfire_grace_time": None, "max_instances": 1})


def add_slot_job(timer: Any, check_id: str, schedule: Schedule, func: Callable[..., None], now: float) -> None:
    """Add (or replace) the job of `check_id`: first fire at the first slot after `now`, then at each slot;
    `func(check_id, run_time=slot)` is called by `HandOffExecutor`."""
    timer.add_job(func, SlotTrigger(check_id, schedule), args=(check_id,), kwargs={"run_time": None},
                  id=check_id, name=check_id, replace_existing=True, next_run_time=to_utc(schedule.next_after(now)),
                  coalesce=False, misfire_grace_time=None, max_instances=1)
