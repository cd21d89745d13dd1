"""The history store, on SQLite and on the real PostgreSQL (skipped locally without it, failed in CI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from reversib import history as history_module
from reversib.history import (
    SCHEMA_REVISION,
    EntryRecord,
    History,
    HistoryError,
    RunNotRunning,
    SlotTaken,
    UnknownRun,
    alembic_config,
    compute_summary_digest,
    create_history_engine,
    storable,
    to_datetime,
)
from reversib.model import Finding, FindingKind, Outcome, RunResult, RunState, Severity, Trigger

REPO = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000.25
UTC = timezone.utc


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.service)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/not/yet/there/history.db"
    return str(request.getfixturevalue("pg_database"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def history(url: str, clock: FakeClock) -> Iterator[History]:
    h = History.open(url, clock=clock, host="test-host", pid=os.getpid())
    yield h
    h.close()


def result_for(run_id: str, *, outcome: Outcome = Outcome.FAILED, state: RunState = RunState.FINISHED,
               findings: list[Finding] | None = None, check_id: str = "daily", finished_at: float = 0.0) -> RunResult:
    return RunResult(
        check_id=check_id, check_name="Daily export", run_id=run_id, outcome=outcome, state=state,
        findings=findings if findings is not None else [
            Finding(FindingKind.MISSING, "b/missing.csv", expected="12 bytes"),
            Finding(FindingKind.DIGEST_MISMATCH, "a.txt", expected="sha256:aa", actual="sha256:bb",
                    detail="first differing block 0"),
            Finding(FindingKind.FETCH_REFERENCE, None, expected="x", severity=Severity.WARNING),
        ],
        tiers={"downloaded": 2, "size_only": 1}, bytes_verified=1234, files_verified=3, files_listed=4,
        bytes_listed=5000, manifest_entries=4, duration_seconds=2.5, started_at=T0, finished_at=finished_at,
        error=None, generation="2024-05-01", source="file:///exports/daily", manifest="SHA256SUMS",
        manifest_digest="sha256:" + "ab" * 32, newest_mtime=T0 - 3600.5, labels={"team": "data", "env": "prod"},
    )


# ------------------------------------------------------------------------------------------ schema


def test_schema_revision_is_the_alembic_head() -> None:
    from alembic.script import ScriptDirectory

    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == SCHEMA_REVISION


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.service)])
def two_urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """Two empty history databases of the same kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
    make = request.getfixturevalue("make_pg_database")
    return make(), make()


def _schema(engine: sa.Engine) -> dict[str, object]:
    """Everything the database says about its tables, in a comparable form (column order aside)."""
    inspector = sa.inspect(engine)
    out: dict[str, object] = {}
    for table in sorted(inspector.get_table_names()):
        out[table] = {
            "columns": sorted((c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                              for c in inspector.get_columns(table)),
            "primary_key": sorted(inspector.get_pk_constraint(table)["constrained_columns"]),
            "foreign_keys": sorted((tuple(f["constrained_columns"]), f["referred_table"],
                                    tuple(f["referred_columns"]), sorted(f["options"].items()))
                                   for f in inspector.get_foreign_keys(table)),
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]),
                               sorted((k, str(v)) for k, v in i.get("dialect_options", {}).items()))
                              for i in inspector.get_indexes(table)),
            "unique": sorted((u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(table)),
            "options": sorted((k, str(v)) for k, v in inspector.get_table_options(table).items()),
        }
    return out


def test_new_database_is_created_at_the_head_then_fast_path(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = History(url)
    try:
        assert fresh.current_revision() is None
        assert fresh.ensure_schema() is True
        assert fresh.migrations_run == 1
        assert fresh.current_revision() == SCHEMA_REVISION
        inspector = sa.inspect(fresh.engine)
        assert {"runs", "findings", "entry_state", "alembic_version"} <= set(inspector.get_table_names())
        assert "uq_runs_check_slot" in {u["name"] for u in inspector.get_unique_constraints("runs")}
        assert "ix_runs_check_started" in {i["name"] for i in inspector.get_indexes("runs")}
        fks = inspector.get_foreign_keys("findings")
        assert fks[0]["referred_table"] == "runs" and fks[0]["options"].get("ondelete") == "CASCADE"
    finally:
        fresh.close()

    def no_upgrade(self: History) -> bool:
        raise AssertionError("ensure_schema ran Alembic on an up-to-date database")

    monkeypatch.setattr(History, "_upgrade", no_upgrade)
    again = History.open(url)
    try:
        assert again.ensure_schema() is False
        assert again.migrations_run == 0
    finally:
        again.close()


def test_migrations_and_models_build_the_same_schema(two_urls: tuple[str, str]) -> None:
    """A new database is made from the models (`create_at_head`), an old one is brought up by the
    migrations: both routes must end in the same schema, or a database's shape would depend on its age."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    by_models, by_migrations = History(two_urls[0]), History(two_urls[1])
    try:
        assert by_models.ensure_schema() is True
        with by_migrations._write() as conn:  # the Alembic route, from an empty database
            assert by_migrations._migrate(conn) is True
        assert by_migrations.current_revision() == by_models.current_revision() == SCHEMA_REVISION
        assert _schema(by_models.engine) == _schema(by_migrations.engine)
        for h in (by_models, by_migrations):
            with h.engine.connect() as conn:
                assert compare_metadata(MigrationContext.configure(conn), history_module.Base.metadata) == []
        with by_migrations._write() as conn:  # and Alembic takes the model-built database as its head
            assert by_migrations._migrate(conn) is False
    finally:
        by_models.close()
        by_migrations.close()


def test_neither_a_new_nor_a_current_database_imports_alembic(url: str) -> None:
    code = (
        "import sys\n"
        "from reversib.history import History\n"
        "for _ in range(2):\n"
        f"    h = History.open({url!r})\n"
        "    print(h.migrations_run)\n"
        "    h.close()\n"
        "assert 'alembic' not in sys.modules, 'alembic was imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "0"]


def test_a_database_with_other_tables_goes_through_alembic(url: str) -> None:
    """Not empty, not ours: the migrations run (create_at_head is only for an empty database)."""
    engine = create_history_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE someone_elses (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    with History.open(url) as h:
        assert h.migrations_run == 1 and h.current_revision() == SCHEMA_REVISION
        assert {"runs", "someone_elses"} <= set(sa.inspect(h.engine).get_table_names())


def test_newer_schema_is_refused_clearly(url: str) -> None:
    with History.open(url) as h, h.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(HistoryError, match="9999"):
        History.open(url)


def test_sqlite_settings_and_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "history.db"
    with History.open(str(path)) as h:  # a bare path means SQLite
        assert path.exists()
        with h.engine.connect() as conn:
            pragmas = {p: conn.exec_driver_sql(f"PRAGMA {p}").scalar()
                       for p in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")}
        assert pragmas == {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 1, "busy_timeout": 30000}


def test_concurrent_ensure_schema_threads_on_fresh_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/race.db"
    barrier = threading.Barrier(4)
    results: list[bool] = []
    errors: list[BaseException] = []

    def worker() -> None:
        h = History(url)
        try:
            barrier.wait()
            results.append(h.ensure_schema())
        except BaseException as exc:
            errors.append(exc)
        finally:
            h.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(results) == [False, False, False, True]


def test_concurrent_ensure_schema_processes(url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    code = (
        "import os, sys, time\n"
        "from reversib.history import History\n"
        "h = History(sys.argv[1])\n"
        "while not os.path.exists(sys.argv[2]):\n"
        "    time.sleep(0.001)\n"
        "print(int(h.ensure_schema()), 'alembic' in sys.modules)\n"
        "h.close()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code, url, str(go)], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    go.touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outputs]
    # One creates the schema; the others find it made (before or after waiting for the lock): none loads Alembic.
    assert sorted(out.strip() for out, _ in outputs) == ["0 False", "0 False", "1 False"]


# -------------------------------------------------------------------------------------------- runs


def test_start_finish_round_trip(history: History, clock: FakeClock) -> None:
    run_id = history.start_run(check_id="daily", check_name="Daily export", trigger=Trigger.SCHEDULE,
                               scheduled_for=datetime(2024, 5, 1, 2, 0, tzinfo=UTC),
                               labels={"team": "data", "env": "prod"}, source="file:///exports/daily",
                               manifest="SHA256SUMS")
    assert len(run_id) == 32 and int(run_id, 16) >= 0
    running = history.get_run(run_id)
    assert running is not None
    assert (running.state, running.outcome, running.trigger) == ("running", None, "schedule")
    assert running.started_at == to_datetime(T0) and running.started_at.tzinfo is not None
    assert running.scheduled_for == datetime(2024, 5, 1, 2, 0, tzinfo=UTC)
    assert (running.host, running.pid) == ("test-host", os.getpid())

    clock.advance(2.5)
    result = result_for(run_id)
    entries = (EntryRecord(p, s, {"sha256": d}, "downloaded", T0 + 1.000001)
               for p, s, d in [("b/x.bin", 10, "11" * 32), ("a.txt", None, "22" * 32)])
    digest = history.finish_run(result, entries)

    run = history.get_run(run_id)
    assert run is not None
    assert (run.state, run.outcome) == ("finished", "failed")
    assert run.finished_at == to_datetime(T0 + 2.5)
    assert run.duration_seconds == 2.5
    assert run.counts == {"digest_mismatch": 1, "fetch_reference": 1, "missing": 1}
    assert run.severities == {"error": 2, "warning": 1, "info": 0}
    assert run.tiers == {"downloaded": 2, "size_only": 1}
    assert (run.bytes_verified, run.files_verified, run.files_listed, run.bytes_listed, run.manifest_entries) == (
        1234, 3, 4, 5000, 4)
    assert (run.generation, run.manifest_digest) == ("2024-05-01", "sha256:" + "ab" * 32)
    assert run.newest_mtime == to_datetime(T0 - 3600.5)
    assert run.labels == {"env": "prod", "team": "data"}
    assert run.summary_digest == digest and len(digest) == 64

    assert history.findings(run_id) == result.findings
    assert compute_summary_digest(run, history.findings(run_id)) == digest  # recomputable from the rows

    states = list(history.entry_states("daily"))
    assert [(e.path, e.size, dict(e.digests), e.tier, e.verified_at) for e in states] == [
        ("a.txt", None, {"sha256": "22" * 32}, "downloaded", to_datetime(T0 + 1.000001).timestamp()),
        ("b/x.bin", 10, {"sha256": "11" * 32}, "downloaded", to_datetime(T0 + 1.000001).timestamp()),
    ]

    doc = run.to_dict()
    json.dumps(doc)
    assert doc["started_at"] == "2023-11-14T22:13:20.250000Z"
    assert doc["scheduled_for"] == "2024-05-01T02:00:00.000000Z"
    assert doc["outcome"] == "failed"


def test_queries_latest_runs_history_and_last_success(history: History, clock: FakeClock) -> None:
    ids: dict[str, list[str]] = {}
    for check, outcomes in (("a", [Outcome.PASSED, Outcome.FAILED]), ("b", [Outcome.PASSED])):
        for outcome in outcomes:
            clock.advance(60)
            run_id = history.start_run(check_id=check, check_name=check, trigger="cli")
            history.finish_run(result_for(run_id, outcome=outcome, check_id=check, findings=[]))
            ids.setdefault(check, []).append(run_id)
    clock.advance(60)
    still_running = history.start_run(check_id="b", check_name="b", trigger="api")

    assert history.check_ids() == ["a", "b"]
    assert [(r.check_id, r.id) for r in history.latest_runs()] == [("a", ids["a"][1]), ("b", still_running)]
    assert [r.id for r in history.runs("a")] == [ids["a"][1], ids["a"][0]]
    assert [r.id for r in history.runs("a", limit=1)] == [ids["a"][1]]
    success = history.last_success("a")
    assert success is not None and success.id == ids["a"][0]
    success_b = history.last_success("b")
    assert success_b is not None and success_b.id == ids["b"][0]
    assert history.last_success("nope") is None
    assert history.get_run("0" * 32) is None


def test_check_summaries_follow_new_runs_across_calls_and_processes(history: History, url: str,
                                                                     clock: FakeClock) -> None:
    """check_summaries keeps the rows it read (completed runs never change): each call must still show
    the newest completed run, whoever completed it, and forget one that was deleted (pruned)."""
    def finish(h: History, check: str, outcome: Outcome) -> str:
        clock.advance(60)
        run_id = h.start_run(check_id=check, check_name=check, trigger="cli")
        h.finish_run(result_for(run_id, outcome=outcome, check_id=check, findings=[], finished_at=clock()))
        return run_id

    first = finish(history, "a", Outcome.PASSED)
    s = history.check_summaries(["a", "never"])
    latest = s["a"].latest
    assert latest is not None and latest == history.get_run(first)
    assert s["a"].last_success_at == to_datetime(clock()) and s["a"].outcomes == {"passed": 1}
    assert s["never"].latest is None and s["never"].runs_total == 0

    second = finish(history, "a", Outcome.FAILED)
    clock.advance(60)
    history.start_run(check_id="a", check_name="a", trigger="api")  # running: not the newest completed run
    s = history.check_summaries(["a"])
    assert s["a"].latest == history.get_run(second) and s["a"].running == 1
    assert s["a"].outcomes == {"passed": 1, "failed": 1}

    with History.open(url, clock=clock, host="other-host", pid=1) as other:  # another process (a CLI run)
        third = finish(other, "a", Outcome.ERROR)
    latest = history.check_summaries(["a"])["a"].latest
    assert latest is not None and latest.id == third and latest.outcome == "error"

    # pruning deletes runs without changing the counters: here the only passed run, then all of them
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from reversib.evidence.prune import prune

    key = Ed25519PrivateKey.generate()
    assert [p.runs for p in prune(history, key, to_datetime(T0 + 90))] == [1]
    s = history.check_summaries(["a"])
    assert s["a"].latest == history.get_run(third) and s["a"].last_success_at is None
    assert [p.runs for p in prune(history, key, to_datetime(clock() + 1))] == [2]
    s = history.check_summaries(["a"])
    assert s["a"].latest is None and s["a"].runs_total == 3 and s["a"].running == 1


def test_entry_state_upsert_replaces(history: History, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history_module, "BATCH_SIZE", 3)  # exercise batching and paging
    first = history.start_run(check_id="c", check_name="c", trigger="cli")
    history.finish_run(result_for(first, check_id="c", findings=[]), iter([
        EntryRecord(f"f{i:02d}", i, {"sha256": "00" * 32}, "size_only", T0) for i in range(8)
    ]))
    second = history.start_run(check_id="c", check_name="c", trigger="cli")
    history.finish_run(result_for(second, check_id="c", findings=[]), iter([
        EntryRecord("f01", 100, {"sha256": "11" * 32, "md5": "22" * 16}, "downloaded", T0 + 10),
        EntryRecord("f01", 101, {"sha256": "33" * 32}, "downloaded", T0 + 11),  # same batch: the last one wins
        EntryRecord("f99", 9, {"sha256": "44" * 32}, "stored_checksum", T0 + 12),
    ]))
    states = {e.path: e for e in history.entry_states("c")}
    assert sorted(states) == [f"f{i:02d}" for i in range(8)] + ["f99"]
    assert (states["f01"].size, dict(states["f01"].digests), states["f01"].tier) == (101, {"sha256": "33" * 32},
                                                                                     "downloaded")
    assert states["f01"].verified_at == T0 + 11
    assert (states["f02"].size, states["f02"].tier) == (2, "size_only")
    with history.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT path, run_id FROM entry_state"))
        by_run: dict[str, str] = {path: run for path, run in rows}
    assert by_run["f01"] == second and by_run["f02"] == first
    assert list(history.entry_states("other")) == []


def test_slot_taken(history: History) -> None:
    slot = datetime(2024, 5, 1, 2, 0, tzinfo=UTC)
    history.start_run(check_id="daily", check_name="d", trigger="schedule", scheduled_for=slot)
    with pytest.raises(SlotTaken, match="daily"):
        history.start_run(check_id="daily", check_name="d", trigger="schedule", scheduled_for=slot.timestamp())
    history.start_run(check_id="weekly", check_name="w", trigger="schedule", scheduled_for=slot)
    for _ in range(2):  # runs without a slot never collide
        history.start_run(check_id="daily", check_name="d", trigger="cli")
    assert len(history.runs("daily")) == 3


def test_mark_interrupted(history: History, clock: FakeClock) -> None:
    run_id = history.start_run(check_id="c", check_name="c", trigger="cli")
    clock.advance(5)
    assert history.mark_interrupted(run_id, "daemon shutting down") is True
    run = history.get_run(run_id)
    assert run is not None
    assert (run.state, run.outcome, run.error) == ("interrupted", "error", "daemon shutting down")
    assert run.finished_at == to_datetime(T0 + 5) and run.duration_seconds == 5.0
    assert history.mark_interrupted(run_id, "again") is False
    with pytest.raises(RunNotRunning):
        history.finish_run(result_for(run_id, check_id="c", outcome=Outcome.PASSED, findings=[]))
    with pytest.raises(UnknownRun):
        history.finish_run(result_for("f" * 32, check_id="c"))

    done = history.start_run(check_id="c", check_name="c", trigger="cli")
    history.finish_run(result_for(done, check_id="c", outcome=Outcome.PASSED, findings=[]))
    assert history.mark_interrupted(done, "late") is False
    finished = history.get_run(done)
    assert finished is not None and (finished.state, finished.outcome) == ("finished", "passed")


def test_reap_dead_runs(url: str, clock: FakeClock) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead_pid = child.pid
    stores = {name: History.open(url, clock=clock, host=host, pid=pid) for name, host, pid in [
        ("dead", "host-a", dead_pid), ("live", "host-a", os.getpid()), ("other_host", "host-b", dead_pid)]}
    # A run with our own pid that this process did not start: left by an earlier process that had our
    # pid (a restarted container).  Started from a child process that claims our pid.
    code = (f"from reversib.history import History\n"
            f"h = History({url!r}, host='host-a', pid={os.getpid()})\n"
            f"print(h.start_run(check_id='stale_own_pid', check_name='s', trigger='cli'))\n"
            f"h.close()\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    try:
        runs = {name: h.start_run(check_id=name, check_name=name, trigger="cli") for name, h in stores.items()}
        runs["stale_own_pid"] = out.stdout.strip()
        reaper = History(url, clock=clock, host="host-a")
        try:
            assert sorted(reaper.reap_dead_runs()) == sorted([runs["dead"], runs["stale_own_pid"]])
            assert reaper.reap_dead_runs() == []
            dead = reaper.get_run(runs["dead"])
            assert dead is not None
            assert (dead.state, dead.outcome) == ("interrupted", "error")
            assert dead.error == f"process {dead_pid} on host-a ended without finishing the run"
            stale = reaper.get_run(runs["stale_own_pid"])
            assert stale is not None and stale.state == "interrupted"
            for name in ("live", "other_host"):
                row = reaper.get_run(runs[name])
                assert row is not None and (row.state, row.outcome) == ("running", None)
        finally:
            reaper.close()
    finally:
        for h in stores.values():
            h.close()


def test_a_run_left_running_is_never_reported_passed(history: History) -> None:
    run_id = history.start_run(check_id="c", check_name="c", trigger="cli")
    latest = history.latest_runs()
    assert [(r.state, r.outcome, r.passed) for r in latest] == [("running", None, False)]
    assert latest[0].to_dict()["outcome"] is None
    assert history.last_success("c") is None
    with pytest.raises(ValueError, match="running"):
        history.finish_run(result_for(run_id, state=RunState.RUNNING, outcome=Outcome.PASSED, check_id="c"))
    # An interrupted result claiming a pass is stored as an error.
    history.finish_run(result_for(run_id, state=RunState.INTERRUPTED, outcome=Outcome.PASSED, check_id="c",
                                  findings=[]))
    run = history.get_run(run_id)
    assert run is not None and (run.state, run.outcome, run.passed) == ("interrupted", "error", False)
    assert history.last_success("c") is None


def test_findings_are_deleted_with_their_run(history: History) -> None:
    run_id = history.start_run(check_id="c", check_name="c", trigger="cli")
    history.finish_run(result_for(run_id, check_id="c"))
    with history.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM runs WHERE id = :id"), {"id": run_id})
    assert history.findings(run_id) == []


# ------------------------------------------------------------------------------------ digests, text


@pytest.mark.service
def test_summary_digest_is_the_same_on_both_backends(tmp_path: Path, pg_database: str) -> None:
    digests = []
    for url in (f"sqlite:///{tmp_path}/h.db", pg_database):
        clock = FakeClock()
        with History.open(url, clock=clock, host="h", pid=42) as h:
            run_id = h.start_run(check_id="daily", check_name="Daily export", trigger="schedule",
                                 scheduled_for=T0 - 0.25, labels={"team": "data"}, run_id="a" * 32)
            clock.advance(2.5)
            digest = h.finish_run(result_for(run_id))
            run = h.get_run(run_id)
            assert run is not None
            assert compute_summary_digest(run, h.findings(run_id)) == digest
            digests.append(digest)
    assert digests[0] == digests[1]

    with History.open(f"sqlite:///{tmp_path}/other.db", clock=FakeClock(), host="h", pid=42) as h:
        run_id = h.start_run(check_id="daily", check_name="Daily export", trigger="schedule",
                             scheduled_for=T0 - 0.25, labels={"team": "data"}, run_id="a" * 32)
        changed = result_for(run_id)
        changed.findings[0] = Finding(FindingKind.MISSING, "b/missing.csv", expected="13 bytes")
        assert h.finish_run(changed) != digests[0]


def test_storable() -> None:
    assert storable("plain/ascii.txt") == "plain/ascii.txt"
    assert storable("caf\u00e9/\u65e5\u672c.txt") == "caf\u00e9/\u65e5\u672c.txt"
    assert storable("bad\udcff\udcfe.bin") == "bad\\xff\\xfe.bin"  # surrogateescape of undecodable bytes
    assert storable("lone\ud800") == "lone\\ud800"
    assert storable("nul\x00byte") == "nul\\x00byte"
    assert storable("\udcc3\udca9") == "\u00e9"  # escaped bytes that form UTF-8 decode as UTF-8


def test_surrogate_and_nul_paths_are_stored(history: History) -> None:
    nasty = ["bad\udcff.bin", "lone\ud800.txt", "nul\x00name", "caf\u00e9.txt"]
    run_id = history.start_run(check_id="c", check_name="c\udcff", trigger="cli", source="file:///x/\udcff")
    result = result_for(run_id, check_id="c", findings=[
        Finding(FindingKind.UNSAFE_PATH, p, actual=p, detail=f"name {p}") for p in nasty])
    result.error = "could not read \udcff"
    history.finish_run(result, [EntryRecord(p, 1, {"sha256": "00" * 32}, "downloaded", T0) for p in nasty])
    stored = history.findings(run_id)
    assert [f.path for f in stored] == [storable(p) for p in nasty]
    assert [f.actual for f in stored] == [storable(p) for p in nasty]
    assert sorted(e.path for e in history.entry_states("c")) == sorted(storable(p) for p in nasty)
    run = history.get_run(run_id)
    assert run is not None and run.error == "could not read \\xff" and run.check_name == "c\\xff"


def test_sqlite_timestamp_encoding_matches_sqlalchemy() -> None:
    values = [0.0, 1.5, 5e-07, 1.5e-06, 86399.9999996, 1e9 + 0.9999996, T0, 1_700_000_000.1234565, 4_102_444_800.5]
    expected = [datetime.fromtimestamp(v, UTC).isoformat(" ", "microseconds")[:26] for v in values]
    assert history_module._sqlite_timestamps(values) == expected


# ------------------------------------------------------------------------------------------ secrets


def test_password_is_masked_in_describe_and_errors() -> None:
    secret = "s3cr3t-Pa55"
    h = History(f"postgresql+psycopg://reversib:{secret}@127.0.0.1:1/nothing")
    try:
        assert secret not in h.describe() and "***" in h.describe()
        for call in (h.ensure_schema, h.latest_runs, h.check_ids):
            with pytest.raises(HistoryError) as info:
                call()
            text = "".join(traceback.format_exception(info.value))
            assert secret not in text and secret not in repr(info.value)
            assert "127.0.0.1:1" in str(info.value)
    finally:
        h.close()
    with pytest.raises(HistoryError) as info:
        History.open(f"postgresql+psycopg://reversib:{secret}@127.0.0.1:1/nothing")
    assert secret not in "".join(traceback.format_exception(info.value))
    with pytest.raises(HistoryError, match="unsupported") as info:
        History(f"mysql://reversib:{secret}@127.0.0.1/x")
    assert secret not in str(info.value)


def test_plain_postgresql_url_means_psycopg() -> None:
    h = History("postgresql://reversib:pw@127.0.0.1:1/x")
    try:
        assert h.describe() == "postgresql+psycopg://reversib:***@127.0.0.1:1/x"
    finally:
        h.close()


def test_locked_sqlite_steps_are_retried_other_errors_are_not() -> None:
    import sqlite3

    from reversib.history import _retry_locked

    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "done"

    assert _retry_locked(flaky) == "done" and len(calls) == 3

    def broken() -> None:
        raise sqlite3.OperationalError("no such table: x")

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        _retry_locked(broken)

    def always_locked() -> None:
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _retry_locked(always_locked, seconds=0.05)

    # Inside History._write the driver's error arrives as a HistoryError naming the database.
    guarded: list[int] = []

    def locked_in_a_transaction() -> str:
        guarded.append(1)
        if len(guarded) < 2:
            raise HistoryError("history database sqlite:///h.db: database is locked")
        return "done"

    assert _retry_locked(locked_in_a_transaction) == "done" and len(guarded) == 2
    with pytest.raises(HistoryError, match="no such table"):
        _retry_locked(lambda: (_ for _ in ()).throw(HistoryError("history database x: no such table: y")))
