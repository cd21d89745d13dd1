"""A killed or signalled run leaves the history consistent: `interrupted`, never half-recorded, never a pass."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from reversib.history import History

from .helpers import make_export, run_tool


def slow_check(tmp_path: Path) -> Path:
    root = make_export(tmp_path / "exp", {"big.bin": os.urandom(40 << 20)})
    run_tool(["sha256sum"], root, "SHA256SUMS")
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "slow.yaml").write_text(yaml.safe_dump({
        "version": 1, "id": "slow", "name": "slow", "source": {"url": "../exp", "rate_limit": "4MB"}}))
    cfg = tmp_path / "reversib.yaml"
    cfg.write_text(yaml.safe_dump({"version": 1, "history": {"url": "sqlite:///h.db"}, "checks_dir": "checks"}))
    return cfg


def start(cfg: Path) -> subprocess.Popen[str]:
    exe = Path(sys.executable).with_name("reversib")
    return subprocess.Popen([str(exe), "verify-now", "slow", "--config", str(cfg), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_running(db: Path) -> None:
    deadline = time.time() + 20
    while time.time() < deadline:
        if db.exists():
            with History.open(f"sqlite:///{db}") as h:
                runs = h.runs("slow")
                if runs and runs[0].state == "running":
                    time.sleep(0.5)
                    return
        time.sleep(0.1)
    raise AssertionError("the run never started")


def test_sigterm_records_interrupted(tmp_path: Path) -> None:
    cfg = slow_check(tmp_path)
    proc = start(cfg)
    wait_running(tmp_path / "h.db")
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert time.time() - t0 < 5
    assert proc.returncode == 2, err
    doc = json.loads(out)
    assert doc["outcome"] == "error" and doc["runs"][0]["state"] == "interrupted"
    with History.open(f"sqlite:///{tmp_path / 'h.db'}") as h:
        run = h.runs("slow")[0]
        assert (run.state, run.outcome) == ("interrupted", "error")


def test_kill_9_is_reaped_as_interrupted(tmp_path: Path) -> None:
    cfg = slow_check(tmp_path)
    proc = start(cfg)
    wait_running(tmp_path / "h.db")
    proc.kill()
    proc.wait(timeout=10)
    with History.open(f"sqlite:///{tmp_path / 'h.db'}") as h:
        assert h.runs("slow")[0].state == "running"  # as the crash left it: visibly unfinished, not passed
    exe = Path(sys.executable).with_name("reversib")
    listed = subprocess.run([str(exe), "checks", "--config", str(cfg), "--json"], capture_output=True, text=True,
                            timeout=30)
    assert "left running by a process that ended" in listed.stderr
    last = json.loads(listed.stdout)["checks"][0]["last_run"]
    assert (last["state"], last["outcome"]) == ("interrupted", "error")
