"""The indicators exposed as Prometheus metrics agree with the report (last 30 days)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from reversib.history import History
from reversib.metrics import HistoryCollector, ScheduledCheck
from reversib.model import Outcome
from tests.evidence.conftest import DAY, T0, make_check
from tests.evidence.test_indicators import DAYS


def test_on_time_ratio_metric(three_months: tuple[History, list[Outcome], str], tmp_path: Path) -> None:
    history, _, _ = three_months
    until = T0 + DAYS * DAY
    dated = make_check(tmp_path, generation={"pattern": "%Y-%m-%d"}, expect={"deadline": "06:00"},
                       labels={"customer": "acme"})
    plain = make_check(tmp_path, id="plain")  # no deadline: no indicator series
    checks = [ScheduledCheck.of(dated, until), ScheduledCheck.of(plain, until)]
    collector = HistoryCollector(history, lambda: checks, clock=lambda: until)
    text = collector.render().decode()
    # the last 30 days: windows of days 62..91; missed 90, 91; unmeasured 70, 71, 72 (reversib down)
    assert f'reversib_check_on_time_ratio{{check="acme",customer="acme"}} {25 / 27!r}' in text
    assert 'reversib_check_unmeasured_windows{check="acme",customer="acme"} 3.0' in text
    assert 'reversib_check_could_not_verify_ratio{check="acme",customer="acme"} 0.0' in text
    assert 'check="plain"}' not in "".join(line for line in text.splitlines() if "ratio" in line or "windows" in line)
    promtool = shutil.which("promtool")
    if promtool is not None:
        proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
