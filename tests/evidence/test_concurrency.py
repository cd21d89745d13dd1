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
