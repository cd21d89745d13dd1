"""One run split into shards that several processes verify, meeting under one run id (docs/scale.md).

`reversib verify-now CHECK --shard K/N --run-id ID` runs shard K of N: the content verification of the
K-th of N runs of about equal weight cut from the manifest entries in path order (`Partition`: every
process computes the same cut from the same manifest).  Every shard lists the export and compares
it with the manifest (it must, to open its entries), so each records the same completeness findings;
the **merge** -- done once per run, by whoever completes the last shard -- unites the shards' findings
(identical findings once), adds up their counts and completes the run in the history: one run row,
one hash chain link, one outcome.

Work moves to where it can be done: a process that finished its own shard claims the shards still
pending, and those whose lease has passed (their process died); it waits, renewing nothing, while
others hold live leases, and returns the merged run once it is complete.  Each shard's entry states
are written when the shard completes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import sqlalchemy as sa

from reversib.config import CheckConfig
from reversib.history import History, HistoryError, RunNotRunning, RunRow, SlotTaken
from reversib.leases import DONE, MERGE, RUNNING, Leases
from reversib.model import Finding, FindingKind, Outcome, RunResult, RunState, Severity, Trigger, decide_outcome
from reversib.sources.base import CancelToken

log = logging.getLogger("reversib.shards")

ENV_INDEX = "JOB_COMPLETION_INDEX"  # set by Kubernetes in the pods of an Indexed Job
DEFAULT_LEASE = 60.0
_SHARD_RE = re.compile(r"^\s*(\d+)?\s*/\s*(\d+)\s*$")
_SUMS = ("files_verified", "bytes_verified", "bytes_downloaded")
_SAME = ("files_listed", "bytes_listed", "manifest_entries", "manifest_digest", "generation", "manifest",
         "coverage")


class ShardError(ValueError):
    """A bad --shard or --run-id (a usage error)."""


class RunFinished(ShardError):
    """--run-id names a run that is already finished (or interrupted): nothing to verify under it."""


ENTRY_WEIGHT = 64 * 1024  # the fixed cost of one entry (open, request, history row), counted as bytes


class Partition:
    """The manifest paths of shard `k` of `n` (a `VerifyOptions.sample`), balanced by bytes.

    The entries, sorted by path (code points: the same order whatever the manifest's), are cut into `n`
    contiguous runs of about equal weight -- size plus `ENTRY_WEIGHT` per entry; an entry of unknown
    size weighs the mean known size -- an entry going to the shard its weight's midpoint falls in.  Each
    shard is then within one entry's weight of the mean.  Deterministic: every process that reads the
    same manifest computes the same cut (a run whose shards read different manifests is merged as an
    error, `_merge`).  Holds only this shard's paths."""

    exclusive = True  # every entry is one shard's: its size-only record too (verify.Verifier._plan)

    def __init__(self, k: int, n: int, entries: Iterable[Any]) -> None:
        self.k, self.n = k, n
        ordered = sorted(entries, key=attrgetter("path"))  # references only: no copy of the manifest
        count = known = known_bytes = 0
        for _, size in _by_path(ordered):
            count += 1
            if size is not None:
                known, known_bytes = known + 1, known_bytes + size
        mean = known_bytes // known if known else 0
        total = known_bytes + mean * (count - known) + ENTRY_WEIGHT * count
        paths: set[str] = set()
        done = self.weight = 0
        for path, size in _by_path(ordered):
            w = (mean if size is None else size) + ENTRY_WEIGHT
            if min(n - 1, (2 * done + w) * n // (2 * total)) == k:
                paths.add(path)
                self.weight += w
            done += w
        self.paths = frozenset(paths)

    def __contains__(self, path: object) -> bool:
        return path in self.paths

    def __len__(self) -> int:
        return len(self.paths)


def _by_path(ordered: list[Any]) -> Iterator[tuple[str, int | None]]:
    """(path, size) of entries sorted by path; a duplicated path once (the manifest reports it), with its
    largest known size -- the same whatever the order of the duplicates."""
    path: str | None = None
    size: int | None = None
    for e in ordered:
        if e.path == path:
            if e.size is not None and (size is None or e.size > size):
                size = int(e.size)
            continue
        if path is not None:
            yield path, size
        path, size = e.path, None if e.size is None else int(e.size)
    if path is not None:
        yield path, size


def parse_shard(text: str, env: dict[str, str] | None = None) -> tuple[int, int]:
    """`K/N`, or `/N` (and `N`) with K from JOB_COMPLETION_INDEX: (K, N) with 0 <= K < N."""
    env = dict(os.environ) if env is None else env
    m = _SHARD_RE.match(text) or (re.match(r"^\s*(\d+)\s*$", text) and _SHARD_RE.match("/" + text.strip()))
    if not m:
        raise ShardError(f"--shard takes K/N (shard K of N, from 0), got {text!r}")
    n = int(m.group(2))
    if m.group(1) is not None:
        k = int(m.group(1))
    elif env.get(ENV_INDEX, "").strip().isdigit():
        k = int(env[ENV_INDEX])
    else:
        raise ShardError(f"--shard {text}: no K given and {ENV_INDEX} is not set")
    if not 1 <= n <= 10000 or not 0 <= k < n:
        raise ShardError(f"--shard {k}/{n}: K must be from 0 to N-1, N from 1 to 10000")
    return k, n


def run_id_for(text: str) -> str:
    """The run id the shards meet under: `text` itself when it is 32 hex digits, else derived from it
    (a Job's name or uid): sha256, first 32 hex digits."""
    t = text.strip()
    if re.fullmatch(r"[0-9a-f]{32}", t):
        return t
    if not t:
        raise ShardError("--run-id is empty")
    return hashlib.sha256(t.encode("utf-8")).hexdigest()[:32]


def _finding(d: dict[str, Any]) -> Finding:
    return Finding(FindingKind(d["kind"]), d["path"], d["expected"], d["actual"], Severity(d["severity"]),
                   d.get("detail"))


def result_from_row(row: RunRow, findings: list[Finding]) -> RunResult:
    """A completed run read back from the history (what a shard process that did not merge prints)."""
    return RunResult(
        check_id=row.check_id, check_name=row.check_name, run_id=row.id, outcome=Outcome(row.outcome or "error"),
        state=RunState(row.state), findings=findings, tiers=dict(row.tiers), bytes_verified=row.bytes_verified,
        files_verified=row.files_verified, files_listed=row.files_listed, bytes_listed=row.bytes_listed,
        manifest_entries=row.manifest_entries, duration_seconds=row.duration_seconds or 0.0,
        started_at=row.started_at.timestamp(), finished_at=row.finished_at.timestamp() if row.finished_at else 0.0,
        error=row.error, generation=row.generation, source=row.source, manifest=row.manifest,
        manifest_digest=row.manifest_digest, newest_mtime=row.newest_mtime.timestamp() if row.newest_mtime else None,
        labels=dict(row.labels), bytes_downloaded=row.bytes_downloaded, coverage=row.coverage)


class _Renewer:
    """Renews a lease every third of its length; cancels the work when the lease was lost."""

    def __init__(self, leases: Leases, run_id: str, shard: int, cancel: CancelToken) -> None:
        self.leases, self.run_id, self.shard, self.cancel = leases, run_id, shard, cancel
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"reversib-lease-{shard}", daemon=True)

    def __enter__(self) -> _Renewer:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.leases.ttl / 3):
            try:
                if not self.leases.renew(self.run_id, self.shard):
                    self.cancel.cancel(f"the lease of shard {self.shard} was taken over")
                    return
            except HistoryError as exc:
                log.error("cannot renew the lease of shard %s of run %s: %s", self.shard, self.run_id, exc)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Activity:
    """What one process did with shards (the daemon's `reversib_daemon_shard_events_total`)."""

    events: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("completed", "taken_over", "merged", "lost", "released"), 0))
    running: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, event: str, running: int = 0) -> None:
        with self._lock:
            if event:
                self.events[event] = self.events.get(event, 0) + 1
            self.running += running

    def snapshot(self) -> tuple[dict[str, int], int]:
        with self._lock:
            return dict(self.events), self.running


def run_sharded(check: CheckConfig, history: History, *, shard: tuple[int, int], run_id: str,
                trigger: Trigger = Trigger.CLI, clock: Callable[[], float] = time.time,
                cancel: CancelToken | None = None, lease: float = DEFAULT_LEASE,
                poll: float | None = None, notice: Callable[[str], None] | None = None) -> RunResult:
    """Run shard `shard` of `run_id` (creating the run if this is its first shard), then any shard left
    pending or abandoned, and return the merged run once it is complete (merging it if we are last).

    A run already finished is refused (`RunFinished`: nothing would be verified), except for a late process
    of a run of several shards with the same N (an Indexed Job's pod started after the others finished its
    shard): its stored verdict is returned and `notice` told that it is a replay."""
    if shard[1] > 1 and (check.coverage is not None or check.challenge is not None):
        raise ShardError(f"check {check.check_id}: coverage and challenge cannot be combined with --shard yet "
                         "(docs/scale.md)")
    if shard[1] > 1 and check.archive is not None:  # one compressed, maybe encrypted stream: read whole or not
        raise ShardError(f"check {check.check_id}: an archive is one stream, read whole by one process: it "
                         "cannot be split into shards (docs/scale.md)")
    cancel = cancel or CancelToken()
    k, n = shard
    poll = poll if poll is not None else min(0.25, lease / 4)  # a waiting process sees the merge soon (one query)
    leases = Leases(history, lease)
    if history.get_run(run_id) is None:
        try:
            history.start_run(check_id=check.check_id, check_name=check.name, trigger=trigger, labels=check.labels,
                              source=check.source.url, manifest=check.manifest.path or check.manifest.location,
                              run_id=run_id)
        except HistoryError:
            raise
        except Exception:  # another shard created it at the same moment
            if history.get_run(run_id) is None:
                raise
    row = history.get_run(run_id)
    assert row is not None
    if row.check_id != check.check_id:
        raise ShardError(f"run {run_id} belongs to check {row.check_id}, not {check.check_id}")
    if row.state != RunState.RUNNING.value:  # never its old verdict as if this process had verified anything
        when = row.finished_at.strftime("%Y-%m-%dT%H:%M:%SZ") if row.finished_at else "an unknown time"
        said = (f"run {run_id} was already {row.state} at {when} with outcome {row.outcome or 'none'}: nothing was "
                "verified now")
        if n == 1 or row_shards(leases, run_id) != n:
            raise RunFinished(f"{said}.  Give every run its own --run-id (a Kubernetes Job's metadata.uid, not its "
                              "name: docs/scale.md)")
        # A late process of a run of N > 1 shards (a pod of an Indexed Job started after the others took its
        # shard over and merged the run): the run's stored verdict, said to be a replay.
        log.warning("%s; its stored verdict is shown (a replay: --run-id of a finished run)", said,
                    extra={"event": "replay", "check": check.check_id, "run_id": run_id})
        if notice is not None:
            notice(f"{said} by this process: the stored verdict of the finished run follows (a replay). If this is "
                   "a new run, give it its own --run-id (a Kubernetes Job's metadata.uid, not its name)")
        return result_from_row(row, history.findings(run_id))
    leases.ensure(run_id, n)
    result = _work(check, history, leases, run_id, k, n, clock, cancel, poll, wait=True)
    assert result is not None
    return result


def slot_run_id(check_id: str, slot: float) -> str:
    """The run id of a check's schedule slot: the same in every replica (sha256 of check id and slot)."""
    return run_id_for(f"{check_id}@{slot:.3f}")


def run_replicated(check: CheckConfig, history: History, *, scheduled_for: float | None = None,
                   run_id: str | None = None, trigger: Trigger = Trigger.SCHEDULE,
                   clock: Callable[[], float] = time.time, cancel: CancelToken | None = None,
                   lease: float = DEFAULT_LEASE, activity: Activity | None = None,
                   rng: random.Random | None = None) -> RunResult | None:
    """A daemon's run when several replicas share the history (docs/scale.md).

    The run of a schedule slot has the same id in every replica: the first replica to get there records
    it (`History.start_run`: one row per check and slot) together with its `check.shards` shard rows;
    every replica that reaches the slot takes whatever shard is still pending, and whoever completes the
    last shard merges the run.  `run_id` joins an existing run (the poller's takeover of abandoned shards).
    Never waits for other replicas: returns the merged run when this process merged it, else None."""
    cancel = cancel or CancelToken()
    n = check.shards
    leases = Leases(history, lease)
    if run_id is None:
        run_id = slot_run_id(check.check_id, scheduled_for) if scheduled_for is not None else uuid.uuid4().hex
        leases.ensure(run_id, n)  # rows first: a run row never exists without its shards
        try:
            history.start_run(check_id=check.check_id, check_name=check.name, trigger=trigger,
                              scheduled_for=scheduled_for, labels=check.labels, source=check.source.url,
                              manifest=check.manifest.path or check.manifest.location, run_id=run_id)
        except SlotTaken:
            pass  # another replica recorded it first: help with it
    start = (rng or random.Random()).randrange(n)
    return _work(check, history, leases, run_id, start, n, clock, cancel, 0.0, wait=False, activity=activity)


def _work(check: CheckConfig, history: History, leases: Leases, run_id: str, k: int, n: int,
          clock: Callable[[], float], cancel: CancelToken, poll: float, *, wait: bool,
          activity: Activity | None = None) -> RunResult | None:
    """Claim and verify shards of `run_id` (`k` first), merge when every shard is done.  `wait`: until the
    run is complete (returns it); else returns None as soon as nothing is left to claim."""
    order = [(k + i) % n for i in range(n)]
    while True:
        cancel.check()
        current = history.get_run(run_id)
        if current is None or current.check_id != check.check_id:
            if wait:
                raise ShardError(f"run {run_id} is not a run of check {check.check_id}")
            return None
        if current.state != RunState.RUNNING.value:
            return result_from_row(current, history.findings(run_id)) if wait else None
        rows = leases.rows(run_id)
        if len(rows) != n + 1:
            raise HistoryError(f"run {run_id} has {len(rows) - 1} shards, this check {n} (shards: changed?)")
        progressed = False
        for s in order:
            if rows[s]["state"] != DONE and leases.claim(run_id, s):
                if activity is not None and rows[s]["state"] == RUNNING:
                    activity.add("taken_over")
                _do_shard(check, history, leases, run_id, (s, n), clock, cancel, activity)
                progressed = True
                break
        if progressed:
            continue
        if leases.claim(run_id, MERGE):
            if activity is not None and rows[MERGE]["state"] == RUNNING:
                activity.add("taken_over")
            with _Renewer(leases, run_id, MERGE, CancelToken()):  # a long merge keeps its lease, as shards do
                merged = _merge(check, history, leases, run_id, clock, cancel)
            if activity is not None:
                activity.add("merged")
            return merged
        if not wait:
            return None
        time.sleep(poll)


def _do_shard(check: CheckConfig, history: History, leases: Leases, run_id: str, shard: tuple[int, int],
              clock: Callable[[], float], cancel: CancelToken, activity: Activity | None = None) -> None:
    from reversib.runner import attempt, entry_records

    k, n = shard
    work = CancelToken()
    stop = threading.Event()

    def forward() -> None:  # a cancellation of the whole process stops the shard too
        while not stop.wait(0.2):
            if cancel.cancelled:
                work.cancel(cancel.reason)
                return

    watcher = threading.Thread(target=forward, daemon=True)
    watcher.start()
    started = clock()
    result = RunResult(check_id=check.check_id, check_name=check.name, run_id=run_id, outcome=Outcome.ERROR,
                       started_at=started)
    note = activity.add if activity is not None else (lambda event, running=0: None)
    note("", 1)
    try:
        with _Renewer(leases, run_id, k, work):
            # One shard: the whole run (coverage, challenge and dumps as in an unsharded run).
            # The run's seed, drawn by the process that created its rows: every shard draws the same, and no
            # one can derive it from the run id (a scheduled run's id is sha256 of its check id and slot).
            seed = leases.seed(run_id) or secrets.token_hex(16)
            report, deferred, interrupt = attempt(check, result, clock, work, None, history,
                                                  rng=random.Random(seed), shard=shard if n > 1 else None)
    finally:
        note("", -1)
        stop.set()
        watcher.join()
    if result.state is RunState.INTERRUPTED:
        log.warning("shard %s/%s of run %s interrupted: %s", k, n, run_id, result.error)
        if cancel.cancelled:
            leases.release(run_id, k)
            note("released")
            cancel.check()
        note("lost")
        return  # taken over: the new owner's work counts
    data = {"findings": [f.to_dict() for f in result.findings], "tiers": result.tiers, "error": result.error,
            "deferred": deferred, "newest_mtime": result.newest_mtime, "duration_seconds": clock() - started,
            **{name: getattr(result, name) for name in (*_SUMS, *_SAME)}}
    if not leases.complete(run_id, k, data, check.check_id, entry_records(report)):
        log.warning("shard %s/%s of run %s was taken over while it ran: its result is discarded", k, n, run_id)
        note("lost")
    else:
        note("completed")
    if isinstance(interrupt, KeyboardInterrupt):
        raise interrupt


def _merge(check: CheckConfig, history: History, leases: Leases, run_id: str, clock: Callable[[], float],
           cancel: CancelToken) -> RunResult:
    rows = leases.rows(run_id)
    parts = [rows[s]["result"] or {} for s in sorted(rows) if s != MERGE]
    row = history.get_run(run_id)
    assert row is not None
    result = RunResult(check_id=check.check_id, check_name=check.name, run_id=run_id, outcome=Outcome.ERROR,
                       started_at=row.started_at.timestamp(), source=check.source.url, labels=dict(check.labels))
    findings = {_finding(d) for p in parts for d in p.get("findings", [])}
    result.findings = sorted(findings, key=Finding.sort_key)
    for p in parts:
        for tier, count in (p.get("tiers") or {}).items():
            result.tiers[tier] = result.tiers.get(tier, 0) + int(count)
    for name in _SUMS:
        values = [p.get(name) for p in parts if p.get(name) is not None]
        setattr(result, name, sum(values) if values else getattr(result, name))
    for name in _SAME:
        values = [p.get(name) for p in parts if p.get(name) is not None]
        if values:
            setattr(result, name, values[0])
    stamps = [p["newest_mtime"] for p in parts if p.get("newest_mtime") is not None]
    result.newest_mtime = max(stamps) if stamps else None
    errors = sorted({p["error"] for p in parts if p.get("error")})
    manifests = {p["manifest_digest"] for p in parts if p.get("manifest_digest")}
    if len(manifests) > 1:  # the partition is cut from the manifest: entries may be verified twice or never
        errors.append(f"the manifest changed while the run's shards ran ({len(manifests)} different manifests "
                      "read): the shards do not cover it exactly once")
    result.error = "; ".join(errors) if errors else None
    result.outcome = decide_outcome(result.findings, error=result.error,
                                    deferred=any(p.get("deferred") for p in parts))
    result.finished_at = clock()
    result.duration_seconds = max(0.0, result.finished_at - result.started_at)
    try:
        history.finish_run(result)
    except (RunNotRunning, sa.exc.IntegrityError) as exc:
        # Merged by another process meanwhile (it took our merge lease over, or we took over its lease after
        # it had finished): both finished the run at once, and the database kept one (uq_chain_links_run).
        stored = history.get_run(run_id)
        assert stored is not None
        if stored.state == RunState.RUNNING.value:
            raise
        log.warning("run %s was merged by another process meanwhile (%s): its merge is kept, ours discarded",
                    run_id, type(exc).__name__, extra={"event": "run", "check": check.check_id, "run_id": run_id})
        return result_from_row(stored, history.findings(run_id))
    log.info("sharded run merged", extra={"event": "run", "check": check.check_id, "run_id": run_id,
                                          "outcome": result.outcome.value, "shards": len(parts)})
    return result


def row_shards(leases: Leases, run_id: str) -> int:
    """The number of shards of a run (from its rows; 0 when it has none)."""
    rows = leases.rows(run_id)
    return max((int(r["shards"]) for r in rows.values()), default=0)


class Replicas:
    """A daemon's side of the replicas sharing one history (docs/scale.md): its runs through the shard
    leases, the look-up of work other replicas abandoned, and the overlap skips it defers."""

    def __init__(self, history: History, lease: float, clock: Callable[[], float] = time.time) -> None:
        self.history, self.lease, self.clock = history, lease, clock
        self.every = min(15.0, max(0.5, lease / 4))  # the poller's period
        self.activity = Activity()
        self.stopped = threading.Event()
        self._late: list[tuple[float, str, float]] = []
        self._lock = threading.Lock()

    def run(self, check: CheckConfig, *, trigger: Trigger, scheduled_for: float | None, run_id: str | None,
            cancel: CancelToken) -> RunResult | None:
        return run_replicated(check, self.history, scheduled_for=scheduled_for, run_id=run_id, trigger=trigger,
                              clock=self.clock, cancel=cancel, lease=self.lease, activity=self.activity)

    def open_work(self) -> list[tuple[str, str]]:
        """(check id, run id) of the running runs with a shard or a merge to take now; [] when the
        history does not answer (logged: the next poll retries)."""
        try:
            return [(check_id, run_id) for run_id, check_id, _ in Leases(self.history, self.lease).open_work()]
        except HistoryError as exc:
            log.error("replicas: cannot look for abandoned shards: %s", exc)
            return []

    def abandon(self, check_id: str, run_id: str) -> bool:
        """A running run of a check that is no longer in this replica's configuration (docs/scale.md): a
        replica that still has the check finishes it; once none of its shards changed for one lease (no
        process works on it), mark it interrupted (outcome `error`, the shards not verified named) and
        close its rows.  Runs started from the command line (`verify-now --shard`) are left to their
        processes.  True when this call ended the run."""
        leases = Leases(self.history, self.lease)
        try:
            row = self.history.get_run(run_id)
            if row is None or row.trigger == Trigger.CLI.value or row.state != RunState.RUNNING.value:
                return False
            taken = leases.abandon(run_id)
            if taken is None:
                return False
            shards = [s for s in taken if s != MERGE]
            reason = (f"check {check_id} was removed from the configuration before this run was finished: "
                      + (f"shard(s) {', '.join(map(str, shards))} of {row_shards(leases, run_id)} not verified"
                         if shards else "its shards were not merged"))
            ended = self.history.mark_interrupted(run_id, reason)  # closes the rows taken, same transaction
            if not ended:  # ended meanwhile by another process: give back nothing half-held
                for s in taken:
                    leases.complete(run_id, s, {"abandoned": reason})
        except HistoryError as exc:
            log.error("replicas: cannot abandon run %s of removed check %s: %s", run_id, check_id, exc)
            return False
        if ended:
            log.warning("run %s interrupted: %s", run_id, reason,
                        extra={"event": "abandon", "check": check_id, "run_id": run_id})
        return ended

    def defer_skip(self, check_id: str, slot: float) -> None:
        """A slot this replica cannot run (its previous run of the check is still going): another replica
        may run it.  Recorded skipped one lease later only if no replica did."""
        with self._lock:
            self._late.append((self.clock() + self.lease, check_id, slot))

    def due_skips(self) -> list[tuple[str, float]]:
        """The deferred slots whose time has come and that no replica ran: to record as skipped."""
        now = self.clock()
        with self._lock:
            due = [x for x in self._late if x[0] <= now]
            self._late = [x for x in self._late if x[0] > now]
        leases = Leases(self.history, self.lease)
        out = []
        for _, check_id, slot in due:
            try:
                if not leases.slot_has_run(check_id, slot):
                    out.append((check_id, slot))
            except HistoryError as exc:
                log.error("replicas: cannot look up slot %s of check %s: %s", slot, check_id, exc)
        return out
