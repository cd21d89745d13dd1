#!/usr/bin/env python3
"""Dump restore benchmark (issue 5): a pg_dump custom archive of a 1,000,000-row database restored by
`reversib verify-now` (verification + structural walk + restore into its scratch database + a row count
+ drop) vs `pg_restore` by hand into an empty database (the anchor), same role and flags.

    .venv/bin/python bench/suite_dumps.py [--rows 1000000] [--repeat 3]

Needs PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres).  Standalone for now: not registered in
bench/run.py (its --smoke run in CI has no PostgreSQL dependency today).  Target: ratio <= 1.15.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PG = ["-h", "127.0.0.1", "-p", "5432"]
ROLE = "reversib_restore_bench"
SRC = "reversib_bench_src"


def psql(sql: str, db: str = "postgres", user: str = "postgres") -> str:
    return subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", *PG, "-U", user, "-d", db, "-c", sql],
                          check=True, capture_output=True, text=True).stdout


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    exe = Path(sys.executable).parent / "reversib"
    work = Path(tempfile.mkdtemp(prefix="reversib-bench-dumps-"))
    if not psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}'"):
        psql(f"CREATE ROLE {ROLE} LOGIN CREATEDB")
    psql(f"DROP DATABASE IF EXISTS {SRC}")
    psql(f"CREATE DATABASE {SRC}")
    psql("CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz, kind text, payload text);"
         f"INSERT INTO events SELECT g, now() - g * interval '1 second', 'k' || (g % 17), md5(g::text) "
         f"FROM generate_series(1, {args.rows}) g;", db=SRC)
    export = work / "export"
    export.mkdir()
    subprocess.run(["pg_dump", *PG, "-U", "postgres", "-Fc", "-f", str(export / "db.dump"), SRC], check=True)
    subprocess.run(["sh", "-c", "sha256sum db.dump > SHA256SUMS"], cwd=export, check=True)
    size = (export / "db.dump").stat().st_size
    (work / "checks").mkdir()
    (work / "checks" / "db.yaml").write_text(yaml.safe_dump({
        "version": 1, "id": "db", "name": "db", "source": {"url": "../export"}, "manifest": {"path": "SHA256SUMS"},
        "dumps": [{"path": "db.dump", "row_counts": {"events": args.rows},
                   "restore": {"target_url_env": "BENCH_RESTORE_URL"}}]}))
    (work / "checks" / "plain.yaml").write_text(yaml.safe_dump({
        "version": 1, "id": "plain", "name": "plain", "source": {"url": "../export"},
        "manifest": {"path": "SHA256SUMS"}, "dumps": [{"path": "db.dump"}]}))
    (work / "reversib.yaml").write_text(yaml.safe_dump({"version": 1, "checks_dir": "checks"}))
    env = {**os.environ, "BENCH_RESTORE_URL": f"postgresql://{ROLE}@127.0.0.1:5432/"}
    by_hand: list[float] = []
    tool: list[float] = []
    base: list[float] = []
    phase: list[float] = []
    for i in range(args.repeat):
        db = f"reversib_bench_hand_{i}"
        psql(f"DROP DATABASE IF EXISTS {db}")
        t0 = time.perf_counter()
        psql(f"CREATE DATABASE {db} TEMPLATE template0", user=ROLE)
        subprocess.run(["pg_restore", *PG, "-U", ROLE, "--no-owner", "--no-privileges", "--exit-on-error", "-d", db,
                        str(export / "db.dump")], check=True)
        by_hand.append(time.perf_counter() - t0)
        psql(f"DROP DATABASE {db}")
        t0 = time.perf_counter()
        out = subprocess.run([str(exe), "verify-now", "db", "--config", str(work / "reversib.yaml"), "--history",
                              f"sqlite:///{work / 'h.db'}", "--json", "--no-progress"], env=env,
                             capture_output=True, text=True)
        tool.append(time.perf_counter() - t0)
        if out.returncode != 0:
            print(out.stdout, out.stderr, file=sys.stderr)
            return 2
        phase.append(json.loads(out.stdout)["runs"][0]["restore_seconds"])
        t0 = time.perf_counter()
        subprocess.run([str(exe), "verify-now", "plain", "--config", str(work / "reversib.yaml"), "--history",
                        f"sqlite:///{work / 'h.db'}", "--json", "--no-progress"], env=env, check=True,
                       capture_output=True)
        base.append(time.perf_counter() - t0)
    hand, rev = statistics.median(by_hand), statistics.median(tool)
    print(f"dump: {args.rows} rows, custom format, {size / 1e6:.1f} MB")
    print(f"pg_restore by hand (create db + restore): median {hand:.2f} s of {[round(x, 2) for x in by_hand]}")
    print(f"reversib verify-now (verify + structural + restore + count + drop): median {rev:.2f} s of "
          f"{[round(x, 2) for x in tool]}")
    print(f"ratio {rev / hand:.3f} (target <= 1.15): {'PASS' if rev / hand <= 1.15 else 'FAIL'}")
    fixed = statistics.median(base)
    print(f"reversib verify-now without restore (start-up + verify + structural): median {fixed:.2f} s")
    print(f"restore level alone: {rev - fixed:.2f} s = {(rev - fixed) / hand:.3f}x pg_restore by hand; "
          f"pg_restore inside reversib (restore_seconds): median {statistics.median(phase):.2f} s")
    psql(f"DROP DATABASE IF EXISTS {SRC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
