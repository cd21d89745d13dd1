"""The restore-duration trend (the RTO indicator): exact figures from chosen durations, then real
restore tests (a dump made by the real pg_dump, restored into the real PostgreSQL) run through the real
runner on three days, read back from the history by `reversib report`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from reversib.dumps.expectations import restore_detail
from reversib.evidence.indicators import RunPoint, compute
from reversib.evidence.report import build_report, render_html, render_markdown
from reversib.history import History, findings_t, runs_t
from reversib.model import Outcome
from reversib.runner import run_check
from tests.dumps.conftest import dump_dir, other_db, pg_dump, restore_env, restore_role  # noqa: F401 (fixtures)
from tests.evidence.conftest import DAY, T0, Clock, make_check

UTC = dt.timezone.utc


def at(days: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(T0 + days * DAY, UTC)


def point(i: int, days: float, outcome: str = "passed", restore: float | None = None) -> RunPoint:
    return RunPoint(f"r{i}", outcome, at(days), at(days) + dt.timedelta(minutes=5), restore_seconds=restore)


def test_restore_trend_figures_are_exact() -> None:
    # restores of 10 s, 12 s, 20 s at days 0, 15, 30; a run without restore and a failed run with one
    runs = [point(0, 0, restore=10.0), point(1, 7), point(2, 15, restore=12.0),
            point(3, 30, "failed", restore=20.0)]
    ind = compute("acme", runs, since=at(-1), until=at(31))
    s = ind.summary()
    assert (s["restores"], s["restore_seconds_last"], s["restore_seconds_max"]) == (3, 20.0, 20.0)
    assert s["restore_seconds_mean"] == 14.0
    # slope of (0, 10), (0.5, 12), (1, 20) in 30-day units: 10 s per 30 days
    assert s["restore_trend_seconds_per_30d"] == 10.0
    assert [p["seconds"] for p in ind.to_dict()["restore_series"]] == [10.0, 12.0, 20.0]
    one = compute("acme", runs[:2], since=at(-1), until=at(31)).summary()
    assert (one["restores"], one["restore_seconds_last"], one["restore_trend_seconds_per_30d"]) == (1, 10.0, None)
    none = compute("acme", runs[1:2], since=at(-1), until=at(31)).summary()
    assert (none["restores"], none["restore_seconds_last"]) == (0, None)


@pytest.mark.service
def test_restore_durations_of_real_restores_through_the_runner(tmp_path: Path, other_db: str,  # noqa: F811
                                                                dump_dir: Path, restore_env: str) -> None:  # noqa: F811
    export = tmp_path / "export"
    export.mkdir()
    pg_dump(other_db, export / "db.dump", "-Fc")
    (export / "notes.txt").write_bytes(b"not a dump\n")
    import subprocess

    subprocess.run(["sh", "-c", "sha256sum db.dump notes.txt > SHA256SUMS"], cwd=export, check=True)
    check = make_check(export, dumps=[{"path": "db.dump", "expect_tables": ["inventory"],
                                       "restore": {"target_url_env": restore_env}}])
    clock = Clock()
    with History.open(f"sqlite:///{tmp_path / 'h.db'}", clock=clock) as history:
        for day in range(3):
            clock.t = T0 + day * DAY + 7 * 3600
            result = run_check(check, history, clock=clock)
            assert result.outcome is Outcome.PASSED, result.findings
        with history.engine.connect() as conn:
            stored = conn.execute(sa.select(findings_t.c.detail).join(runs_t, runs_t.c.id == findings_t.c.run_id)
                                  .where(findings_t.c.kind == "restored").order_by(runs_t.c.started_at)).scalars()
            seconds = [restore_detail(d)["restore_seconds"] for d in stored]  # type: ignore[index]
        assert len(seconds) == 3 and all(s > 0 for s in seconds)
        doc = build_report(history, [check], since=at(-1), until=at(3))
    c = doc["checks"][0]
    assert c["restores"] == 3
    assert [p["seconds"] for p in c["restore_series"]] == [round(s, 6) for s in seconds]
    assert c["restore_seconds_last"] == round(seconds[-1], 6)
    assert c["restore_seconds_max"] == round(max(seconds), 6)
    assert c["restore_trend_seconds_per_30d"] is not None
    assert "Restore duration (RTO) over 3 restore tests: last" in render_markdown(doc)
    assert 'aria-label="restore seconds"' in render_html(doc)
