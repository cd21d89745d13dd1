"""The daemon in-process: overlap recorded as skipped, catch-up at start, the concurrency limit,
the collector, the HTTP endpoints and the token-guarded verify-now."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reversib.config import Settings, load_settings
from reversib.daemon import Daemon, DaemonError, HistoryLock, sqlite_lock_path
from reversib.history import History
from reversib.metrics import HistoryCollector, ScheduledCheck, make_registry
from reversib.model import RunResult
from reversib.runner import run_check
from reversib.scheduler import Schedule
from reversib.timer import to_utc
from reversib.web import WebServer

from .helpers import poll, small_export, write_config


@pytest.fixture
def history(tmp_path: Path) -> Iterator[History]:
    with History.open(f"sqlite:///{tmp_path / 'history.db'}") as h:
        yield h


def settings_for(tmp_path: Path, checks: dict[str, dict[str, Any]], **daemon: Any) -> Settings:
    small_export(tmp_path / "exp")
    body = {"source": {"url": "../exp"}, "manifest": {"path": "SHA256SUMS"}}
    cfg = write_config(tmp_path, {cid: {**body, **extra} for cid, extra in checks.items()}, daemon)
    return load_settings(cfg)


class Gate:
    """A runner that blocks each run until released, counting how many run at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started: list[str] = []
        self.now = 0
        self.peak = 0
        self._lock = threading.Lock()

    def __call__(self, check: Any, history: History, **kw: Any) -> RunResult:
        with self._lock:
            self.started.append(check.check_id)
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            self.release.wait(30)
            return run_check(check, history, **kw)
        finally:
            with self._lock:
                self.now -= 1


def test_a_slot_due_during_a_run_is_recorded_skipped_not_doubled(tmp_path: Path, history: History) -> None:
    gate = Gate()
    daemon = Daemon(settings_for(tmp_path, {"often": {"schedule": {"every": "1s"}}}), history, runner=gate)
    daemon.start(catch_up=False)
    try:
        poll("the first run to start", lambda: gate.started)
        skipped = poll("two slots skipped while the run blocks",
                       lambda: (s := history.skipped_slots("often")) and len(s) >= 2 and s)
        gate.release.set()
        assert daemon.stop(10)
    finally:
        gate.release.set()
        daemon.stop(10)
    runs = history.runs("often")
    ran = {r.scheduled_for for r in runs}
    skip_slots = {slot for slot, _ in skipped}
    assert all(reason == "overlap" for _, reason in skipped)
    assert not ran & skip_slots, "a slot was both run and skipped"
    first = min(ran, key=lambda d: d.timestamp())
    assert all(s > first for s in skip_slots)
    # consecutive slots: nothing lost between the run and the skipped ones
    stamps = sorted(d.timestamp() for d in ran | skip_slots)
    assert stamps == [stamps[0] + i for i in range(len(stamps))]
    summary = history.check_summaries(["often"])["often"]
    assert summary.skipped == len(history.skipped_slots("often"))


def test_the_latest_missed_slot_is_caught_up_at_start(tmp_path: Path, history: History) -> None:
    settings = settings_for(tmp_path, {"hourly": {"schedule": {"every": "1h"}},
                                       "done": {"schedule": {"every": "1h"}},
                                       "rare": {"schedule": {"every": "1d"}}}, catch_up_window="2h")
    now = time.time()
    last = Schedule.of(settings.find("hourly")).last_at_or_before(now)  # type: ignore[arg-type,union-attr]
    done_last = Schedule.of(settings.find("done")).last_at_or_before(now)  # type: ignore[arg-type,union-attr]
    rare_last = Schedule.of(settings.find("rare")).last_at_or_before(now)  # type: ignore[arg-type,union-attr]
    assert last is not None and done_last is not None and rare_last is not None
    # `hourly` last ran three slots ago (the daemon was down since); `done` already ran the latest slot.
    for check_id, slot in (("hourly", last - 3 * 3600), ("done", done_last)):
        run_check(settings.find(check_id), history, scheduled_for=slot)  # type: ignore[arg-type]
    daemon = Daemon(settings, history)
    queued = daemon.catch_up(settings.daemon.daemon.catch_up_window)
    try:
        expected = {("hourly", last)}
        if now - rare_last <= 7200:  # the daily slot is within the 2 h window
            expected.add(("rare", rare_last))
        assert set(queued) == expected
        assert daemon.wait_idle(20)
    finally:
        daemon.stop(10)
    slots = sorted(r.scheduled_for.timestamp() for r in history.runs("hourly") if r.scheduled_for)
    assert slots == [last - 3 * 3600, last], "only the most recent missed slot is caught up"
    assert len(history.runs("done")) == 1


def test_the_global_limit_caps_concurrent_runs(tmp_path: Path, history: History) -> None:
    gate = Gate()
    settings = settings_for(tmp_path, {f"c{i}": {"schedule": {"every": "1h"}} for i in range(4)},
                            max_concurrent_checks=2)
    daemon = Daemon(settings, history, runner=gate)
    try:
        assert len(daemon.catch_up(7200)) == 4
        poll("two runs to start", lambda: len(gate.started) == 2)
        time.sleep(0.3)  # give a third run the chance to (wrongly) start
        assert gate.now == 2
        gate.release.set()
        assert daemon.wait_idle(20)
    finally:
        gate.release.set()
        daemon.stop(10)
    assert gate.peak == 2 and sorted(gate.started) == ["c0", "c1", "c2", "c3"]


def test_a_slot_claimed_by_another_process_is_not_run_again(tmp_path: Path, history: History) -> None:
    settings = settings_for(tmp_path, {"shared": {"schedule": {"every": "1h"}}})
    slot = Schedule.of(settings.find("shared")).last_at_or_before(time.time())  # type: ignore[arg-type,union-attr]
    with History.open(history.describe(), host="other-replica", pid=1) as other:
        other.start_run(check_id="shared", check_name="shared", trigger="schedule", scheduled_for=slot)
    daemon = Daemon(settings, history)
    try:
        assert daemon.catch_up(7200) == []  # the history records the slot: nothing to catch up
        daemon._due("shared", run_time=to_utc(slot))  # the timer of a daemon that did not see the claim yet
        assert daemon.wait_idle(20)
    finally:
        daemon.stop(10)
    assert [r.host for r in history.runs("shared")] == ["other-replica"]


def test_a_second_lock_on_the_same_history_is_refused(tmp_path: Path) -> None:
    path = sqlite_lock_path(f"sqlite:///{tmp_path / 'h.db'}")
    assert path == tmp_path / "h.db.lock"
    assert sqlite_lock_path("postgresql+psycopg://u@h/db") is None
    first = HistoryLock(path)
    first.acquire()
    try:
        with pytest.raises(DaemonError, match="another reversib daemon"):
            HistoryLock(path).acquire()
    finally:
        first.release()
    again = HistoryLock(path)
    again.acquire()
    again.release()


# ------------------------------------------------------------------------------------ HTTP, metrics


@pytest.fixture
def served(tmp_path: Path, history: History, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Daemon, str]]:
    monkeypatch.setenv("REVERSIB_TEST_TOKEN", "s3cret-token")
    settings = settings_for(tmp_path, {"good": {"labels": {"customer": "acme"}, "schedule": {"every": "1h"}},
                                       "never": {"schedule": {"cron": "0 3 * * *"}}},
                            api_token_env="REVERSIB_TEST_TOKEN")
    daemon = Daemon(settings, history)
    web = WebServer(daemon, HistoryCollector(history, daemon.scheduled_checks, daemon.status), ("127.0.0.1", 0))
    web.start()
    try:
        yield daemon, f"http://127.0.0.1:{web.port}"
    finally:
        daemon.stop(10)
        web.stop()


def call(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_endpoints_and_token_guarded_verify(served: tuple[Daemon, str], history: History) -> None:
    daemon, base = served
    assert call(base + "/-/healthy")[0] == 200
    assert call(base + "/-/ready")[0] == 200
    verify = base + "/api/v1/checks/good/verify"
    assert call(verify, "POST")[0] == 401
    assert call(verify, "POST", {"Authorization": "Bearer wrong"})[0] == 401
    assert call(base + "/api/v1/checks/nope/verify", "POST", {"Authorization": "Bearer s3cret-token"})[0] == 404
    code, body = call(verify, "POST", {"Authorization": "Bearer s3cret-token"})
    assert code == 202, body
    assert daemon.wait_idle(20)
    runs = json.loads(call(base + "/api/v1/checks/good/runs?limit=5")[1])["runs"]
    assert [(r["trigger"], r["outcome"]) for r in runs] == [("api", "passed")]
    checks = {c["check"]: c for c in json.loads(call(base + "/api/v1/checks")[1])["checks"]}
    assert checks["good"]["last_run"]["outcome"] == "passed" and checks["never"]["last_run"] is None
    assert checks["never"]["next_run"].endswith("T03:00:00.000000Z")
    page = call(base + "/")[1].decode()
    assert "good" in page and "passed" in page and "never run" in page
    assert call(base + "/api/v1/checks/nope/runs")[0] == 404
    assert call(base + "/nowhere")[0] == 404
    metrics = call(base + "/metrics")[1].decode()
    assert 'reversib_check_outcome{check="good",customer="acme",outcome="passed"} 1.0' in metrics
    assert 'reversib_check_runs_total{check="good",customer="acme"} 1.0' in metrics
    # a check that never succeeded exports 0, so that ExportStale fires
    assert 'reversib_check_last_success_timestamp_seconds{check="never"} 0.0' in metrics
    assert 'reversib_check_expected_interval_seconds{check="never"} 86400.0' in metrics
    assert "s3cret" not in metrics and "SHA256SUMS" not in metrics and "a.txt" not in metrics


def test_verify_endpoint_does_not_exist_without_a_token(tmp_path: Path, history: History) -> None:
    settings = settings_for(tmp_path, {"good": {}})
    daemon = Daemon(settings, history)
    web = WebServer(daemon, HistoryCollector(history, daemon.scheduled_checks), ("127.0.0.1", 0))
    web.start()
    try:
        code, _ = call(f"http://127.0.0.1:{web.port}/api/v1/checks/good/verify", "POST",
                       {"Authorization": "Bearer anything"})
        assert code == 404
    finally:
        web.stop()
    assert history.runs("good") == []


def test_fast_rendering_equals_prometheus_client_rendering(tmp_path: Path, history: History) -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    settings = settings_for(tmp_path, {"a": {"labels": {"customer": 'quote " back \\ new\nline'},
                                             "schedule": {"every": "1h"}},
                                       "b": {"source": {"url": "../nowhere"}}, "c": {}})
    for check in settings.checks[:2]:
        run_check(check, history)
    collector = HistoryCollector(history, lambda: [ScheduledCheck.of(c, 0) for c in settings.checks])

    def samples(text: str) -> set[tuple[str, str, tuple[tuple[str, str], ...], float]]:
        return {(f.name, f.type, tuple(sorted(s.labels.items())), s.value)
                for f in text_string_to_metric_families(text) for s in f.samples}

    fast = samples(collector.render().decode())
    reference = samples(generate_latest(make_registry(collector)).decode())
    assert fast == reference and len(fast) > 30
    assert ("reversib_check_findings", "gauge", (("check", "b"), ("kind", "source_error")), 1.0) in fast
