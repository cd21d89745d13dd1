"""PostgreSQL dumps made by the real pg_dump, checked and restored through `reversib verify-now` into the
real server, as a non-superuser role."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from reversib.dumps.pgarchive import read_archive

from .conftest import finding, kinds, need_tool, pg_dump, run_dumps, run_roles, scratch_dbs

pytestmark = pytest.mark.service

EXPECT = {"expect_tables": ["customers", "public.orders"],
          "row_counts": {"customers": 20000, "public.orders": ">= 3000"},
          "assertions": ["SELECT total() > 0", "SELECT count(*) = 1 FROM customers WHERE note = E'tab\\there' "
                         "AND id = 7"]}


def restore_block(env: str, **extra: object) -> dict[str, object]:
    return {"target_url_env": env, **extra}


def plain(sample_db: str, dump_dir: Path) -> Path:
    out = dump_dir / "plain.sql"
    if not out.exists():
        pg_dump(sample_db, out)
    return out


def custom(sample_db: str, dump_dir: Path) -> Path:
    out = dump_dir / "custom.dump"
    if not out.exists():
        pg_dump(sample_db, out, "-Fc")
    return out


def tar(sample_db: str, dump_dir: Path) -> Path:
    out = dump_dir / "dump.tar"
    if not out.exists():
        pg_dump(sample_db, out, "-Ft")
    return out


@pytest.mark.parametrize("fmt", ["custom", "tar", "plain", "plain.gz", "plain.zst"])
def test_good_dump_passes_both_levels(fmt: str, tmp_path: Path, sample_db: str, dump_dir: Path, restore_env: str,
                                      pg_admin: sa.Engine) -> None:
    if fmt == "custom":
        data: Path | bytes = custom(sample_db, dump_dir)
        name = "db.dump"
    elif fmt == "tar":
        data, name = tar(sample_db, dump_dir), "db.tar"
    elif fmt == "plain":
        data, name = plain(sample_db, dump_dir), "db.sql"
    elif fmt == "plain.gz":
        data, name = gzip.compress(plain(sample_db, dump_dir).read_bytes()), "db.sql.gz"
    else:
        zstd = need_tool("zstd")
        data = subprocess.run([zstd, "-q", "-c", str(plain(sample_db, dump_dir))], check=True,
                              capture_output=True).stdout
        name = "db.sql.zst"
    code, doc = run_dumps(tmp_path, {name: data}, [{"path": "*.sql*" if "plain" in fmt else "db.*", **EXPECT,
                                                    "restore": restore_block(restore_env)}])
    run = doc["runs"][0]
    assert (code, run["outcome"]) == (0, "passed"), run["findings"]
    assert kinds(doc) == ["restored"]
    restored = finding(doc, "restored")
    assert restored["path"] == name and "2 row counts, 23000 rows" in restored["actual"]
    assert run["restore_seconds"] > 0 and run["restore_bytes"] > 100_000
    assert scratch_dbs(pg_admin) == [] and run_roles(pg_admin) == []


@pytest.mark.parametrize("fmt", ["custom", "tar", "plain", "plain.gz"])
def test_truncated_dump(fmt: str, tmp_path: Path, sample_db: str, dump_dir: Path) -> None:
    if fmt == "custom":
        data = custom(sample_db, dump_dir).read_bytes()
    elif fmt == "tar":
        data = tar(sample_db, dump_dir).read_bytes()
    else:
        data = plain(sample_db, dump_dir).read_bytes()
        if fmt == "plain.gz":
            data = gzip.compress(data)
    code, doc = run_dumps(tmp_path, {"db.x": data[: len(data) * 2 // 3]}, [{"path": "db.x"}])
    assert code == 1
    assert kinds(doc) == ["dump_truncated"], doc["runs"][0]["findings"]


def test_plain_dump_without_comments_is_a_warning_only(tmp_path: Path, sample_db: str, dump_dir: Path) -> None:
    text = b"".join(line for line in io.BytesIO(plain(sample_db, dump_dir).read_bytes()) if not line.startswith(b"--"))
    code, doc = run_dumps(tmp_path, {"db.sql": text}, [{"path": "db.sql", "kind": "postgres-plain"}])
    assert code == 0
    assert kinds(doc, "warning") == ["dump_truncated"]


def test_compressed_dump_with_a_flipped_byte_is_unreadable(tmp_path: Path, sample_db: str, dump_dir: Path) -> None:
    data = bytearray(gzip.compress(plain(sample_db, dump_dir).read_bytes()))
    data[len(data) // 2] ^= 0x55
    code, doc = run_dumps(tmp_path, {"db.sql.gz": bytes(data)}, [{"path": "db.sql.gz"}])
    assert code == 1
    assert kinds(doc) == ["dump_unreadable"], doc["runs"][0]["findings"]


def test_custom_dump_flipped_byte_in_data_passes_structure_then_fails_restore(
        tmp_path: Path, sample_db: str, dump_dir: Path, restore_env: str, pg_admin: sa.Engine) -> None:
    data = bytearray(custom(sample_db, dump_dir).read_bytes())
    arch = read_archive(io.BytesIO(bytes(data)).read)
    offset, length = max(arch.chunks, key=lambda c: c[1])
    data[offset + length // 2] ^= 0xFF
    dumps = [{"path": "db.dump", **EXPECT, "restore": restore_block(restore_env)}]
    code, doc = run_dumps(tmp_path, {"db.dump": bytes(data)}, [{"path": "db.dump", **EXPECT}])
    assert (code, kinds(doc)) == (0, []), "the structural level alone cannot see it"
    code, doc = run_dumps(tmp_path, {"db.dump": bytes(data)}, dumps)
    assert code == 1
    got = kinds(doc)
    assert got in (["restore_failed"], ["row_count_mismatch"]), doc["runs"][0]["findings"]
    if got == ["restore_failed"]:
        assert "pg_restore" in finding(doc, "restore_failed")["actual"]
    assert scratch_dbs(pg_admin) == [] and run_roles(pg_admin) == [], "the per-run role is gone after a failure"


def test_dump_of_the_wrong_database(tmp_path: Path, other_db: str, dump_dir: Path) -> None:
    out = pg_dump(other_db, dump_dir / "other.dump", "-Fc")
    code, doc = run_dumps(tmp_path, {"db.dump": out}, [{"path": "db.dump", "expect_tables": ["customers", "orders"]}])
    assert code == 1
    assert kinds(doc) == ["table_missing", "table_missing"]
    assert {f["expected"] for r in doc["runs"] for f in r["findings"]} == {"table customers", "table orders"}


def test_too_few_rows_and_failing_assertion(tmp_path: Path, sample_db: str, dump_dir: Path, restore_env: str) -> None:
    dumps = [{"path": "db.dump", "row_counts": {"customers": 20001, "orders": ">= 3001"},
              "assertions": ["SELECT total() < 0", "SELECT 1/0 = 1"], "restore": restore_block(restore_env)}]
    code, doc = run_dumps(tmp_path, {"db.dump": custom(sample_db, dump_dir)}, dumps)
    assert code == 1
    assert kinds(doc) == ["assertion_failed", "assertion_failed", "restored", "row_count_mismatch",
                          "row_count_mismatch"]
    actual = sorted(f["actual"] for r in doc["runs"] for f in r["findings"] if f["kind"] == "row_count_mismatch")
    assert actual == ["20000 rows", "3000 rows"]


def test_assertions_are_read_only(tmp_path: Path, sample_db: str, dump_dir: Path, restore_env: str) -> None:
    dumps = [{"path": "db.dump", "row_counts": {"customers": 20000},
              "assertions": ["DELETE FROM customers RETURNING true", "COMMIT; DELETE FROM customers; SELECT true"],
              "restore": restore_block(restore_env)}]
    code, doc = run_dumps(tmp_path, {"db.dump": custom(sample_db, dump_dir)}, dumps)
    failed = [f["actual"] for r in doc["runs"] for f in r["findings"] if f["kind"] == "assertion_failed"]
    assert len(failed) == 2 and all("read-only" in a for a in failed), failed
    assert "row_count_mismatch" not in kinds(doc)


@pytest.mark.parametrize("line", [
    "\\! touch {marker}",
    "SELECT 1; \\! touch {marker}",
    "COPY (SELECT 1) TO PROGRAM 'touch {marker}';",
    "\\copy (select 1) to program 'touch {marker}'",
    "CREATE DATABASE x; -- {marker}",
    "\\connect postgres -- {marker}",
])
def test_hostile_plain_dump_is_refused_and_nothing_runs(line: str, tmp_path: Path, sample_db: str, dump_dir: Path,
                                                        restore_env: str, pg_admin: sa.Engine) -> None:
    marker = tmp_path / "pwned"
    good = plain(sample_db, dump_dir).read_bytes().splitlines(keepends=True)
    # first statement: a table creation that would show if anything had run before the refusal
    hostile = [*good[:30], b"CREATE TABLE ran_before (x int);\n", line.format(marker=marker).encode() + b"\n",
               *good[30:]]
    code, doc = run_dumps(tmp_path, {"db.sql": b"".join(hostile)},
                          [{"path": "db.sql", "restore": restore_block(restore_env)}])
    assert code == 1
    f = finding(doc, "dump_refused")
    assert f["actual"].startswith("line 32: ")
    assert kinds(doc) == ["dump_refused"]
    assert not marker.exists()
    assert scratch_dbs(pg_admin) == []


def test_restore_every_skips_a_recent_restore(tmp_path: Path, sample_db: str, dump_dir: Path,
                                              restore_env: str) -> None:
    dumps = [{"path": "db.dump", "row_counts": {"customers": 20000},
              "restore": restore_block(restore_env, every="7d")}]
    history = tmp_path / "every.db"
    code, doc = run_dumps(tmp_path, {"db.dump": custom(sample_db, dump_dir)}, dumps, history)
    assert (code, kinds(doc)) == (0, ["restored"])
    code, doc = run_dumps(tmp_path, {"db.dump": custom(sample_db, dump_dir)}, dumps, history)
    assert (code, kinds(doc)) == (0, [])
    assert doc["runs"][0]["restore_seconds"] is None


def test_superuser_or_database_target_is_could_not_verify(tmp_path: Path, sample_db: str, dump_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch, pg_admin: sa.Engine) -> None:
    from tests.conftest import PG_HOST, PG_PORT

    for url, text in ((f"postgresql://postgres@{PG_HOST}:{PG_PORT}/", "superuser"),
                      (f"postgresql://reversib_restore_test:s3cret@{PG_HOST}:{PG_PORT}/customers",
                       "names the database")):
        monkeypatch.setenv("RESTORE_URL_X", url)
        code, doc = run_dumps(tmp_path, {"db.dump": custom(sample_db, dump_dir)},
                              [{"path": "db.dump", "restore": {"target_url_env": "RESTORE_URL_X"}}])
        assert (code, doc["runs"][0]["outcome"]) == (2, "error")
        f = finding(doc, "dump_unverifiable")
        assert text in f["actual"] and "s3cret" not in str(doc)
    assert scratch_dbs(pg_admin) == []


CRASH_SQL = b"CREATE TABLE slow (x int);\nSELECT pg_sleep(60);\n"


def test_killed_restore_leaves_no_scratch_database_after_next_start(
        tmp_path: Path, restore_env: str, pg_admin: sa.Engine) -> None:
    # First run: a plain dump whose restore sleeps; the reversib process is killed during the restore.
    code, doc = run_dumps(tmp_path, {"db.sql": CRASH_SQL}, [{"path": "db.sql", "kind": "postgres-plain"}])
    assert code == 0  # structural only: valid (the warning: no comments)
    history = tmp_path / "crash.db"
    cfg = tmp_path / "config" / "reversib.yaml"
    (tmp_path / "checks" / "db.yaml").write_text((tmp_path / "checks" / "db.yaml").read_text().replace(
        "path: db.sql", f"path: db.sql\n  restore:\n    target_url_env: {restore_env}"))
    exe = Path(sys.executable).parent / "reversib"
    proc = subprocess.Popen([str(exe), "verify-now", "db", "--config", str(cfg), "--history", f"sqlite:///{history}",
                             "--no-progress"], env=os.environ.copy(), start_new_session=True)
    deadline = time.monotonic() + 60
    while not scratch_dbs(pg_admin):
        assert proc.poll() is None and time.monotonic() < deadline, "no scratch database appeared"
        time.sleep(0.1)
    left = scratch_dbs(pg_admin)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert scratch_dbs(pg_admin) == left  # the kill left it behind
    assert run_roles(pg_admin) == left, "and its per-run role"
    # Next start (any run restoring on this server) removes it; its own scratch database is dropped too.
    (tmp_path / "export" / "db.sql").write_bytes(b"CREATE TABLE quick (x int);\n")
    subprocess.run(["sh", "-c", "sha256sum db.sql > SHA256SUMS"], cwd=tmp_path / "export", check=True)
    proc2 = subprocess.run([str(exe), "verify-now", "db", "--config", str(cfg), "--history", f"sqlite:///{history}",
                            "--no-progress"], capture_output=True, text=True, timeout=120)
    assert proc2.returncode == 0, proc2.stdout + proc2.stderr
    assert scratch_dbs(pg_admin) == [] and run_roles(pg_admin) == []
    assert "removed the scratch database" in proc2.stderr


def test_live_run_keeps_its_scratch_database(tmp_path: Path, restore_env: str, pg_admin: sa.Engine) -> None:
    """A scratch database whose run is still running in a live process is never removed."""
    from reversib.dumps.scratch import parse_target, pg_preflight, pg_remove_dead
    from reversib.history import History
    from reversib.sources.base import CancelToken

    history = History.open(f"sqlite:///{tmp_path / 'live.db'}")
    run_id = history.start_run(check_id="x", check_name="x", trigger="cli", scheduled_for=None, labels={},
                               source="s", manifest=None)
    target = parse_target(os.environ[restore_env])
    name = f"reversib_restore_{run_id}"
    with pg_admin.connect() as conn:  # owned by the restore role, as reversib's own would be: it could drop it
        conn.exec_driver_sql(f'CREATE DATABASE "{name}" OWNER reversib_restore_test')
    try:
        assert pg_remove_dead(target, history, pg_preflight(target, CancelToken()).scratch) == []
        assert name in scratch_dbs(pg_admin)
        history.mark_interrupted(run_id, "test")
        assert pg_remove_dead(target, history, pg_preflight(target, CancelToken()).scratch) == [name]
    finally:
        with pg_admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        history.close()
    assert shutil.which("psql")


_HEADER = ("--\n-- PostgreSQL database dump\n--\nSET standard_conforming_strings = on;\nCREATE TABLE t (id int);\n"
           "INSERT INTO t VALUES (1);\n")
_FOOTER = "--\n-- PostgreSQL database dump complete\n--\n"
# Lines the scanner once read otherwise than psql does (a security review's findings): each hides `\!`.
_DESYNC = {
    "copy-in-a-quoted-name": "COPY (SELECT 1 AS \"FROM STDIN\") TO STDOUT;\n\\! {cmd}\nSELECT '\n\\.\n' AS x --'\n;\n",
    "letter-before-dollars": "SELECT 1 AS \u00e9$$;\n\\! {cmd}\nSELECT 1 AS \u00e9$$;\n",
    "standard-conforming-strings-off": "SET standard_conforming_strings = off;\nSELECT 'x\\' , '\n\\! {cmd}\n"
                                       "' AS a --'\n;\n",
    "dollar-before-e-string": "CREATE DOMAIN a$e AS text;\nSELECT a$e'\\';\n\\! {cmd}\nSELECT ' --'\n;\n",
    "nul-byte": "SELECT 1;\n\x00'\n\\! {cmd}\n\x00'\nSELECT 2;\n",
    "semicolon-in-parentheses": "SELECT (1;\nCOPY t FROM STDIN;\n\\! {cmd}\n\\.\n",
}


@pytest.mark.parametrize("case", sorted(_DESYNC))
def test_a_line_the_scanner_misreads_still_runs_nothing(case: str, tmp_path: Path, restore_env: str,
                                                        pg_admin: sa.Engine) -> None:
    """psql is restricted (`\\restrict KEY`, a key the dump cannot know) before it reads the dump: whatever
    the scanner makes of a line, no meta-command runs on this host; the dump is refused or fails to restore."""
    marker = tmp_path / "pwned"
    dump = (_HEADER + _DESYNC[case].format(cmd=f"touch {marker}") + _FOOTER).encode("utf-8")
    code, doc = run_dumps(tmp_path, {"a.sql": dump},
                          [{"path": "a.sql", "row_counts": {"t": 1}, "restore": restore_block(restore_env)}])
    assert not marker.exists()
    assert code in (1, 2) and set(kinds(doc)) & {"dump_refused", "restore_failed"}, doc
    assert scratch_dbs(pg_admin) == []


@pytest.mark.parametrize("line", ["CREATE/**/DATABASE x;", "ALTER ROLE CURRENT_USER SET work_mem = '77kB';",
                                  "ALTER ROLE CURRENT_USER PASSWORD 'attacker';"])
def test_statements_hidden_by_comments_or_aimed_at_the_role_are_refused(line: str, tmp_path: Path,
                                                                         restore_env: str) -> None:
    code, doc = run_dumps(tmp_path, {"a.sql": (_HEADER + line + "\n" + _FOOTER).encode()},
                          [{"path": "a.sql", "restore": restore_block(restore_env)}])
    assert (code, kinds(doc)) == (1, ["dump_refused"]), doc


def test_pg_dumps_own_restrict_lines_still_restore(tmp_path: Path, restore_env: str) -> None:
    """pg_dump (August 2025 and later) writes `\\restrict KEY` ... `\\unrestrict KEY`: dropped, reversib
    restricts psql itself, and the dump restores."""
    dump = ("\\restrict AbC123\n" + _HEADER + _FOOTER + "\\unrestrict AbC123\n").encode()
    code, doc = run_dumps(tmp_path, {"a.sql": dump},
                          [{"path": "a.sql", "row_counts": {"t": 1}, "restore": restore_block(restore_env)}])
    assert (code, kinds(doc)) == (0, ["restored"]), doc
