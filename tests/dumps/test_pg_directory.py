"""PostgreSQL directory-format dumps (`pg_dump -Fd`) made by the real pg_dump, checked and restored into the
real server; the restore level switch (`verify-now --restore`); the machine-readable `restored` detail."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from reversib.dumps.expectations import restore_detail

from .conftest import directory_files, finding, kinds, pg_dump, psql_admin, run_dumps, scratch_dbs
from .test_postgres import EXPECT, custom, restore_block

pytestmark = pytest.mark.service


@pytest.fixture(scope="session")
def blob_db(make_pg_database: Callable[[], str]) -> str:
    """A sample database with a large object (the directory format lists them in blobs.toc)."""
    url = make_pg_database()
    name = url.rsplit("/", 1)[1]
    psql_admin(name, "CREATE TABLE docs (id int PRIMARY KEY, body oid);"
                     "INSERT INTO docs SELECT 1, lo_from_bytea(0, convert_to(repeat('large object ', 500), 'UTF8'));"
                     "CREATE TABLE lines (n int); INSERT INTO lines SELECT generate_series(1, 5000);")
    return name


def directory(sample_db: str, dump_dir: Path, *args: str, name: str = "dir") -> Path:
    out = dump_dir / name
    if not out.exists():
        pg_dump(sample_db, out, "-Fd", *args)
    return out


def mutated(src: Path, tmp: Path) -> Path:
    """A private copy of a dump folder, to break."""
    dst = tmp / f"copy-{src.name}"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def data_file(folder: Path) -> Path:
    """The largest data file (the customers table's)."""
    return max((f for f in folder.iterdir() if f.name[0].isdigit()), key=lambda f: f.stat().st_size)


@pytest.mark.parametrize("path", ["db.dir", "db.dir/toc.dat", "*.dir"])
def test_good_directory_dump_passes_both_levels(path: str, tmp_path: Path, sample_db: str, dump_dir: Path,
                                                restore_env: str, pg_admin: sa.Engine) -> None:
    folder = directory(sample_db, dump_dir)
    assert any(f.name.endswith(".dat.gz") for f in folder.iterdir()), "pg_dump -Fd compresses with gzip"
    code, doc = run_dumps(tmp_path, directory_files(folder, "db.dir"),
                          [{"path": path, **EXPECT, "restore": restore_block(restore_env)}])
    run = doc["runs"][0]
    assert (code, run["outcome"]) == (0, "passed"), run["findings"]
    assert kinds(doc) == ["restored"], "the folder is one dump: its data files are not checked as dumps"
    restored = finding(doc, "restored")
    assert restored["path"] == "db.dir" and "2 row counts, 23000 rows" in restored["actual"]
    detail = restore_detail(restored["detail"])
    assert detail is not None and detail["format"] == "postgres-directory" and detail["rows"] == 23000
    assert detail["restore_bytes"] == sum(f.stat().st_size for f in folder.iterdir()) == run["restore_bytes"]
    assert detail["restore_seconds"] == pytest.approx(run["restore_seconds"], abs=1e-5)
    assert scratch_dbs(pg_admin) == []


def test_uncompressed_directory_dump_with_large_objects(tmp_path: Path, blob_db: str, dump_dir: Path,
                                                        restore_env: str, pg_admin: sa.Engine) -> None:
    folder = directory(blob_db, dump_dir, "-Z0", name="blobs-z0")
    assert (folder / "blobs.toc").exists() and not any(f.suffix == ".gz" for f in folder.iterdir())
    dumps = [{"path": "lo", "row_counts": {"lines": 5000, "docs": 1},
              "assertions": ["SELECT length(lo_get(body)) = 6500 FROM docs"], "restore": restore_block(restore_env)}]
    code, doc = run_dumps(tmp_path, directory_files(folder, "lo"), dumps)
    assert (code, kinds(doc)) == (0, ["restored"]), doc["runs"][0]["findings"]
    # a large-object file listed in blobs.toc and missing from the folder
    broken = mutated(directory(blob_db, dump_dir, name="blobs-gz"), tmp_path)
    blob = next(broken.glob("blob_*.dat.gz"))
    blob.unlink()
    code, doc = run_dumps(tmp_path, directory_files(broken, "lo"), dumps)
    assert code == 1
    f = finding(doc, "dump_truncated")
    assert blob.name in f["expected"] and f["actual"] == "absent from the dump folder"
    assert kinds(doc) == ["dump_truncated"]
    assert scratch_dbs(pg_admin) == []


def test_missing_data_file(tmp_path: Path, sample_db: str, dump_dir: Path, restore_env: str,
                           pg_admin: sa.Engine) -> None:
    broken = mutated(directory(sample_db, dump_dir), tmp_path)
    gone = data_file(broken)
    gone.unlink()
    code, doc = run_dumps(tmp_path, directory_files(broken, "db.dir"),
                          [{"path": "db.dir", "restore": restore_block(restore_env)}])
    assert code == 1
    assert kinds(doc) == ["dump_truncated"], doc["runs"][0]["findings"]
    f = finding(doc, "dump_truncated")
    assert f["path"] == "db.dir" and gone.name in f["expected"] and "TABLE DATA public." in f["expected"]
    assert scratch_dbs(pg_admin) == []


def test_flipped_byte_in_a_compressed_data_file_is_unreadable(tmp_path: Path, sample_db: str, dump_dir: Path,
                                                              restore_env: str, pg_admin: sa.Engine) -> None:
    broken = mutated(directory(sample_db, dump_dir), tmp_path)
    target = data_file(broken)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x55
    target.write_bytes(bytes(data))
    with pytest.raises((OSError, EOFError, gzip.BadGzipFile)):  # the real gzip agrees: it is damaged
        gzip.decompress(bytes(data))
    for dumps in ([{"path": "db.dir"}], [{"path": "db.dir", "restore": restore_block(restore_env)}]):
        code, doc = run_dumps(tmp_path, directory_files(broken, "db.dir"), dumps)
        assert code == 1
        assert kinds(doc) == ["dump_unreadable"], doc["runs"][0]["findings"]
        f = finding(doc, "dump_unreadable")
        assert target.name in f["expected"] and f["actual"].startswith("gzip: ")
    assert scratch_dbs(pg_admin) == []


def test_truncated_toc(tmp_path: Path, sample_db: str, dump_dir: Path) -> None:
    broken = mutated(directory(sample_db, dump_dir), tmp_path)
    toc = broken / "toc.dat"
    toc.write_bytes(toc.read_bytes()[: toc.stat().st_size // 2])
    code, doc = run_dumps(tmp_path, directory_files(broken, "db.dir"), [{"path": "db.dir"}])
    assert code == 1
    f = finding(doc, "dump_truncated")
    assert "the table of contents" in f["actual"]


def test_truncated_data_file(tmp_path: Path, sample_db: str, dump_dir: Path) -> None:
    broken = mutated(directory(sample_db, dump_dir), tmp_path)
    target = data_file(broken)
    target.write_bytes(target.read_bytes()[:-100])
    code, doc = run_dumps(tmp_path, directory_files(broken, "db.dir"), [{"path": "db.dir"}])
    assert code == 1
    assert kinds(doc) == ["dump_truncated"]
    assert target.name in finding(doc, "dump_truncated")["expected"]


def test_wrong_database_directory_dump(tmp_path: Path, other_db: str, dump_dir: Path, restore_env: str,
                                       pg_admin: sa.Engine) -> None:
    folder = directory(other_db, dump_dir, name="other-dir")
    code, doc = run_dumps(tmp_path, directory_files(folder, "db.dir"),
                          [{"path": "db.dir", "expect_tables": ["customers"], "restore": restore_block(restore_env)}])
    assert code == 1
    assert kinds(doc) == ["table_missing"], "no restore of the wrong database"
    assert scratch_dbs(pg_admin) == []


def test_truncated_custom_dump_with_restore_due_reports_only_the_truncation(
        tmp_path: Path, sample_db: str, dump_dir: Path, restore_env: str, pg_admin: sa.Engine) -> None:
    """The structural walk runs alongside the restore: when it fails, the restore is stopped and not reported."""
    data = custom(sample_db, dump_dir).read_bytes()
    code, doc = run_dumps(tmp_path, {"db.dump": data[: len(data) * 2 // 3]},
                          [{"path": "db.dump", "restore": restore_block(restore_env)}])
    assert code == 1
    assert kinds(doc) == ["dump_truncated"], doc["runs"][0]["findings"]
    assert doc["runs"][0]["restore_seconds"] is None
    assert scratch_dbs(pg_admin) == []


def test_restore_switch(tmp_path: Path, sample_db: str, dump_dir: Path, restore_env: str) -> None:
    """`verify-now --restore now|never` overrides restore.every for one run."""
    dumps = [{"path": "db.dump", "row_counts": {"customers": 20000},
              "restore": restore_block(restore_env, every="7d")}]
    history = tmp_path / "switch.db"
    files: dict[str, Path | bytes] = {"db.dump": custom(sample_db, dump_dir)}
    code, doc = run_dumps(tmp_path, files, dumps, history, args=("--restore", "never"))
    assert (code, kinds(doc)) == (0, []), "never: structural level only, even when a restore is due"
    code, doc = run_dumps(tmp_path, files, dumps, history)
    assert (code, kinds(doc)) == (0, ["restored"]), "due: the first restore"
    code, doc = run_dumps(tmp_path, files, dumps, history)
    assert (code, kinds(doc)) == (0, []), "due: restored less than 7 days ago"
    code, doc = run_dumps(tmp_path, files, dumps, history, args=("--restore", "now"))
    assert (code, kinds(doc)) == (0, ["restored"]), "now: whatever restore.every says"
    # the restore duration is in the history, machine-readable (the evidence's restore-duration trend)
    engine = sa.create_engine(f"sqlite:///{history}")
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT f.detail, r.started_at FROM findings f JOIN runs r ON r.id = f.run_id "
                                    "WHERE f.kind = 'restored' ORDER BY r.started_at").all()
    engine.dispose()
    assert len(rows) == 2
    for detail, _ in rows:
        parsed = json.loads(detail)
        assert set(parsed) == {"v", "format", "restore_seconds", "restore_bytes", "rows"}
        assert parsed["v"] == 1 and parsed["format"] == "postgres-custom" and parsed["rows"] == 20000
        assert isinstance(parsed["restore_seconds"], float) and parsed["restore_seconds"] > 0
    assert restore_detail(None) is None and restore_detail("restored in 1.2s") is None
