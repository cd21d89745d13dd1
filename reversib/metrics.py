"""Prometheus metrics rendered from the history database at scrape time.

The history is the single source of truth: each scrape reads the stored results of the configured
checks (`History.check_summaries`: one query of aggregates tells whether anything changed since the
previous scrape, then only what changed is read and formatted again), so a `verify-now` run or a
prune from another process shows in the next scrape, and nothing is read from the providers.

Series carry the label `check` (the check id) plus the check's configured `labels`: never a file
name, a key or a secret.  Every name is listed in docs/metrics.md.
"""

from __future__ import annotations

import logging
import operator
import platform
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from reversib import __version__
from reversib.config import CheckConfig
from reversib.history import CheckSummary, History, HistoryError
from reversib.model import Outcome
from reversib.scheduler import Schedule

log = logging.getLogger("reversib.metrics")

OUTCOMES = [o.value for o in Outcome]


@dataclass(frozen=True)
class DaemonStatus:
    """What the daemon itself reports (absent when the collector runs without a daemon)."""

    scheduler_up: bool
    config_reload_successful: bool
    config_reload_success_at: float
    shard_events: dict[str, int] | None = None  # replicas (docs/scale.md): what this process did with shards
    shards_running: int = 0


@dataclass(frozen=True)
class ScheduledCheck:
    """A configured check as the daemon and the collector use it: the check, its schedule, its expected
    interval (computed once, at configuration load) and its series labels."""

    check: CheckConfig
    schedule: Schedule | None
    interval: float | None
    labels: dict[str, str]
    label_text: str  # the labels in the text format, rendered once: check="x",customer="acme"

    @classmethod
    def of(cls, check: CheckConfig, now: float) -> ScheduledCheck:
        schedule = Schedule.of(check)
        labels = {"check": check.check_id, **check.labels}
        return cls(check, schedule, schedule.interval(now) if schedule is not None else None, labels,
                   _label_text(labels))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_text(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())


def _ts(value: object) -> float:
    stamp = getattr(value, "timestamp", None)
    return float(stamp()) if callable(stamp) else 0.0


class _Family:
    """One metric family whose samples may carry different label sets (each check its own labels).

    Samples keep their labels both as a dict (for prometheus_client's `Metric`) and pre-rendered in
    the text format, so that `text()` formats ~17,000 samples in a few milliseconds."""

    def __init__(self, name: str, doc: str, kind: str) -> None:
        self.name, self.doc, self.kind = name, doc, kind
        self.sample_name = name + ("_total" if kind == "counter" else "")
        self.rows: list[tuple[dict[str, str], str, tuple[str, str] | None, float]] = []

    def add(self, labels: dict[str, str], value: float, text: str | None = None,
            extra: tuple[str, str] | None = None) -> None:
        self.rows.append((labels, _label_text(labels) if text is None else text, extra, value))

    @property
    def metric(self) -> Metric:
        metric = Metric(self.name, self.doc, self.kind)
        for labels, _, extra, value in self.rows:
            metric.samples.append(Sample(self.sample_name, {**labels, extra[0]: extra[1]} if extra else labels,
                                         value))
        return metric

    def text(self, out: list[str]) -> None:
        n = self.sample_name
        out.append(_header(n, self.doc, self.kind))
        for _, text, extra, value in self.rows:
            out.append(_line(n, text, extra, value))


def _header(sample_name: str, doc: str, kind: str) -> str:
    doc = doc.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {sample_name} {doc}\n# TYPE {sample_name} {kind}\n"


def _line(sample_name: str, text: str, extra: tuple[str, str] | None, value: float) -> str:
    """One sample line; `text`: the labels already in the text format."""
    if extra is not None:
        text = f'{text},{extra[0]}="{_escape(extra[1])}"' if text else f'{extra[0]}="{_escape(extra[1])}"'
    return f"{sample_name}{{{text}}} {float(value)!r}\n" if text else f"{sample_name} {float(value)!r}\n"


class HistoryCollector(Collector):
    """A custom collector: `collect()` renders every series from the history, on each scrape."""

    def __init__(self, history: History, checks: Callable[[], Sequence[ScheduledCheck]],
                 status: Callable[[], DaemonStatus] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.history = history
        self.checks = checks
        self.status = status
        self.clock = clock
        self._lock = threading.Lock()
        # What render() last wrote of each check: check id -> (summary, labels text, interval, lines per family),
        # and the whole per-check text with its key (see _checks_text).
        self._lines: dict[str, tuple[CheckSummary | None, str, float | None, list[str]]] = {}
        self._text: tuple[list[tuple[str, str, float | None]], list[CheckSummary | None], bytes] | None = None

    def collect(self) -> Iterator[Metric]:
        """For a prometheus_client registry."""
        for fam in self.families():
            yield fam.metric

    def render(self) -> bytes:
        """The text exposition format (what `prometheus_client.generate_latest` would write, faster: the
        lines of a check are formatted again only when its summary changed)."""
        out: list[str] = []
        parts: list[bytes] = []
        for part in self._parts(text=True):
            if isinstance(part, bytes):
                parts += ["".join(out).encode(), part]
                out = []
            else:
                part.text(out)
        parts.append("".join(out).encode())
        return b"".join(parts)

    def families(self) -> Iterator[_Family]:
        for part in self._parts(text=False):
            assert isinstance(part, _Family)
            yield part

    def _parts(self, text: bool) -> Iterator[_Family | bytes]:
        """The families in their order; with `text`, the per-check families as one block of text."""
        build = _Family("reversib_build_info", "reversib's version and Python, always 1", "gauge")
        build.add({"version": __version__, "python": platform.python_version()}, 1)
        yield build
        if self.status is not None:
            s = self.status()
            for name, doc, value in (
                ("reversib_scheduler_up", "1 while the scheduler thread is running", float(s.scheduler_up)),
                ("reversib_config_last_reload_successful", "1 when the last configuration (re)load succeeded",
                 float(s.config_reload_successful)),
                ("reversib_config_last_reload_success_timestamp_seconds",
                 "when the configuration was last loaded successfully", s.config_reload_success_at),
            ):
                fam = _Family(name, doc, "gauge")
                fam.add({}, value)
                yield fam
            if s.shard_events is not None:  # several replicas on one history (docs/scale.md)
                events = _Family("reversib_daemon_shard_events", "shards of runs this daemon completed, took over "
                                 "from a replica whose lease passed, merged, lost to another replica, or released "
                                 "at shutdown", "counter")
                for event, count in sorted(s.shard_events.items()):
                    events.add({"event": event}, count)
                running = _Family("reversib_daemon_shards_running", "shards this daemon is verifying now", "gauge")
                running.add({}, s.shards_running)
                yield from (events, running)
        checks = list(self.checks())
        configured = _Family("reversib_checks_configured", "number of configured checks", "gauge")
        configured.add({}, len(checks))
        yield configured
        up = _Family("reversib_history_up", "1 when the history database answered this scrape", "gauge")
        try:
            summaries = self.history.check_summaries([c.check.check_id for c in checks])
        except HistoryError as exc:
            log.error("metrics: cannot read the history: %s", exc)
            up.add({}, 0)
            yield up
            return
        up.add({}, 1)
        yield up
        if text:
            yield self._checks_text(checks, summaries)
        else:
            yield from self._checks(checks, summaries)
        yield from self._indicators(checks)

    def _indicators(self, checks: Sequence[ScheduledCheck]) -> Iterator[_Family]:
        """The evidence indicators over the last 30 days (docs/evidence.md), for the checks with an
        `expect.deadline` only: one query over their recent runs, none when no check has a deadline."""
        if not any(c.check.expect.deadline is not None for c in checks):
            return
        from datetime import datetime, timezone

        from reversib.evidence.indicators import METRICS_DAYS, recent

        try:
            found = recent(self.history, [c.check for c in checks], datetime.fromtimestamp(self.clock(), timezone.utc))
        except HistoryError as exc:
            log.error("metrics: cannot read the indicators: %s", exc)
            return
        ratio = _Family("reversib_check_on_time_ratio", f"share of the delivery windows of the last {METRICS_DAYS} "
                        "days whose export passed by expect.deadline (unmeasured windows left out)", "gauge")
        unmeasured = _Family("reversib_check_unmeasured_windows", f"delivery windows of the last {METRICS_DAYS} days "
                             "that reversib could not measure (down, or could not verify)", "gauge")
        cnv = _Family("reversib_check_could_not_verify_ratio",
                      f"share of the runs of the last {METRICS_DAYS} days with outcome error", "gauge")
        for c in checks:
            ind = found.get(c.check.check_id)
            if ind is None:
                continue
            if ind.on_time_ratio is not None:
                ratio.add(c.labels, ind.on_time_ratio, c.label_text)
            unmeasured.add(c.labels, ind.count("unmeasured"), c.label_text)
            if ind.could_not_verify_ratio is not None:
                cnv.add(c.labels, ind.could_not_verify_ratio, c.label_text)
        yield from (ratio, unmeasured, cnv)

    def _checks(self, checks: Sequence[ScheduledCheck], summaries: dict[str, CheckSummary]) -> Iterator[_Family]:
        fams = [_Family(name, doc, kind) for name, doc, kind in CHECK_FAMILIES]
        for c in checks:
            for i, labels, text, extra, value in _check_samples(c, summaries.get(c.check.check_id)):
                fams[i].add(labels, value, text, extra)
        yield from fams

    def _checks_text(self, checks: Sequence[ScheduledCheck], summaries: dict[str, CheckSummary]) -> bytes:
        """The per-check families in the text format.  Each check's lines are kept with the summary they were
        rendered from: `History.check_summaries` returns the same summary object while nothing of the check
        changed, so only the checks whose runs changed are formatted again, and the whole text is reused
        while no check changed (any change in the history is still read on every scrape)."""
        with self._lock:
            sig = [(c.check.check_id, c.label_text, c.interval) for c in checks]
            now = [summaries.get(c.check.check_id) for c in checks]
            cached = self._text
            if (cached is not None and cached[0] == sig and len(cached[1]) == len(now)
                    and all(map(operator.is_, cached[1], now))):
                return cached[2]
            old, lines = self._lines, {}
            for c, (check_id, text, interval), summary in zip(checks, sig, now, strict=True):
                got = old.get(check_id)
                if got is None or got[0] is not summary or got[1] != text or got[2] != interval:
                    per = [""] * len(CHECK_FAMILIES)
                    for i, _, text_, extra, value in _check_samples(c, summary):
                        per[i] += _line(_SAMPLE_NAMES[i], text_, extra, value)
                    got = (summary, text, interval, per)
                lines[check_id] = got
            out = []
            columns = zip(*[lines[check_id][3] for check_id, _, _ in sig], strict=True) if sig else [()] * len(_HEADERS)
            for header, family in zip(_HEADERS, columns, strict=True):  # one family after the other
                out.append(header)
                out.extend(family)
            body = "".join(out).encode()
            self._lines, self._text = lines, (sig, now, body)
            return body


# The per-check families, in their order in the exposition: (name, help, type).
CHECK_FAMILIES: list[tuple[str, str, str]] = [
    ("reversib_check_last_run_timestamp_seconds", "when the newest completed run of the check finished (0: never)",
     "gauge"),
    ("reversib_check_last_success_timestamp_seconds",
     "when the newest passed run of the check finished (0: never passed)", "gauge"),
    ("reversib_check_outcome", "1 for the outcome of the newest completed run, 0 for the others", "gauge"),
    ("reversib_check_running", "runs of the check in progress", "gauge"),
    ("reversib_check_findings", "findings of the newest completed run, per kind (kinds found only)", "gauge"),
    ("reversib_check_runs", "completed runs of the check, from the history", "counter"),
    ("reversib_check_failures", "completed runs with outcome failed", "counter"),
    ("reversib_check_errors", "completed runs with outcome error (could not verify, interrupted)", "counter"),
    ("reversib_check_skipped_slots", "schedule slots not run because the previous run was still going", "counter"),
    ("reversib_check_last_run_duration_seconds", "duration of the newest completed run", "gauge"),
    ("reversib_check_last_run_verified_bytes", "bytes verified by the newest completed run", "gauge"),
    ("reversib_check_last_run_verified_files", "files verified by the newest completed run", "gauge"),
    ("reversib_check_newest_export_timestamp_seconds",
     "modification time of the newest file of the export seen by the newest completed run", "gauge"),
    ("reversib_check_expected_interval_seconds", "the time between two scheduled runs of the check", "gauge"),
    ("reversib_check_last_run_downloaded_bytes", "bytes read from the source by the newest completed run (egress)",
     "gauge"),
    ("reversib_check_coverage_ratio", "share of the export's bytes whose content was verified within the coverage "
     "period, at the newest completed run", "gauge"),
    ("reversib_check_coverage_period_seconds", "the check's coverage.period", "gauge"),
    ("reversib_check_last_run_not_sampled_files", "entries of the newest completed run whose content was not "
     "verified in that run (rolling coverage)", "gauge"),
]
(_LAST_RUN, _LAST_SUCCESS, _OUTCOME, _RUNNING, _FINDINGS, _RUNS, _FAILURES, _ERRORS, _SKIPPED, _DURATION, _BYTES,
 _FILES, _NEWEST, _INTERVAL, _DOWNLOADED, _COVERAGE, _PERIOD, _NOT_SAMPLED) = range(len(CHECK_FAMILIES))
_SAMPLE_NAMES = [name + ("_total" if kind == "counter" else "") for name, _, kind in CHECK_FAMILIES]
_HEADERS = [_header(n, doc, kind) for n, (_, doc, kind) in zip(_SAMPLE_NAMES, CHECK_FAMILIES, strict=True)]

_Sample = tuple[int, dict[str, str], str, "tuple[str, str] | None", float]


def _check_samples(c: ScheduledCheck, s: CheckSummary | None) -> Iterator[_Sample]:
    """The samples of one check: (index in CHECK_FAMILIES, labels, labels as text, extra label, value)."""
    labels, text = c.labels, c.label_text
    s = s or CheckSummary(c.check.check_id)
    run = s.latest
    yield _LAST_RUN, labels, text, None, _ts(run.finished_at) if run is not None else 0.0
    yield _LAST_SUCCESS, labels, text, None, _ts(s.last_success_at)
    for outcome in OUTCOMES:
        yield _OUTCOME, labels, text, ("outcome", outcome), float(run is not None and run.outcome == outcome)
    yield _RUNNING, labels, text, None, s.running
    yield _RUNS, labels, text, None, s.runs_total
    yield _FAILURES, labels, text, None, s.outcomes.get(Outcome.FAILED.value, 0)
    yield _ERRORS, labels, text, None, s.outcomes.get(Outcome.ERROR.value, 0)
    yield _SKIPPED, labels, text, None, s.skipped
    if c.interval is not None:
        yield _INTERVAL, labels, text, None, c.interval
    if run is None:
        return
    for kind, n in sorted(run.counts.items()):
        yield _FINDINGS, labels, text, ("kind", kind), n
    yield _DURATION, labels, text, None, run.duration_seconds or 0.0
    yield _BYTES, labels, text, None, run.bytes_verified
    yield _FILES, labels, text, None, run.files_verified
    if run.newest_mtime is not None:
        yield _NEWEST, labels, text, None, _ts(run.newest_mtime)
    if run.bytes_downloaded is not None:
        yield _DOWNLOADED, labels, text, None, run.bytes_downloaded
    if run.coverage is not None:  # docs/coverage.md
        yield _COVERAGE, labels, text, None, float(run.coverage.get("ratio", 0.0))
        yield _PERIOD, labels, text, None, float(run.coverage.get("period_seconds", 0.0))
        yield _NOT_SAMPLED, labels, text, None, int(run.coverage.get("not_sampled_files", 0))


def make_registry(collector: HistoryCollector) -> CollectorRegistry:
    """A registry of its own (never the global one) holding the history collector only."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
