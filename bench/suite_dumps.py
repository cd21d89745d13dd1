#!/usr/bin/env python3
"""Dump restore benchmark (issue 5): a `pg_dump -Fc` archive of a 1,000,000-row table restored by
`reversib verify-now --restore now` (start-up, verification, structural walk alongside the restore into
its scratch database, a row count, the drop) vs `pg_restore` by hand into an empty database (the
anchor: `CREATE DATABASE` + `pg_restore`, same role and flags; the drop afterwards is not timed).

    .venv/bin/python bench/run.py --suite dumps [--repeat 5] [--wait-idle 5]
    .venv/bin/python bench/run.py --suite dumps --smoke          # 10,000 rows, repeat 1 (CI)
    .venv/bin/python bench/suite_dumps.py [--repeat 5] [--smoke]          # the same, standalone

Rows: the anchor; reversib with the restore; reversib with `--restore never` (start-up, verification
and structural level only: the fixed cost that does not depend on restoring); importing pydantic and
SQLAlchemy and nothing else (what reversib's libraries cost any program before it does anything).
Target (case `restore-1m`): reversib with the restore <= 1.15x the anchor.  Case `restore-5m` (5M rows)
shows how the ratio and the extra seconds change when the restore outweighs the start-up.  Needs
PostgreSQL on 127.0.0.1:5432 (trust, user postgres) and its client tools; without them the suite is
skipped with a note (a failure under CI=true).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
HOST, PORT = os.environ.get("REVERSIB_BENCH_PGHOST", "127.0.0.1"), os.environ.get("REVERSIB_BENCH_PGPORT", "5432")
PG = ["-h", HOST, "-p", PORT]
ROLE = "reversib_restore_bench"
URL_ENV = "REVERSIB_BENCH_RESTORE_URL"
TARGET = 1.15
TOOLS = ("psql", "pg_dump", "pg_restore")


class Unavailable(Exception):
    """PostgreSQL or its client tools are not here."""


def psql(sql: str, db: str = "postgres", user: str = "postgres") -> str:
    done = subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", *PG, "-U", user, "-d", db, "-c", sql],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"psql: {done.stderr.strip()}")
    return done.stdout


def prepare(work: Path, rows: int, log: Any = print) -> tuple[Path, int]:
    """A source database of `rows` rows, its custom dump in `work/export` with a SHA256SUMS manifest,
    and the check files; returns (reversib.yaml, dump size)."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise Unavailable(f"not installed: {', '.join(missing)} (apt-get install postgresql-client)")
    try:
        psql("SELECT 1")
    except RuntimeError as exc:
        raise Unavailable(f"PostgreSQL not reachable at {HOST}:{PORT}: {exc}") from None
    if not psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}'"):
        psql(f"CREATE ROLE {ROLE} LOGIN CREATEDB CREATEROLE")
    psql(f"ALTER ROLE {ROLE} CREATEROLE")  # each restore runs as a per-run role it creates (docs/dumps.md)
    src = f"reversib_bench_src_{uuid.uuid4().hex[:8]}"
    psql(f"CREATE DATABASE {src}")
    export = work / "export"
    export.mkdir(parents=True)
    try:
        psql("CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz, kind text, payload text);"
             "INSERT INTO events SELECT g, now() - g * interval '1 second', 'k' || (g % 17), md5(g::text) "
             f"FROM generate_series(1, {rows}) g;", db=src)
        subprocess.run(["pg_dump", *PG, "-U", "postgres", "-Fc", "-f", str(export / "db.dump"), src], check=True)
    finally:
        psql(f"DROP DATABASE IF EXISTS {src}")
    subprocess.run(["sh", "-c", "sha256sum db.dump > SHA256SUMS"], cwd=export, check=True)
    checks = work / "checks"
    checks.mkdir()
    (checks / "db.yaml").write_text(json.dumps({  # JSON is YAML
        "version": 1, "id": "db", "name": "db", "source": {"url": "../export"}, "manifest": {"path": "SHA256SUMS"},
        "dumps": [{"path": "db.dump", "row_counts": {"events": rows}, "restore": {"target_url_env": URL_ENV}}]}))
    cfg = work / "reversib.yaml"
    cfg.write_text("version: 1\nchecks_dir: checks\n")
    size = (export / "db.dump").stat().st_size
    log(f"dumps: {rows} rows, custom dump of {size / 1e6:.1f} MB in {export}")
    return cfg, size


def _reversib_ok(restored: bool, rows: int) -> Any:
    def check(s: Any) -> str | None:
        if s.returncode != 0:
            return f"exit code {s.returncode}"
        run = json.loads(s.stdout)["runs"][0]
        got = [f["kind"] for f in run["findings"] if f["severity"] != "info" or f["kind"] == "restored"]
        want = ["restored"] if restored else []
        if got != want or (restored and f"{rows} rows" not in run["findings"][0]["actual"]):
            return f"findings {run['findings']}"
        return None

    return check


def install(h: ModuleType) -> None:
    """Register suite `dumps` into the harness module `h` (bench/run.py)."""

    cases = [h.Case("restore-1m", "a 1,000,000-row table (smoke: 10,000), custom format; wall s; "
                                  "anchor CREATE DATABASE + pg_restore; the target"),
             h.Case("restore-5m", "the same with 5,000,000 rows (smoke: 50,000): how reversib's ratio and extra "
                                  "seconds change when the restore outweighs the start-up (no target)")]

    @h.register("dumps", "database dumps: `verify-now` restoring a pg_dump -Fc of 1M rows vs pg_restore by hand "
                         "into an empty database (anchor)", cases)
    def suite_dumps(ctx: Any, selected: list[str]) -> Any:
        res = h.SuiteResult()
        if ctx.tools.reversib is None:
            raise h.BenchError("the dumps suite needs reversib")
        for case in selected:
            rows = {"restore-1m": 1_000_000, "restore-5m": 5_000_000}[case] // (100 if ctx.smoke else 1)
            work = ctx.scratch / "dumps" / case
            try:
                cfg, size = prepare(work, rows, h.log)
            except Unavailable as exc:
                if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
                    raise h.BenchError(f"dumps suite: {exc} (CI=true: PostgreSQL must be running)") from None
                res.notes.append(f"dumps suite skipped: {exc}")
                return res
            _case(h, ctx, res, case, work, cfg, size, rows)
            shutil.rmtree(work / "export", ignore_errors=True)
        return res


def _case(h: ModuleType, ctx: Any, res: Any, case: str, work: Path, cfg: Path, size: int, rows: int) -> None:
    ctx.env[URL_ENV] = f"postgresql://{ROLE}@{HOST}:{PORT}/"
    history = work / "history.db"
    rev = [ctx.tools.reversib, "verify-now", "db", "--config", str(cfg), "--history", f"sqlite:///{history}",
           "--json", "--no-progress"]
    warm = subprocess.run([*rev, "--restore", "now"], env=ctx.env, capture_output=True, text=True)
    if warm.returncode != 0:  # history created, migrations run, dump in the page cache: steady state
        raise h.BenchError(f"reversib warm-up run failed: {warm.stdout[-800:]} {warm.stderr[-800:]}")
    db = f"reversib_bench_hand_{uuid.uuid4().hex[:8]}"
    anchor_sql = f"CREATE DATABASE {db} TEMPLATE template0"
    anchor_cmd = ["sh", "-c", f"psql -X -q {' '.join(PG)} -U {ROLE} -d postgres -c '{anchor_sql}' && "
                              f"pg_restore {' '.join(PG)} -U {ROLE} --no-owner --no-privileges --exit-on-error "
                              f"-d {db} {work / 'export' / 'db.dump'}"]

    def anchor_ok(s: Any) -> str | None:
        psql(f"DROP DATABASE IF EXISTS {db}", user=ROLE)  # not timed
        return None if s.returncode == 0 else f"exit code {s.returncode}"

    tools = [h.Tool("pg_restore-by-hand", lambda d: anchor_cmd, check=anchor_ok),
             h.Tool("reversib-restore", lambda d: [*rev, "--restore", "now"], check=_reversib_ok(True, rows)),
             h.Tool("reversib-structural-only", lambda d: [*rev, "--restore", "never"],
                    check=_reversib_ok(False, rows)),
             # what a program built on the libraries reversib uses pays before any work
             h.Tool("import pydantic+sqlalchemy",
                    lambda d: [ctx.tools.python, "-c", f"import gc; gc.disable(); import {h.LIBRARIES}"])]
    samples = h.measure(ctx, tools)
    res.datasets.append(f"dumps/{case}: {rows} rows, custom dump {size / 1e6:.1f} MB ({work / 'export'})")
    res.rows += h.make_rows("dumps", case, tools, samples, "pg_restore-by-hand", "MB/s", None, size,
                            h._commands(tools))
    anchor = h.find_row(res.rows, case, "pg_restore-by-hand")
    full = h.find_row(res.rows, case, "reversib-restore")
    fixed = h.find_row(res.rows, case, "reversib-structural-only")
    libs = h.find_row(res.rows, case, "import pydantic+sqlalchemy")
    ratio = full.wall_s / anchor.wall_s
    if case == "restore-1m":
        status = "PASS" if ratio <= TARGET else "FAIL"
        full.targets.append(f"vs-pg_restore:{status}")
        res.targets.append(h.Target(f"{case}/vs-pg_restore", "dumps", case, "reversib-restore",
                                    f"verify-now with the restore <= {TARGET}x pg_restore by hand", status,
                                    f"{full.wall_s:.3f} s vs {anchor.wall_s:.3f} s = {ratio:.2f}x"))
    level = (full.wall_s - fixed.wall_s) / anchor.wall_s
    res.notes.append(f"dumps/{case}: reversib-restore - pg_restore-by-hand = {full.wall_s - anchor.wall_s:.3f} s "
                     f"({ratio:.2f}x); the restore level alone (reversib-restore minus reversib-structural-only) = "
                     f"{full.wall_s - fixed.wall_s:.3f} s = {level:.2f}x pg_restore by hand; the rest "
                     f"({fixed.wall_s:.3f} s) is start-up, verification and the structural level; importing pydantic "
                     f"and SQLAlchemy alone takes {libs.wall_s:.3f} s = {libs.wall_s / anchor.wall_s:.2f}x the anchor "
                     f"(the target leaves {(TARGET - 1) * anchor.wall_s:.3f} s)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/suite_dumps.py", description="the dumps suite of bench/run.py, alone")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--wait-idle", type=float, default=5)
    args = p.parse_args(argv)
    sys.path.insert(0, str(BENCH_DIR))
    import run as harness

    extra = ["--smoke"] if args.smoke else ["--repeat", str(args.repeat), "--wait-idle", str(args.wait_idle)]
    return int(harness.main(["--suite", "dumps", *extra]))


if __name__ == "__main__":
    sys.exit(main())
