"""A CLI run and a daemon run of one check finishing at the same moment leave one unforked chain:
two processes, released together by a barrier, on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from reversib.evidence.audit import verify_chains
from reversib.evidence.chain import links_t
from reversib.history import History
from reversib.model import Finding, FindingKind, Outcome, RunResult, Trigger

ROUNDS = 15


def _writer(url: str, trigger: str, barrier: Any, out: Any) -> None:
    history = History.open(url)
    try:
        for round_ in range(ROUNDS):
            # The two processes never finish with the same outcome in a round: `run_counts` (one row per
            # outcome) must not be what serializes them -- only the chain's own head lock may.
            i = round_ * 2 + (trigger == Trigger.CLI.value)
            run_id = history.start_run(check_id="shared", check_name="Shared", trigger=trigger)
            result = RunResult(check_id="shared", check_name="Shared", run_id=run_id,
                               outcome=Outcome.FAILED if i % 2 == 0 else Outcome.PASSED,
                               findings=[Finding(FindingKind.MISSING, f"{trigger}/{i}.csv")] if i % 2 == 0 else [],
                               finished_at=time.time())
            barrier.wait(timeout=30)  # both processes finish this round at the same moment
            history.finish_run(result)
            out.put(run_id)
    finally:
        history.close()


def _race(url: str) -> set[str]:
    History.open(url).close()  # schema first
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    out = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, t.value, barrier, out)) for t in (Trigger.CLI, Trigger.SCHEDULE)]
    for p in procs:
        p.start()
    ids = {out.get(timeout=30) for _ in range(2 * ROUNDS)}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return ids


def _assert_one_chain(url: str, ids: set[str]) -> None:
    with History(url) as history:
        with history.engine.connect() as conn:
            links = conn.execute(sa.select(links_t.c.seq, links_t.c.run_id).where(links_t.c.check_id == "shared")
                                 .order_by(links_t.c.seq)).all()
        assert [s for s, _ in links] == list(range(1, 2 * ROUNDS + 1))
        assert {r for _, r in links} == ids
        report = verify_chains(history)
        assert report.ok, report.problems
        assert report.links == 2 * ROUNDS


def test_concurrent_finishers_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    _assert_one_chain(url, _race(url))


@pytest.mark.usefixtures("pg_admin")
def test_concurrent_finishers_on_postgresql(pg_database: str) -> None:
    _assert_one_chain(pg_database, _race(pg_database))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_real_daemon_and_cli_runs_leave_one_chain(tmp_path: Path, backend: str,
                                                    request: pytest.FixtureRequest) -> None:
    """The real thing: `reversib run` polling a check every second while `reversib verify-now` of the
    same check runs again and again beside it; every completed run is linked once, in one chain."""
    import subprocess

    from tests.daemon.helpers import REVERSIB, DaemonProcess, free_port, small_export, write_config

    history_url = ("sqlite:///history.db" if backend == "sqlite" else str(request.getfixturevalue("pg_database")))
    small_export(tmp_path / "export")
    cfg = write_config(tmp_path, {"shared": {"source": {"url": str(tmp_path / "export")},
                                             "manifest": {"path": "SHA256SUMS"}, "schedule": {"every": "1s"}}},
                       history=history_url)
    daemon = DaemonProcess(cfg, free_port())
    try:
        daemon.wait_ready()
        codes = [subprocess.run([REVERSIB, "verify-now", "shared", "--config", str(cfg), "--no-progress"],
                                cwd=tmp_path, capture_output=True, timeout=60).returncode for _ in range(6)]
    finally:
        assert daemon.stop() == 0
    assert codes == [0] * 6
    url = history_url if backend == "postgresql" else f"sqlite:///{tmp_path / 'history.db'}"
    with History(url) as history:
        with history.engine.connect() as conn:
            triggers = dict(conn.execute(sa.text("SELECT trigger, count(*) FROM runs WHERE state <> 'running' "
                                                 "GROUP BY trigger")).all())
            seqs = list(conn.execute(sa.select(links_t.c.seq).where(links_t.c.check_id == "shared")
                                     .order_by(links_t.c.seq)).scalars())
        report = verify_chains(history)
    assert triggers.get("cli") == 6 and triggers.get("schedule", 0) >= 2, triggers
    assert seqs == list(range(1, sum(triggers.values()) + 1))
    assert report.ok, report.problems
