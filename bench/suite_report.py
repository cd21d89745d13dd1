#!/usr/bin/env python3
"""Report benchmark: `reversib report` over a year of daily runs for 50 checks (target < 5 s).

    .venv/bin/python bench/suite_report.py                 # 50 checks x 365 days
    .venv/bin/python bench/suite_report.py --checks 5 --days 30 --json bench/out/report.json

Builds a SQLite history of daily runs (written directly: passes, a failure every 29 days, a
could-not-verify run every 17 days, a missing day every 41 days, a shrinkage now and then), chains
them (`reversib.evidence.chain.backfill`, as migration 0003 does), then times the real CLI as a
subprocess (start-up included) for each format, and `reversib audit verify` for information.
A restore test every 7 days (a `restored` finding with its duration) feeds the RTO trend.  Then,
for information: `reversib history prune --older-than DAYS/2` (a signed checkpoint per chain) and
`audit verify` of the pruned history.

In bench/run.py: `--suite report`; with --smoke, 5 checks x 30 days.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
TARGET_S = 5.0


def build(root: Path, checks: int, days: int, log: Any = print) -> tuple[Path, datetime]:
    """Check files, config and a chained history under `root`; returns (config, end of the period)."""
    import yaml

    from reversib.evidence.chain import backfill
    from reversib.history import History, runs_t

    checks_dir = root / "checks"
    checks_dir.mkdir(parents=True)
    ids = [f"provider-{n:02d}" for n in range(checks)]
    for cid in ids:
        (checks_dir / f"{cid}.yaml").write_text(yaml.safe_dump({
            "version": 1, "id": cid, "name": f"Provider export {cid}", "source": {"url": str(root)},
            "generation": {"pattern": "%Y-%m-%d"}, "manifest": {"path": "SHA256SUMS"},
            "expect": {"deadline": "06:00"}}))
    db = root / "history.db"
    cfg = root / "reversib.yaml"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    (root / "key.pem").write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cfg.write_text(yaml.safe_dump({"version": 1, "history": {"url": f"sqlite:///{db}"}, "checks_dir": str(checks_dir),
                                   "evidence": {"signing_key_file": str(root / "key.pem")}}))
    t0 = time.perf_counter()
    end = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    with History.open(f"sqlite:///{db}") as h:
        with h.engine.connect() as conn, conn.begin():
            rows: list[dict[str, Any]] = []
            for n, cid in enumerate(ids):
                for d in range(days, 0, -1):
                    if (d + n) % 41 == 0:
                        continue  # reversib was down
                    start = end - timedelta(days=d) + timedelta(hours=7)
                    outcome = "failed" if (d + n) % 29 == 0 else "error" if (d + n) % 17 == 0 else "passed"
                    files = 1000 + (days - d) * 3 - (600 if (d + n) % 97 == 0 else 0)
                    rows.append({
                        "id": uuid.uuid4().hex, "check_id": cid, "check_name": cid, "trigger": "schedule",
                        "scheduled_for": start, "state": "finished", "outcome": outcome, "started_at": start,
                        "finished_at": start + timedelta(seconds=40), "duration_seconds": 40.0, "host": "bench",
                        "pid": 1, "labels": {}, "source": "/bench", "manifest": "SHA256SUMS",
                        "manifest_digest": "sha256:" + "ab" * 32, "generation": start.strftime("%Y-%m-%d"),
                        "error": "source unreachable" if outcome == "error" else None,
                        "counts": {"digest_mismatch": 1} if outcome == "failed" else {}, "severities": {},
                        "tiers": {"downloaded": files}, "bytes_verified": files * 1_000_000,
                        "files_verified": files, "files_listed": 0 if outcome == "error" else files,
                        "bytes_listed": 0 if outcome == "error" else files * 1_000_000, "manifest_entries": files,
                        "newest_mtime": start, "summary_digest": None})
            conn.execute(runs_t.insert(), rows)
            failed = [r["id"] for r in rows if r["outcome"] == "failed"]
            conn.exec_driver_sql(
                "INSERT INTO findings (run_id, seq, kind, severity, path, expected, actual) "
                "VALUES (?, 0, 'digest_mismatch', 'error', 'db/customers.csv', 'sha256:aa', 'sha256:bb')",
                [(r,) for r in failed])
            restored = [r["id"] for r in rows if r["outcome"] == "passed" and r["started_at"].toordinal() % 7 == 0]
            conn.exec_driver_sql(
                "INSERT INTO findings (run_id, seq, kind, severity, path, expected, actual, detail) "
                "VALUES (?, 0, 'restored', 'info', 'db.dump', NULL, 'restored', ?)",
                [(r, json.dumps({"format": "postgres-custom", "restore_bytes": 10**9, "restore_seconds": 60.0 + i % 13,
                                 "rows": None, "v": 1}, sort_keys=True, separators=(",", ":")))
                 for i, r in enumerate(restored)])
            linked = backfill(conn, datetime.now(timezone.utc))
        h.rebuild_run_counts()
    log(f"report bench: {checks} checks x {days} days: {len(rows)} runs written and {linked} chained "
        f"in {time.perf_counter() - t0:.1f} s")
    return cfg, end


def measure(checks: int = 50, days: int = 365, reversib: str | None = None, log: Any = print) -> dict[str, Any]:
    reversib = reversib or str(Path(sys.executable).with_name("reversib"))
    with tempfile.TemporaryDirectory(prefix="reversib-report-") as tmp:
        root = Path(tmp)
        cfg, end = build(root, checks, days, log)
        out: dict[str, Any] = {"checks": checks, "days": days, "seconds": {}, "bytes": {}}
        for fmt in ("html", "json", "md"):
            target = root / f"report.{fmt}"
            cmd = [reversib, "report", "--config", str(cfg), "--since", f"{days}d", "--until", end.isoformat(),
                   "--format", fmt, "--output", str(target)]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            out["seconds"][fmt] = round(time.perf_counter() - t0, 3)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-500:]}")
            out["bytes"][fmt] = target.stat().st_size
        doc = json.loads((root / "report.json").read_text())
        if len(doc["checks"]) != checks or not all(c["runs"] for c in doc["checks"]):
            raise RuntimeError("the JSON report does not cover every check")
        t0 = time.perf_counter()
        proc = subprocess.run([reversib, "audit", "verify", "--config", str(cfg)], capture_output=True, text=True)
        out["seconds"]["audit verify"] = round(time.perf_counter() - t0, 3)
        if proc.returncode != 0:
            raise RuntimeError(f"audit verify failed on the bench history: {proc.stdout[-500:]}")
        if not all(c["restores"] for c in doc["checks"]):
            raise RuntimeError("the JSON report has no restore trend")
        t0 = time.perf_counter()
        proc = subprocess.run([reversib, "history", "prune", "--older-than", f"{days // 2}d", "--config", str(cfg)],
                              capture_output=True, text=True)
        out["seconds"]["history prune"] = round(time.perf_counter() - t0, 3)
        if proc.returncode != 0 or proc.stdout.count("replaced by a signed checkpoint") != checks:
            raise RuntimeError(f"history prune failed on the bench history: {proc.stdout[-500:]}{proc.stderr[-500:]}")
        t0 = time.perf_counter()
        proc = subprocess.run([reversib, "audit", "verify", "--config", str(cfg)], capture_output=True, text=True)
        out["seconds"]["audit verify (pruned)"] = round(time.perf_counter() - t0, 3)
        if proc.returncode != 0 or f"{checks} starting at a signed checkpoint" not in proc.stdout:
            raise RuntimeError(f"audit verify failed on the pruned history: {proc.stdout[-500:]}")
        return out


def render(r: dict[str, Any]) -> str:
    s = r["seconds"]
    return (f"report over {r['checks']} checks x {r['days']} daily runs: html {s['html']:.2f} s "
            f"({r['bytes']['html'] / 1e6:.1f} MB), json {s['json']:.2f} s, md {s['md']:.2f} s; "
            f"audit verify {s['audit verify']:.2f} s; history prune (half) {s['history prune']:.2f} s, "
            f"then audit verify {s['audit verify (pruned)']:.2f} s")


def install(h: ModuleType) -> None:
    """Register suite `report` into the harness module `h` (bench/run.py)."""

    @h.register("report", "evidence: `reversib report` (html, json, md) over a year of daily runs for 50 checks",
                [h.Case("year", "50 checks x 365 daily runs (smoke: 5 x 30)")])
    def suite_report(ctx: Any, selected: list[str]) -> Any:
        res = h.SuiteResult()
        try:
            r = measure(5, 30, ctx.tools.reversib, h.log) if ctx.smoke else measure(reversib=ctx.tools.reversib,
                                                                                        log=h.log)
        except RuntimeError as exc:
            raise h.BenchError(str(exc)) from None
        res.notes.append(render(r))
        worst = max(r["seconds"][f] for f in ("html", "json", "md"))
        res.targets.append(h.Target("report/year", "report", "year", "reversib report",
                                    f"report over {r['checks']} checks x {r['days']} days < {TARGET_S:g} s",
                                    "PASS" if worst < TARGET_S else "FAIL", f"slowest format {worst:.2f} s"))
        return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/suite_report.py", description="benchmark of `reversib report`")
    p.add_argument("--checks", type=int, default=50, help="checks (default 50)")
    p.add_argument("--days", type=int, default=365, help="daily runs per check (default 365)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args(argv)
    r = measure(args.checks, args.days, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(render(r))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    return 0 if max(r["seconds"][f] for f in ("html", "json", "md")) < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
