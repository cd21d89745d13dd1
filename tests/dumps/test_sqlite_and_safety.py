"""SQLite database files (checked on a private read-only copy) and the plain-SQL scanner's rules."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from reversib.dumps.safety import filter_lines, scan

from .conftest import kinds, run_dumps


def make_sqlite(path: Path, rows: int = 500) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT)")
    conn.executemany("INSERT INTO items VALUES (?, ?)", [(i, "x" * 200) for i in range(rows)])
    conn.commit()
    conn.close()
    return path


def test_good_sqlite_file_passes_and_is_never_written(tmp_path: Path) -> None:
    db = make_sqlite(tmp_path / "src.sqlite")
    code, doc = run_dumps(tmp_path, {"app.sqlite": db}, [{"path": "*.sqlite", "expect_tables": ["items"],
                                                          "row_counts": {"items": 500},
                                                          "assertions": ["SELECT count(*) > 10 FROM items"]}])
    assert (code, kinds(doc)) == (0, []), doc["runs"][0]["findings"]
    exported = tmp_path / "export" / "app.sqlite"
    assert exported.read_bytes() == db.read_bytes()
    assert not list((tmp_path / "export").glob("app.sqlite-*"))  # no journal or WAL beside the provider's file


def test_sqlite_expectations_fail(tmp_path: Path) -> None:
    db = make_sqlite(tmp_path / "src.sqlite")
    code, doc = run_dumps(tmp_path, {"app.sqlite": db}, [{"path": "app.sqlite", "expect_tables": ["orders"],
                                                          "row_counts": {"items": ">= 501"},
                                                          "assertions": ["SELECT 0"]}])
    assert code == 1
    assert kinds(doc) == ["assertion_failed", "row_count_mismatch", "table_missing"]


def test_corrupt_sqlite_file_is_unreadable(tmp_path: Path) -> None:
    data = bytearray(make_sqlite(tmp_path / "src.sqlite", 3000).read_bytes())
    for off in range(4096 * 3, len(data) - 4096, 4096):  # scribble over b-tree page headers
        data[off:off + 8] = b"\xff" * 8
    code, doc = run_dumps(tmp_path, {"app.sqlite": bytes(data)}, [{"path": "app.sqlite", "kind": "sqlite"}])
    assert code == 1
    assert kinds(doc) == ["dump_unreadable"]


def test_no_dump_matching_the_pattern_is_missing(tmp_path: Path) -> None:
    code, doc = run_dumps(tmp_path, {"a.txt": b"x"}, [{"path": "*.dump"}])
    assert code == 1 and kinds(doc) == ["missing"]


@pytest.mark.parametrize(("text", "refused"), [
    ("SELECT '\\! not a command';", False),
    ("SELECT $body$ \\! in a dollar quote $body$;", False),
    ("/* \\! in a comment */ SELECT 1;", False),
    ("-- \\! in a line comment", False),
    ("COPY t (a) FROM stdin;\n\\! data line, not a command\n\\.\n", False),
    ("COPY t (a) FROM stdin;\nx\n\\.\n\\! after the data block", True),
    ("SELECT E'it\\'s'; \\! x", True),
    ("SELECT 'it''s \\! still a literal';", False),
    ("SELECT 1 \\g /tmp/out", True),
    ("copy t to '/tmp/file';", True),
    ("DROP DATABASE postgres;", True),
    ("\\restrict abc123\nSELECT 1;\n\\unrestrict abc123\n", False),
    ("\\restrict abc; \\! x\n", True),
])
def test_postgres_scanner(text: str, refused: bool) -> None:
    assert (scan([ln.encode() + b"\n" for ln in text.split("\n")], "postgres").refusal is not None) is refused


@pytest.mark.parametrize(("text", "refused"), [
    ("INSERT INTO t VALUES ('a\\'b \\! c');", False),
    ("/*!40101 SET NAMES utf8mb4 */;", False),
    ("DELIMITER ;;\nCREATE TRIGGER x BEFORE INSERT ON t FOR EACH ROW SET NEW.a = 1 ;;\nDELIMITER ;", False),
    ("system touch /tmp/x", True),
    ("\\! touch /tmp/x", True),
    ("USE `other`;", True),
    ("CREATE DATABASE IF NOT EXISTS x;", True),
    ("SELECT 1 INTO OUTFILE '/tmp/x';", True),
    ("source /etc/passwd", True),
])
def test_mysql_scanner(text: str, refused: bool) -> None:
    assert (scan([ln.encode() + b"\n" for ln in text.split("\n")], "mysql").refusal is not None) is refused


def test_filter_drops_ownership_and_privileges_only() -> None:
    lines = [b"CREATE TABLE t (a int);\n", b"ALTER TABLE t OWNER TO someone;\n", b"GRANT ALL ON t TO x;\n",
             b"COPY t (a) FROM stdin;\n", b"GRANT in data\n", b"\\.\n", b"SELECT 1;\n"]
    assert list(filter_lines(lines, "postgres")) == [lines[0], *lines[3:]]


def test_a_long_scan_obeys_cancellation_and_blank_lines_stay_cheap(tmp_path: Path) -> None:
    """A compressed dump of millions of blank lines: the scan stops when the run is cancelled (SIGTERM)."""
    import gzip
    import time

    from reversib.dumps.postgres import plain_structure
    from reversib.sources.base import Cancelled, CancelToken
    from reversib.sources.local import LocalSource

    (tmp_path / "a.sql.gz").write_bytes(gzip.compress(b"\n" * 3_000_000))
    t0 = time.monotonic()
    st = plain_structure(LocalSource(tmp_path), "a.sql.gz", "gzip", "postgres", CancelToken())
    assert st.notes and time.monotonic() - t0 < 20  # no header: a warning, not a failure
    token = CancelToken()
    token.cancel("signal SIGTERM")
    with pytest.raises(Cancelled):
        plain_structure(LocalSource(tmp_path), "a.sql.gz", "gzip", "postgres", token)


@pytest.mark.parametrize(("message", "kind"), [
    ("ERROR 1045 (28000): Access denied for user 'r'@'127.0.0.1' (using password: NO)", "dump_unverifiable"),
    ("psql: error: connection to server at \"127.0.0.1\", port 5432 failed: server closed the connection",
     "dump_unverifiable"),
    ("ERROR:  canceling statement due to statement timeout", "dump_unverifiable"),
    ("ERROR:  relation \"t\" does not exist", "table_missing"),
    ("ERROR:  invalid input syntax for type integer", "row_count_mismatch"),
])
def test_a_count_stopped_by_the_connection_is_could_not_verify(message: str, kind: str) -> None:
    """A row count that failed for a reason that says nothing of the data never accuses the dump."""
    from types import SimpleNamespace

    from reversib.dumps.expectations import QueryError, check_expectations
    from reversib.model import Finding

    def count(table: str) -> int:
        raise QueryError(message, missing_table="does not exist" in message)

    findings: list[Finding] = []
    check_expectations(SimpleNamespace(row_counts={"t": 1}, assertions=[]), "a.sql", findings, count_rows=count,
                       assertion=lambda sql: (True, "t"), dialect=None)
    assert [f.kind.value for f in findings] == [kind]
