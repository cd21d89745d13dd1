"""The daemon (`reversib run`, a real process) and a CLI `verify-now` both anchor the signed heads after
their runs, into the same file, and the audit against it passes."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.cli_helpers import run_cli
from tests.daemon.helpers import DaemonProcess, free_port, poll, small_export, write_config
from tests.evidence.conftest import sh


def test_daemon_and_cli_runs_are_anchored(tmp_path: Path) -> None:
    small_export(tmp_path / "exp")
    cfg = write_config(tmp_path, {"one": {"source": {"url": "../exp"}, "manifest": {"path": "SHA256SUMS"},
                                          "schedule": {"every": "1h"}}})  # caught up at start
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key"))
    doc = yaml.safe_load(cfg.read_text())
    doc["evidence"] = {"signing_key_file": "key", "heads_path": "heads.json"}
    cfg.write_text(yaml.safe_dump(doc))
    heads = tmp_path / "heads.json"
    d = DaemonProcess(cfg, free_port())
    try:
        d.wait_ready()
        poll("the daemon's run anchored", lambda: heads.exists() and json.loads(heads.read_text())["heads"])
        assert json.loads(heads.read_text())["heads"]["one"]["seq"] == 1
        code, _ = run_cli(["verify-now", "one", "--no-progress", "--config", str(cfg)], tmp_path / "history.db")
        assert code == 0
        assert json.loads(heads.read_text())["heads"]["one"]["seq"] == 2
    finally:
        assert d.stop() == 0, d.logs()
    code, out = run_cli(["audit", "verify", "--against", str(heads), "--config", str(cfg)], tmp_path / "history.db")
    assert code == 0 and "OK: 1 chains, 2 links, 1 heads checked" in out
