"""Migration 0003 chains the runs recorded before it, per check in order of completion (chain version 1);
migration 0007 keeps those links verifiable while new links are made with version 2."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from reversib.evidence.audit import verify_chains
from reversib.evidence.chain import link_run, links_t
from reversib.history import History, alembic_config, create_history_engine, runs_t


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'h.db'}" if request.param == "sqlite" else str(
        request.getfixturevalue("pg_database"))


def test_upgrade_from_0002_links_existing_runs(url: str) -> None:
    from alembic import command

    engine = create_history_engine(url)
    config = alembic_config()
    with engine.connect() as conn:
        conn.execution_options(reversib_write=True)
        with conn.begin():
            config.attributes["connection"] = conn
            command.upgrade(config, "0002")
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    ids: dict[str, list[str]] = {"a": [], "b": []}
    rows = []
    for i in range(6):
        for check in ("b", "a"):
            run_id = uuid.uuid4().hex
            ids[check].append(run_id)
            at = t0 + timedelta(days=i)
            rows.append({"id": run_id, "check_id": check, "check_name": check, "trigger": "cli",
                         "scheduled_for": None, "state": "finished", "outcome": "passed" if i % 3 else "failed",
                         "started_at": at, "finished_at": at + timedelta(seconds=5), "duration_seconds": 5.0,
                         "host": "h", "pid": 1, "labels": {"team": "x"}, "source": "/x", "manifest": "SHA256SUMS",
                         "manifest_digest": "ab" * 32, "generation": None, "error": None, "counts": {},
                         "severities": {}, "tiers": {"downloaded": 3}, "bytes_verified": 3, "files_verified": 3,
                         "files_listed": 3, "bytes_listed": 3, "manifest_entries": 3, "newest_mtime": None,
                         "summary_digest": None})
    rows.append({**rows[0], "id": uuid.uuid4().hex, "state": "running", "outcome": None, "finished_at": None,
                 "started_at": t0 + timedelta(days=9)})  # still running: not chained
    with engine.begin() as conn:
        conn.execute(runs_t.insert(), rows)
    engine.dispose()
    with History.open(url) as history:
        with history.engine.connect() as conn:
            links = conn.execute(sa.select(links_t.c.check_id, links_t.c.seq, links_t.c.run_id)
                                 .order_by(links_t.c.check_id, links_t.c.seq)).all()
        assert [(c, s, r) for c, s, r in links] == [
            *[("a", n + 1, r) for n, r in enumerate(ids["a"])], *[("b", n + 1, r) for n, r in enumerate(ids["b"])]]
        report = verify_chains(history)
        assert report.ok, report.problems
        assert report.links == 12
        with history.engine.begin() as conn:  # old links stay version 1; a new run is linked with version 2
            assert set(conn.execute(sa.select(links_t.c.version)).scalars()) == {1}
            new = {**rows[0], "id": uuid.uuid4().hex, "started_at": t0 + timedelta(days=20),
                   "finished_at": t0 + timedelta(days=20, seconds=5), "coverage": {"ratio": 0.5},
                   "bytes_downloaded": 7}
            conn.execute(runs_t.insert().values(**new))
            assert link_run(conn, new["id"], t0 + timedelta(days=20)).seq == 7
            assert conn.execute(sa.select(links_t.c.version).where(links_t.c.run_id == new["id"])).scalar() == 2
        assert verify_chains(history).ok
        with history.engine.begin() as conn:  # version 1 never covered `coverage`: the old run's edit is not seen
            conn.execute(runs_t.update().where(runs_t.c.id == ids["a"][0]).values(coverage={"ratio": 1.0}))
        assert verify_chains(history).ok
        with history.engine.begin() as conn:  # version 2 does
            conn.execute(runs_t.update().where(runs_t.c.id == new["id"]).values(coverage={"ratio": 1.0}))
        assert [(p.kind, p.seq) for p in verify_chains(history).problems] == [("altered", 7)]
