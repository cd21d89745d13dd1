"""Reversibility indicators of one check over a period, computed from its runs (docs/evidence.md).

Pure functions over plain run records: the report and the metrics compute the same figures.

* **Delivery windows** come from `expect.deadline` (not the polling schedule): window D opens at
  day D's deadline (in the check's time zone) and lasts until the next day's.  Its verdict is the
  first *conclusive* run (passed or failed) started inside it: passed -> `on_time`, failed ->
  `missed` (late or incomplete).  With a dated generation, a run that checked a generation dated
  after day D (delivered early, before its own deadline) says nothing of window D and is left out.
  A window with no run at all (reversib was down) or with only could-not-verify runs is
  `unmeasured`, never counted against the provider; a window still open at the end of the period
  without a conclusive run is `pending`.
  On-time-and-complete ratio = on_time / (on_time + missed).
* **Time since the last complete export**: end of period minus the finish of the newest passed run.
* **Longest gap**: the longest stretch of the period without a passed run (period start and end
  count as bounds).
* **MTTR**: an incident opens at the first failed run and closes at the next passed run (finish
  times); could-not-verify and deferred runs neither open nor close one.  Incidents still open at
  the end are listed as open and left out of the mean.
* **Could-not-verify ratio**: runs with outcome `error` / all completed runs.
* **Export growth**: files and bytes listed by each conclusive run; a point with fewer files or
  bytes than SHRINK_FACTOR times the previous point is flagged as a sudden shrinkage.
* **Restore duration (RTO)**, where restore tests run: per run, the sum of the `restore_seconds` of
  its `restored` findings (one per dump restored; docs/dumps.md); the last, mean and longest value,
  and the trend: the least-squares slope of those durations against time, in seconds per 30 days
  (positive: restores are getting slower).
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from reversib.history import iso

SHRINK_FACTOR = 0.8  # a drop of more than 20% of files or bytes from one conclusive run to the next
CONCLUSIVE = ("passed", "failed")


@dataclass(frozen=True, slots=True)
class RunPoint:
    """What the indicators need of one completed run."""

    run_id: str
    outcome: str
    started_at: dt.datetime
    finished_at: dt.datetime
    files_listed: int = 0
    bytes_listed: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    restore_seconds: float | None = None  # sum over the dumps restored by the run; None: no restore
    generation_day: dt.date | None = None  # the date of the dated generation the run checked, if any


def generation_day(check: Any, generation: str | None) -> dt.date | None:
    """The delivery date of the generation a run of `check` (CheckConfig) checked: its folder name read
    with the check's date template; None without a dated generation."""
    gen = getattr(check, "generation", None)
    if gen is None or not gen.is_date or not generation:
        return None
    try:
        return dt.datetime.strptime(generation, gen.pattern).date()
    except ValueError:
        return None


@dataclass(frozen=True)
class Window:
    day: dt.date
    deadline_at: dt.datetime
    status: str  # on_time | missed | unmeasured | pending
    run_id: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"day": self.day.isoformat(), "deadline_at": iso(self.deadline_at), "status": self.status,
                "run_id": self.run_id, "reason": self.reason}


@dataclass
class Incident:
    started_at: dt.datetime
    first_run_id: str
    failed_runs: int = 1
    ended_at: dt.datetime | None = None
    closing_run_id: str | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def open(self) -> bool:
        return self.ended_at is None

    def duration(self, until: dt.datetime) -> float:
        return ((self.ended_at or until) - self.started_at).total_seconds()

    def to_dict(self, until: dt.datetime) -> dict[str, Any]:
        return {"started_at": iso(self.started_at), "ended_at": iso(self.ended_at), "open": self.open,
                "duration_seconds": round(self.duration(until), 3), "failed_runs": self.failed_runs,
                "first_run_id": self.first_run_id, "closing_run_id": self.closing_run_id,
                "counts": dict(sorted(self.counts.items()))}


@dataclass
class Indicators:
    check_id: str
    since: dt.datetime
    until: dt.datetime
    deadline: str | None
    windows: list[Window]
    runs: int
    outcomes: dict[str, int]
    last_complete_at: dt.datetime | None
    longest_gap: tuple[float, dt.datetime, dt.datetime]
    incidents: list[Incident]
    growth: list[tuple[dt.datetime, int, int, bool]]  # (finished_at, files, bytes, sudden shrinkage)
    restores: list[tuple[dt.datetime, float]] = field(default_factory=list)  # (started_at, restore seconds)

    def count(self, status: str) -> int:
        return sum(1 for w in self.windows if w.status == status)

    @property
    def on_time_ratio(self) -> float | None:
        measured = self.count("on_time") + self.count("missed")
        return None if self.deadline is None or not measured else self.count("on_time") / measured

    @property
    def could_not_verify_ratio(self) -> float | None:
        return None if not self.runs else self.outcomes.get("error", 0) / self.runs

    @property
    def since_last_complete_seconds(self) -> float | None:
        return None if self.last_complete_at is None else (self.until - self.last_complete_at).total_seconds()

    @property
    def mttr_seconds(self) -> float | None:
        closed = [i.duration(self.until) for i in self.incidents if not i.open]
        return None if not closed else sum(closed) / len(closed)

    @property
    def open_incidents(self) -> list[Incident]:
        return [i for i in self.incidents if i.open]

    @property
    def restore_trend_per_30d(self) -> float | None:
        """Least-squares slope of the restore durations against time, in seconds per 30 days."""
        if len(self.restores) < 2:
            return None
        t0 = self.restores[0][0]
        xs = [(t - t0).total_seconds() / (30 * 86400) for t, _ in self.restores]
        ys = [v for _, v in self.restores]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        return None if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var

    @property
    def shrinkages(self) -> list[tuple[dt.datetime, int, int, bool]]:
        return [g for g in self.growth if g[3]]

    def summary(self) -> dict[str, Any]:
        """The headline figures (also what the metrics expose)."""
        gap, gap_from, gap_to = self.longest_gap
        return {
            "on_time_ratio": _round(self.on_time_ratio),
            "windows": {s: self.count(s) for s in ("on_time", "missed", "unmeasured", "pending")},
            "since_last_complete_seconds": _round(self.since_last_complete_seconds),
            "last_complete_at": iso(self.last_complete_at),
            "longest_gap_seconds": round(gap, 3), "longest_gap_from": iso(gap_from), "longest_gap_to": iso(gap_to),
            "mttr_seconds": _round(self.mttr_seconds),
            "incidents": len(self.incidents), "open_incidents": len(self.open_incidents),
            "could_not_verify_ratio": _round(self.could_not_verify_ratio),
            "runs": self.runs, "outcomes": dict(sorted(self.outcomes.items())),
            "sudden_shrinkages": len(self.shrinkages),
            "restores": len(self.restores),
            "restore_seconds_last": _round(self.restores[-1][1]) if self.restores else None,
            "restore_seconds_mean": _round(sum(v for _, v in self.restores) / len(self.restores))
            if self.restores else None,
            "restore_seconds_max": _round(max(v for _, v in self.restores)) if self.restores else None,
            "restore_trend_seconds_per_30d": _round(self.restore_trend_per_30d),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "check_id": self.check_id, "since": iso(self.since), "until": iso(self.until),
            "deadline": self.deadline, **self.summary(),
            "unmeasured_windows": [w.to_dict() for w in self.windows if w.status == "unmeasured"],
            "missed_windows": [w.to_dict() for w in self.windows if w.status == "missed"],
            "incident_list": [i.to_dict(self.until) for i in self.incidents],
            "growth": [{"at": iso(t), "files": f, "bytes": b, "sudden_shrinkage": s} for t, f, b, s in self.growth],
            "restore_series": [{"at": iso(t), "seconds": _round(v)} for t, v in self.restores],
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def delivery_windows(runs: Sequence[RunPoint], deadline: dt.time, tz: ZoneInfo, since: dt.datetime,
                     until: dt.datetime) -> list[Window]:
    """The delivery windows whose deadline falls in [since, until], each with its verdict."""
    day = since.astimezone(tz).date() - dt.timedelta(days=1)
    last = until.astimezone(tz).date()
    ordered = sorted(runs, key=lambda r: (r.started_at, r.run_id))
    out: list[Window] = []
    i = 0
    while day <= last:
        start = dt.datetime.combine(day, deadline, tzinfo=tz)
        nxt = day + dt.timedelta(days=1)
        end = dt.datetime.combine(nxt, deadline, tzinfo=tz)
        if since <= start <= until:
            while i < len(ordered) and ordered[i].started_at < start:
                i += 1
            inside = []
            j = i
            while j < len(ordered) and ordered[j].started_at < end:
                checked = ordered[j].generation_day
                if checked is None or checked <= day:
                    inside.append(ordered[j])  # a run of a later, not yet due generation says nothing of D's
                j += 1
            first = next((r for r in inside if r.outcome in CONCLUSIVE), None)
            if first is not None:
                status = "on_time" if first.outcome == "passed" else "missed"
                out.append(Window(day, start, status, first.run_id))
            elif end > until:
                out.append(Window(day, start, "pending", None, "the window is still open"))
            elif any(r.outcome == "error" for r in inside):
                out.append(Window(day, start, "unmeasured", inside[0].run_id, "reversib could not verify"))
            else:
                out.append(Window(day, start, "unmeasured", None, "no run: reversib was not running"))
        day = nxt
    return out


def compute(check_id: str, runs: Sequence[RunPoint], *, since: dt.datetime, until: dt.datetime,
            deadline: dt.time | None = None, tz: ZoneInfo | None = None,
            last_complete_before: dt.datetime | None = None) -> Indicators:
    """The indicators of one check from its completed runs started in [since, until]."""
    runs = sorted((r for r in runs if since <= r.started_at <= until), key=lambda r: (r.started_at, r.run_id))
    outcomes: dict[str, int] = {}
    for r in runs:
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
    windows = delivery_windows(runs, deadline, tz or ZoneInfo("UTC"), since, until) if deadline else []
    passes = [r.finished_at for r in runs if r.outcome == "passed"]
    last_complete = max(passes) if passes else last_complete_before
    bounds = [since, *passes, until]
    gap = max(((b - a).total_seconds(), a, b) for a, b in itertools.pairwise(bounds))
    incidents: list[Incident] = []
    current: Incident | None = None
    growth: list[tuple[dt.datetime, int, int, bool]] = []
    for r in runs:
        if r.outcome == "failed":
            if current is None:
                current = Incident(r.finished_at, r.run_id, counts=dict(r.counts))
                incidents.append(current)
            else:
                current.failed_runs += 1
        elif r.outcome == "passed" and current is not None:
            current.ended_at, current.closing_run_id = r.finished_at, r.run_id
            current = None
        if r.outcome in CONCLUSIVE and (r.files_listed or r.bytes_listed):
            prev = growth[-1] if growth else None
            shrink = prev is not None and (r.files_listed < SHRINK_FACTOR * prev[1]
                                           or r.bytes_listed < SHRINK_FACTOR * prev[2])
            growth.append((r.finished_at, r.files_listed, r.bytes_listed, shrink))
    restores = [(r.started_at, r.restore_seconds) for r in runs if r.restore_seconds is not None]
    return Indicators(check_id, since, until, deadline.strftime("%H:%M") if deadline else None, windows, len(runs),
                      outcomes, last_complete, gap, incidents, growth, restores)


METRICS_DAYS = 30


def recent(history: Any, checks: Sequence[Any], now: dt.datetime, days: int = METRICS_DAYS) -> dict[str, Indicators]:
    """The indicators of the last `days` days of the checks (CheckConfig) that have an `expect.deadline`,
    read in one query (the metrics' on-time ratio: a scrape reads only these checks' recent runs)."""
    import sqlalchemy as sa

    from reversib.history import runs_t
    from reversib.model import RunState

    wanted = {c.check_id: c for c in checks if c.expect.deadline_time is not None}
    if not wanted:
        return {}
    since = now - dt.timedelta(days=days)
    r = runs_t.c
    stmt = (sa.select(r.id, r.check_id, r.outcome, r.started_at, r.finished_at, r.generation)
            .where(r.check_id.in_(list(wanted)), r.started_at >= since, r.outcome.is_not(None),
                   r.state != RunState.RUNNING.value))  # as the report reads them: the two must agree
    points: dict[str, list[RunPoint]] = {cid: [] for cid in wanted}
    with history.engine.connect() as conn:
        for row in conn.execute(stmt):
            finished = row.finished_at or row.started_at
            points[row.check_id].append(RunPoint(row.id, row.outcome, row.started_at, finished,
                                                 generation_day=generation_day(wanted[row.check_id], row.generation)))
    return {cid: compute(cid, points[cid], since=since, until=now, deadline=c.expect.deadline_time, tz=c.tz)
            for cid, c in wanted.items()}
