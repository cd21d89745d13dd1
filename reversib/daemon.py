"""`reversib run`: run every check on its schedule, serve metrics, health and a small API.

How a slot becomes a run (see docs/daemon.md):

* the slots of a check come from its schedule alone (`reversib.scheduler.Schedule`); the timer is an
  APScheduler 3.x `BackgroundScheduler` (`reversib.timer`) with one job per check whose trigger asks
  that schedule, and whose executor hands each due slot to `Daemon._due`, which queues the run (or
  records the slot skipped) and returns at once.  The timer is not the record of what ran: the
  history is.  A run claims its slot through the unique
  (check_id, scheduled_for) row written by `History.start_run`; a slot another process already
  claimed raises `SlotTaken` and is left to it;
* one run at a time per check: a slot that falls due while the previous run of the check is queued
  or running is recorded in `skipped_slots` (reason `overlap`), never doubled, never silently lost;
* at start, the most recent slot of each check that fell due while no daemon ran it (nothing
  recorded for it or after it in the history) is caught up, within `daemon.catch_up_window`;
* at most `daemon.max_concurrent_checks` runs at once; due slots wait in order for a place;
* SIGHUP reloads the configuration after validating it (an invalid one is logged and the old one
  kept); SIGTERM/SIGINT stop the timer, cancel running runs through their `CancelToken` (recorded
  `interrupted`) and exit within `daemon.shutdown_timeout`;
* with SQLite, an exclusive lock on `<database>.lock` refuses a second daemon on the same file;
* with PostgreSQL, several daemons (replicas) may share the history: every run goes through the shard
  leases of `reversib.shards.run_replicated` (a check's `shards: N` splits it; a replica that dies
  leaves its shards to the others once `daemon.lease` has passed; a poller takes them over).  See
  docs/scale.md.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import sqlalchemy as sa

from reversib.config import CheckConfig, ConfigError, Settings, load_settings
from reversib.history import History, HistoryError, SlotTaken, iso, to_datetime
from reversib.metrics import DaemonStatus, HistoryCollector, ScheduledCheck
from reversib.model import RunResult, Trigger
from reversib.runner import run_check
from reversib.sources.base import Cancelled, CancelToken
from reversib.timer import add_slot_job, make_timer

log = logging.getLogger("reversib.daemon")

Runner = Callable[..., RunResult]


class DaemonError(Exception):
    """The daemon cannot start (history in use by another daemon, port taken...)."""


# ------------------------------------------------------------------------------------ SQLite lock


def sqlite_lock_path(url: str) -> Path | None:
    """`<database>.lock` for a SQLite file history, None for PostgreSQL or an in-memory database."""
    if "://" not in url:
        return Path(url + ".lock").absolute()
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    db = parsed.database
    if not db or db == ":memory:" or db.startswith("file:") or parsed.query.get("mode") == "memory":
        return None
    return Path(db + ".lock").absolute()


class HistoryLock:
    """An exclusive `fcntl` lock held for the daemon's lifetime (released by the kernel if it dies)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DaemonError(
                f"another reversib daemon (pid {holder}) is already using the history {self.path.with_suffix('')}: "
                f"one daemon per SQLite history (lock {self.path}); stop it first, or use PostgreSQL to run "
                "several") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# ---------------------------------------------------------------------------------------- state


@dataclass
class _Check:
    """A check as the daemon tracks it.  `busy` is True while a run of it is queued or running."""

    sc: ScheduledCheck
    busy: bool = False
    cancel: CancelToken | None = None

    @property
    def check(self) -> CheckConfig:
        return self.sc.check


@dataclass
class _Job:
    state: _Check
    check: CheckConfig
    slot: float | None
    trigger: Trigger
    queued_at: float
    run_id: str | None = None  # join this existing run (a replica's takeover of abandoned shards)


@dataclass
class RunRequest:
    """The answer to a verify-now request made through the API."""

    accepted: bool
    reason: str = ""


@dataclass
class Daemon:
    """The scheduler, the workers and the state the HTTP server shows.  Pass the clock and the runner in."""

    settings: Settings
    history: History
    clock: Callable[[], float] = time.time
    runner: Runner = run_check
    load: Callable[[Path | None], Settings] = load_settings
    lag_samples: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=100_000))
    replicas: bool | None = None  # runs through shard leases (None: when the history is PostgreSQL)

    def __post_init__(self) -> None:
        from reversib.shards import Replicas

        if self.replicas is None:
            self.replicas = self.history.engine.dialect.name == "postgresql"
        self.replica = Replicas(self.history, self.settings.daemon.daemon.lease, self.clock)
        self._poller: threading.Thread | None = None
        # Lock order: the timer holds its job-store lock while it calls `_due`, which takes `_cond`;
        # so no APScheduler method is ever called under `_cond` (`_jobs_lock` serialises job changes).
        self._cond = threading.Condition()
        self._checks: dict[str, _Check] = {}
        self._pending: collections.deque[_Job] = collections.deque()
        self._running = 0
        self._threads: set[threading.Thread] = set()
        self._stopping = False
        self.timer = make_timer()  # APScheduler BackgroundScheduler: wakes the daemon at each slot
        self._jobs_lock = threading.Lock()
        self._jobs: dict[str, tuple[Any, ...]] = {}  # check id -> schedule key of its timer job
        self._skips: queue.SimpleQueue[tuple[str, float] | None] = queue.SimpleQueue()
        self._helper: threading.Thread | None = None
        self.reload_ok = True
        self.reload_ok_at = self.clock()
        self.api_token = self.settings.daemon.daemon.api_token()
        self._install(self.settings)

    # ------------------------------------------------------------------------------- config

    @property
    def max_concurrent(self) -> int:
        return self.settings.daemon.daemon.max_concurrent_checks

    def scheduled_checks(self) -> list[ScheduledCheck]:
        with self._cond:
            return [c.sc for c in self._checks.values()]

    def _install(self, settings: Settings) -> None:
        """Take `settings` as the configuration: keep the state of checks that stay, schedule all."""
        now = self.clock()
        built = [ScheduledCheck.of(c, now) for c in settings.checks]
        with self._cond:
            old = self._checks
            self._checks = {}
            for sc in built:
                state = old.get(sc.check.check_id)
                if state is None:
                    state = _Check(sc)
                state.sc = sc
                self._checks[sc.check.check_id] = state
            self.settings = settings
            self._pump()
            self._cond.notify_all()
        self._sync_timer(now)

    def _sync_timer(self, now: float, *, first: bool = False) -> None:
        """Make the timer's jobs match the checks: one job per scheduled check, first firing at the first
        slot after `now`.  A job whose schedule did not change is left alone (a slot it is about to fire is
        not lost to a reload); a removed check's job is removed.  Before `start` (and after `stop`) the
        timer is not running and nothing is done: `start` adds every job."""
        with self._cond:
            wanted = {cid: st.sc.schedule for cid, st in self._checks.items() if st.sc.schedule is not None}
            stopping = self._stopping
        with self._jobs_lock:
            if stopping or not (first or self.timer.running):
                return
            for check_id in [cid for cid in self._jobs if cid not in wanted]:
                del self._jobs[check_id]
                if self.timer.get_job(check_id) is not None:
                    self.timer.remove_job(check_id)
            for check_id, schedule in wanted.items():
                if self._jobs.get(check_id) != schedule.key:
                    add_slot_job(self.timer, check_id, schedule, self._due, now)
                    self._jobs[check_id] = schedule.key

    def reload(self) -> bool:
        """Reload the configuration file; an invalid one is logged and the old one kept."""
        path = self.settings.path
        try:
            new = self.load(path)
            token = new.daemon.daemon.api_token()
            if new.history_url() != self.settings.history_url():
                log.warning("reload: history changes take effect at the next start; still using %s",
                            self.history.describe())
            if new.daemon.daemon.listen != self.settings.daemon.daemon.listen:
                log.warning("reload: daemon.listen changes take effect at the next start")
        except ConfigError as exc:
            self.reload_ok = False
            log.error("reload: configuration rejected, keeping the previous one: %s", "; ".join(exc.errors),
                      extra={"event": "reload", "ok": False, "errors": exc.errors})
            return False
        self.api_token = token
        self._install(new)
        self.reload_ok, self.reload_ok_at = True, self.clock()
        log.info("reload: configuration loaded, %d checks", len(new.checks),
                 extra={"event": "reload", "ok": True, "checks": len(new.checks)})
        return True

    # ------------------------------------------------------------------------------ running

    def start(self, catch_up: bool | None = None) -> None:
        """Catch up the slots missed up to now, then start the timer from the first slot after now (the
        same instant: no slot falls between the two)."""
        cfg = self.settings.daemon.daemon
        now = self.clock()
        if cfg.catch_up if catch_up is None else catch_up:
            self.catch_up(cfg.catch_up_window, now)
        self._sync_timer(now, first=True)
        self.timer.start()
        self._helper = threading.Thread(target=self._helper_loop, name="reversib-timer-helper", daemon=True)
        self._helper.start()
        if self.replicas or any(c.check.shards > 1 for c in self.scheduled_checks()) or self.replica.open_work():
            self._poller = threading.Thread(target=self._poll_loop, name="reversib-poller", daemon=True)
            self._poller.start()

    def _poll_loop(self) -> None:
        """Replicas: queue a takeover of the runs whose shards are pending or abandoned (docs/scale.md)."""
        while not self.replica.stopped.wait(self.replica.every):
            for check_id, run_id in self.replica.open_work():
                with self._cond:
                    state = self._checks.get(check_id)
                    stopping = self._stopping
                if state is None and not stopping:  # a check removed from the configuration: docs/scale.md
                    self.replica.abandon(check_id, run_id)
                    continue
                with self._cond:
                    if state is None or state.busy or self._stopping:
                        continue
                    log.info("check %s: taking part in run %s (shards pending or abandoned)", check_id, run_id,
                             extra={"event": "takeover", "check": check_id, "run_id": run_id})
                    self._enqueue(state, None, Trigger.SCHEDULE, self.clock(), run_id=run_id)
            for check_id, slot in self.replica.due_skips():
                self._skip(check_id, slot, defer=False)

    def catch_up(self, window: float, now: float | None = None) -> list[tuple[str, float]]:
        """Queue the most recent slot of each check that fell due within `window` seconds before `now`
        and of which the history holds no record (nor of any later slot).  Returns the queued (check, slot)."""
        now = self.clock() if now is None else now
        queued = []
        for state in list(self._checks.values()):
            schedule = state.sc.schedule
            if schedule is None:
                continue
            slot = schedule.last_at_or_before(now, horizon=window)
            if slot is None:
                continue
            recorded = self.history.last_slot(state.check.check_id)
            if recorded is not None and recorded >= to_datetime(slot):  # as stored: whole microseconds
                continue
            with self._cond:
                if state.busy:
                    continue
                log.info("catching up the slot %s of check %s, missed while no daemon ran",
                         iso(to_datetime(slot)), state.check.check_id,
                         extra={"event": "catch_up", "check": state.check.check_id, "slot": iso(to_datetime(slot))})
                self._enqueue(state, slot, Trigger.SCHEDULE, now)
                queued.append((state.check.check_id, slot))
        return queued

    def request_run(self, check_id: str) -> RunRequest:
        """verify-now through the daemon (the API): queued like a slot, refused while the check is busy."""
        with self._cond:
            state = self._checks.get(check_id)
            if state is None:
                return RunRequest(False, "unknown check")
            if self._stopping:
                return RunRequest(False, "shutting down")
            if state.busy:
                return RunRequest(False, "a run of this check is already queued or running")
            self._enqueue(state, None, Trigger.API, self.clock())
        return RunRequest(True)

    def busy(self, check_id: str) -> bool:
        with self._cond:
            state = self._checks.get(check_id)
            return state is not None and state.busy

    def next_slot(self, check_id: str) -> float | None:
        """When the check runs next: its timer job's next fire time (the schedule's next slot before the
        timer starts)."""
        with self._cond:
            state = self._checks.get(check_id)
            schedule = state.sc.schedule if state is not None else None
        if schedule is None:
            return None
        job = self.timer.get_job(check_id) if self.timer.running else None
        if job is not None and job.next_run_time is not None:
            return float(job.next_run_time.timestamp())
        return schedule.next_after(self.clock())

    @property
    def timer_alive(self) -> bool:
        thread = getattr(self.timer, "_thread", None)  # BackgroundScheduler's thread, None before start
        return bool(self.timer.running and thread is not None and thread.is_alive() and not self._stopping)

    def status(self) -> DaemonStatus:
        events, running = self.replica.activity.snapshot()
        return DaemonStatus(self.timer_alive, self.reload_ok, self.reload_ok_at,
                            shard_events=events if self.replicas else None, shards_running=running)

    def _enqueue(self, state: _Check, slot: float | None, trigger: Trigger, now: float,
                 run_id: str | None = None) -> None:
        """Under the lock."""
        state.busy = True
        self._pending.append(_Job(state, state.check, slot, trigger, now, run_id))
        self._pump()

    def _pump(self) -> None:
        """Under the lock: start queued jobs while there is room."""
        while self._pending and self._running < self.max_concurrent and not self._stopping:
            job = self._pending.popleft()
            self._running += 1
            job.state.cancel = CancelToken()
            t = threading.Thread(target=self._run, args=(job, job.state.cancel),
                                 name=f"reversib-run-{job.check.check_id}", daemon=True)
            self._threads.add(t)
            t.start()

    def _run(self, job: _Job, cancel: CancelToken) -> None:
        check_id = job.check.check_id
        try:
            if job.slot is not None:
                self.lag_samples.append(self.clock() - job.slot)
            if self.replicas or job.check.shards > 1:
                self.replica.run(job.check, trigger=job.trigger, scheduled_for=job.slot, run_id=job.run_id,
                                 cancel=cancel)
            else:
                self.runner(job.check, self.history, trigger=job.trigger, scheduled_for=job.slot, cancel=cancel)
        except Cancelled:  # a replica's shard given back at shutdown: another replica takes it at once
            log.info("check %s: shard released (%s)", check_id, cancel.reason, extra={"event": "released",
                                                                                  "check": check_id})
        except SlotTaken:
            log.info("slot %s of check %s was already claimed by another process", iso(to_datetime(job.slot or 0)),
                     check_id, extra={"event": "slot_taken", "check": check_id})
        except HistoryError as exc:
            log.error("check %s: history database: %s", check_id, exc, extra={"event": "run_error", "check": check_id})
        except Exception:
            log.exception("check %s: unexpected error in the daemon", check_id,
                          extra={"event": "run_error", "check": check_id})
        finally:
            with self._cond:
                job.state.busy = False
                job.state.cancel = None
                self._running -= 1
                self._threads.discard(threading.current_thread())
                self._pump()
                self._cond.notify_all()

    def _due(self, check_id: str, run_time: datetime) -> None:
        """The timer's job callback, called in APScheduler's thread with the slot the job fired for:
        queue the run, or hand the slot to the helper thread to be recorded skipped (the previous run
        is still queued or running).  Returns at once: no run and no database write on the timer."""
        slot = run_time.timestamp()
        with self._cond:
            state = self._checks.get(check_id)
            if self._stopping or state is None or state.sc.schedule is None:
                return  # stopping: the slot stays unclaimed, the next start catches it up
            if not state.busy:
                self._enqueue(state, slot, Trigger.SCHEDULE, self.clock())
                return
        self._skips.put((check_id, slot))

    def _helper_loop(self) -> None:
        """Record the skipped slots the timer hands over, and wake the timer at least every second:
        APScheduler sleeps on the monotonic clock until its next fire time, and a suspended host or a
        wall-clock jump must be noticed within a second (docs/daemon.md, "Clock jumps")."""
        nudged = time.monotonic()
        while True:
            try:
                item = self._skips.get(timeout=1.0)
            except queue.Empty:
                pass
            else:
                if item is None:
                    return
                self._skip(*item)
            if time.monotonic() - nudged >= 1.0 and not self._stopping:
                nudged = time.monotonic()
                self.timer.wakeup()

    def _skip(self, check_id: str, slot: float, defer: bool = True) -> None:
        if defer and self.replicas:  # another replica may run it: recorded skipped only if none did
            self.replica.defer_skip(check_id, slot)
            return
        try:
            recorded = self.history.record_skipped(check_id, slot, "overlap")
        except HistoryError as exc:
            log.error("check %s: cannot record the skipped slot %s: %s", check_id, iso(to_datetime(slot)), exc)
            return
        if recorded:
            log.warning("check %s: slot %s skipped: the previous run is still going", check_id,
                        iso(to_datetime(slot)), extra={"event": "skipped", "check": check_id, "reason": "overlap",
                                                       "slot": iso(to_datetime(slot))})

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the timer, drop queued jobs (their slots stay unclaimed), cancel running runs and wait
        up to `timeout` seconds for them to record `interrupted`.  True when every run finished."""
        timeout = self.settings.daemon.daemon.shutdown_timeout if timeout is None else timeout
        with self._cond:
            already = self._stopping
            self._stopping = True
            self.replica.stopped.set()
            for job in self._pending:
                job.state.busy = False
            self._pending.clear()
            for state in self._checks.values():
                if state.cancel is not None:
                    state.cancel.cancel("the daemon is shutting down")
            threads = list(self._threads)
            self._cond.notify_all()
        with self._jobs_lock:  # outside `_cond`: the timer thread may be waiting for it in `_due`
            if self.timer.running:
                self.timer.shutdown(wait=False)  # joins APScheduler's thread, which only hands slots over
        if not already and self._helper is not None:
            self._skips.put(None)  # the skips handed over before the stop are recorded first
            self._helper.join(timeout=2.0)
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        left = [t.name for t in threads if t.is_alive()]
        if left:
            log.error("shutdown: %d runs did not stop within %.0f s (%s); the next start records them interrupted",
                      len(left), timeout, ", ".join(left))
        return not left

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued or running (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True


# ------------------------------------------------------------------------------------------ main


class _Signals:
    """Flags set by signal handlers; the main thread acts on them."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.stop: str | None = None
        self.reload = False

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reload = True
        else:
            self.stop = signal.Signals(signum).name
        self.event.set()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {s: signal.signal(s, self.handler) for s in sigs}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve(settings: Settings, *, listen: str | None = None, history_url: str | None = None,
          ready: Callable[[Any], None] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; return the process exit code (0 after a clean stop)."""
    from reversib.web import WebServer

    url = settings.history_url(history_url)
    lock_path = sqlite_lock_path(url)
    lock = HistoryLock(lock_path) if lock_path is not None else None
    if lock is not None:
        lock.acquire()
    try:
        history = History.open(url)
        try:
            if settings.daemon.evidence.anchored:  # signed chain heads after each run (docs/evidence.md)
                from reversib.evidence.anchor import attach

                attach(history, settings.daemon.evidence)
            for run_id in history.reap_dead_runs():
                log.warning("run %s was left running by a process that ended: recorded as interrupted", run_id)
            daemon = Daemon(settings, history)
            collector = HistoryCollector(history, daemon.scheduled_checks, daemon.status)
            collector.render()  # warm: the first scrape reads only what changed since (docs/metrics.md)
            web = WebServer(daemon, collector, parse_listen(listen or settings.daemon.daemon.listen))
            signals = _Signals()
            with signals.installed():
                web.start()
                log.info("reversib daemon started: %d checks, history %s, listening on http://%s/",
                         len(settings.checks), history.describe(), web.address,
                         extra={"event": "start", "checks": len(settings.checks), "listen": web.address})
                daemon.start()
                if ready is not None:
                    ready(web)
                while signals.stop is None:
                    signals.event.wait(0.5)
                    signals.event.clear()
                    if signals.reload and signals.stop is None:
                        signals.reload = False
                        daemon.reload()
                log.info("%s received: stopping", signals.stop, extra={"event": "stop", "signal": signals.stop})
                clean = daemon.stop()
                web.stop()
            log.info("reversib daemon stopped", extra={"event": "stopped", "clean": clean})
        finally:
            history.close()
    finally:
        if lock is not None:
            lock.release()
    return 0
