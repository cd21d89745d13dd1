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


def test_the_metric_and_the_report_agree_even_on_a_forged_running_row(
        three_months: tuple[History, list[Outcome], str], tmp_path: Path) -> None:
    """The metric reads the runs as the report does: a row left (or forged) `running` with an outcome counts
    for neither, and the two give the same ratio for the same 30 days."""
    import datetime as dt
    import uuid

    import sqlalchemy as sa

    from reversib.evidence.indicators import recent
    from reversib.evidence.report import build_report
    from reversib.history import runs_t

    source, _, check_id = three_months
    import sqlite3

    copy = tmp_path / "copy.db"
    with sqlite3.connect(str(source.engine.url.database)) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)  # WAL included
    until = dt.datetime.fromtimestamp(T0 + DAYS * DAY, dt.timezone.utc)
    dated = make_check(tmp_path, generation={"pattern": "%Y-%m-%d"}, expect={"deadline": "06:00"})
    with History.open(f"sqlite:///{copy}") as history:
        with history.engine.begin() as conn:  # day 90 was missed: a row claims a pass, state still running
            row = dict(conn.execute(sa.select(runs_t).where(runs_t.c.outcome == "failed")
                                    .order_by(runs_t.c.started_at.desc())).mappings().first() or {})
            row.update(id=uuid.uuid4().hex, outcome="passed", state="running",
                       started_at=row["started_at"] - dt.timedelta(minutes=1))
            conn.execute(runs_t.insert().values(**row))
        metric = recent(history, [dated], until)[check_id].on_time_ratio
        doc = build_report(history, [dated], since=until - dt.timedelta(days=30), until=until)
    assert metric == 25 / 27
    assert doc["checks"][0]["on_time_ratio"] == round(metric, 6)
