"""`reversib run` as a real process: signals, the SQLite lock, JSON logs, `promtool check metrics`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from reversib.history import History
from tests.services import require_service

from .helpers import REVERSIB, DaemonProcess, free_port, poll, small_export, write_config

CHECK = {"source": {"url": "../exp"}, "manifest": {"path": "SHA256SUMS"}}


def test_sighup_with_a_broken_config_keeps_the_old_one(tmp_path: Path) -> None:
    small_export(tmp_path / "exp")
    cfg = write_config(tmp_path, {"first": {**CHECK, "schedule": {"every": "1h"}}})
    d = DaemonProcess(cfg, free_port())
    try:
        d.wait_ready()
        good = cfg.read_text()
        cfg.write_text(good + "\nunknown_key: 1\n")
        d.signal(signal.SIGHUP)
        rejected = poll("the rejected reload in the logs",
                        lambda: [e for e in d.events() if e.get("event") == "reload" and e.get("ok") is False])
        assert "unknown_key: unknown key" in rejected[0]["msg"]
        assert [c["check"] for c in d.get_json("/api/v1/checks")["checks"]] == ["first"]
        assert b"reversib_config_last_reload_successful 0.0" in d.get("/metrics")[1]
        write_config(tmp_path, {"first": {**CHECK, "schedule": {"every": "1h"}},
                                "second": {**CHECK, "schedule": {"every": "1h"}}})
        d.signal(signal.SIGHUP)
        poll("the second check after a good reload",
             lambda: [c["check"] for c in d.get_json("/api/v1/checks")["checks"]] == ["first", "second"])
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0, d.logs()


def test_sigterm_mid_run_records_interrupted_and_exits_quickly(tmp_path: Path) -> None:
    small_export(tmp_path / "exp", {"big.bin": os.urandom(24 << 20)})
    slow = {**CHECK, "source": {"url": "../exp", "rate_limit": "2MB"}, "schedule": {"every": "1h"}}
    cfg = write_config(tmp_path, {"slow": slow})  # caught up at start: the run begins at once
    d = DaemonProcess(cfg, free_port())
    db = tmp_path / "history.db"
    try:
        d.wait_ready()

        def running() -> bool:
            with History.open(f"sqlite:///{db}") as h:
                runs = h.runs("slow")
                return bool(runs) and runs[0].state == "running"

        poll("the slow run to be running", running)
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
        code = d.proc.wait(10)
        assert time.monotonic() - t0 < 10
    finally:
        d.stop()
    assert code == 0, d.logs()
    with History.open(f"sqlite:///{db}") as h:
        run = h.runs("slow")[0]
    assert (run.state, run.outcome) == ("interrupted", "error")
    assert "shutting down" in (run.error or "")


def test_a_second_daemon_on_the_same_history_is_refused(tmp_path: Path) -> None:
    small_export(tmp_path / "exp")
    cfg = write_config(tmp_path, {"one": {**CHECK, "schedule": {"every": "1h"}}})
    first = DaemonProcess(cfg, free_port())
    try:
        first.wait_ready()
        second = subprocess.run([REVERSIB, "run", "--config", str(cfg), "--listen", f"127.0.0.1:{free_port()}"],
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == 2
        assert "another reversib daemon" in second.stderr and str(first.proc.pid) in second.stderr
        assert first.get("/-/healthy")[0] == 200
    finally:
        assert first.stop() == 0


def test_metrics_are_clean_under_promtool_and_runs_are_logged_as_json(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        require_service("promtool", "is not installed (Debian package prometheus)")
    small_export(tmp_path / "exp")
    cfg = write_config(tmp_path, {"ok": {**CHECK, "labels": {"customer": "acme"}, "schedule": {"every": "1h"}},
                                  "broken": {"source": {"url": "../nowhere"}, "schedule": {"every": "1h"}},
                                  "never": {**CHECK, "schedule": {"cron": "0 3 1 1 *"}}},
                       {"catch_up_window": "2h"})
    d = DaemonProcess(cfg, free_port())
    try:
        d.wait_ready()
        runs = poll("a run event for each caught-up check",
                    lambda: (r := {e["check"]: e for e in d.events() if e.get("event") == "run"}) and len(r) == 2
                    and r)
        assert runs["ok"]["outcome"] == "passed" and runs["broken"]["outcome"] == "error"
        assert {"check", "outcome", "counts", "duration_seconds", "run_id", "ts", "level"} <= set(runs["ok"])
        code, body = d.get("/metrics")
        assert code == 200
        lint = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
        assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint
        text = body.decode()
        docs = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
        exported = {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines() if not line.startswith("#")}
        assert all(f"`{name}" in docs for name in exported), "undocumented metrics"
        assert 'reversib_check_findings{check="broken",kind="source_error"} 1.0' in text
        assert 'reversib_check_last_success_timestamp_seconds{check="never"} 0.0' in text
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize("listen", ["nonsense", "127.0.0.1:99999"])
def test_a_bad_listen_address_is_a_usage_error(tmp_path: Path, listen: str) -> None:
    cfg = write_config(tmp_path, {})
    done = subprocess.run([REVERSIB, "run", "--config", str(cfg), "--listen", listen], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 64 and "HOST:PORT" in done.stderr
