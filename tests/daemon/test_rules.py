"""The shipped alert rules are valid and their unit tests pass (`promtool check rules` / `test rules`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.services import require_service

CONFIG = Path(__file__).resolve().parents[2] / "config"
REQUIRED = {"ExportCheckFailing", "ExportStale", "ExportUnverifiable", "ReversibDown", "ReversibAbsent"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        require_service("promtool", "is not installed (Debian package prometheus)")
    return found


def test_rules_are_valid() -> None:
    done = subprocess.run([promtool(), "check", "rules", str(CONFIG / "alerts.yml")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_rule_unit_tests_pass_and_cover_every_alert() -> None:
    done = subprocess.run([promtool(), "test", "rules", "alerts.test.yml"], cwd=CONFIG, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr
    alerts = {r["alert"] for g in yaml.safe_load((CONFIG / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    assert alerts >= REQUIRED
    tested = {t["alertname"] for case in yaml.safe_load((CONFIG / "alerts.test.yml").read_text())["tests"]
              for t in case.get("alert_rule_test", [])}
    assert tested == alerts, f"alerts without a unit test: {alerts - tested}"
    firing = {t["alertname"] for case in yaml.safe_load((CONFIG / "alerts.test.yml").read_text())["tests"]
              for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert firing == alerts, f"alerts never shown firing: {alerts - firing}"
