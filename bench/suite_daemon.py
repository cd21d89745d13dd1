#!/usr/bin/env python3
"""Soak benchmark of the daemon (`reversib run`), standalone or as suite `daemon` of bench/run.py.

    .venv/bin/python bench/suite_daemon.py --minutes 10          # the full soak (1,000 + 50 checks)
    .venv/bin/python bench/suite_daemon.py --minutes 2 --json bench/out/daemon.json

1,000 checks `every: 60s` plus 50 `every: 5s` over small local exports (50 folders of 3 files, each
check reading one), against a SQLite history pre-filled with a year of daily runs for every check
(1,050 x 365 rows, written directly, then `run_counts` rebuilt).  `reversib run` runs as a real
process (catch-up off: the steady state is measured, not the restart burst).  Every 10 s the bench
scrapes /metrics (wall time) and reads the daemon's RSS (/proc).  At the end (SIGTERM) it reads the
runs of the soak from the history:

* scheduling lag = started_at - scheduled_for of every scheduled run (p50, p99, max);
* memory growth = RSS at the end minus RSS after the warm-up (the first minute, or a quarter of a
  shorter soak), which must stay flat;
* /metrics scrape time (median, max), target < 100 ms.

In bench/run.py: `--suite daemon` (minutes from REVERSIB_BENCH_SOAK_MINUTES, default 10); with
--smoke, 20 + 5 checks for 20 s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def build(root: Path, slow: int, fast: int, days: int, log: Any = print) -> tuple[Path, Path, list[str]]:
    """Exports, check files, config and a pre-filled history under `root`."""
    import hashlib

    import yaml

    from reversib.history import History, runs_t

    exports = root / "exports"
    for i in range(50):
        d = exports / f"e{i:02d}"
        d.mkdir(parents=True, exist_ok=True)
        lines = []
        for j in range(3):
            data = f"export {i} file {j}\n".encode() * 50
            (d / f"f{j}.csv").write_bytes(data)
            lines.append(f"{hashlib.sha256(data).hexdigest()}  f{j}.csv\n")
        (d / "SHA256SUMS").write_text("".join(lines))
    checks_dir = root / "checks"
    checks_dir.mkdir(exist_ok=True)
    ids = []
    for n in range(slow + fast):
        cid = f"slow-{n:04d}" if n < slow else f"fast-{n - slow:03d}"
        ids.append(cid)
        (checks_dir / f"{cid}.yaml").write_text(yaml.safe_dump({
            "version": 1, "id": cid, "name": cid, "labels": {"customer": f"c{n % 20}"},
            "source": {"url": str(exports / f"e{n % 50:02d}")}, "manifest": {"path": "SHA256SUMS"},
            "schedule": {"every": "60s" if n < slow else "5s"}, "fixity": {"parallelism": 1}}))
    db = root / "history.db"
    cfg = root / "reversib.yaml"
    cfg.write_text(yaml.safe_dump({"version": 1, "history": {"url": f"sqlite:///{db}"}, "checks_dir": str(checks_dir),
                                   "log": {"level": "info", "format": "json"},
                                   "daemon": {"catch_up": False, "max_concurrent_checks": 4}}))
    t0 = time.perf_counter()
    now = datetime.now(timezone.utc).replace(microsecond=0)
    with History.open(f"sqlite:///{db}") as h:
        rows: list[dict[str, Any]] = []
        with h.engine.connect() as conn, conn.begin():
            for cid in ids:
                for d in range(days, 0, -1):
                    slot = (now - timedelta(days=d)).replace(hour=3, minute=0, second=0)
                    failed = d % 29 == 0
                    rows.append({
                        "id": uuid.uuid4().hex, "check_id": cid, "check_name": cid, "trigger": "cli",
                        "scheduled_for": slot, "state": "finished", "outcome": "failed" if failed else "passed",
                        "started_at": slot, "finished_at": slot + timedelta(seconds=3), "duration_seconds": 3.0,
                        "host": "bench", "pid": 1, "labels": {}, "source": "/bench", "manifest": "SHA256SUMS",
                        "manifest_digest": None, "generation": None, "error": None,
                        "counts": {"digest_mismatch": 1} if failed else {}, "severities": {},
                        "tiers": {"downloaded": 3}, "bytes_verified": 3000, "files_verified": 3,
                        "files_listed": 3, "bytes_listed": 3000, "manifest_entries": 3, "newest_mtime": slot,
                        "summary_digest": None})
                if len(rows) >= 20_000:
                    conn.execute(runs_t.insert(), rows)
                    rows = []
            if rows:
                conn.execute(runs_t.insert(), rows)
        h.rebuild_run_counts()
    log(f"daemon soak: pre-filled {len(ids)} checks x {days} daily runs in {time.perf_counter() - t0:.1f} s")
    return cfg, db, ids


def soak(minutes: float, slow: int = 1000, fast: int = 50, days: int = 365, reversib: str | None = None,
         log: Any = print) -> dict[str, Any]:
    reversib = reversib or str(Path(sys.executable).with_name("reversib"))
    with tempfile.TemporaryDirectory(prefix="reversib-soak-") as tmp:
        root = Path(tmp)
        cfg, db, _ = build(root, slow, fast, days, log)
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("REVERSIB_")}
        with open(root / "daemon.log", "wb") as out:
            proc = subprocess.Popen([reversib, "run", "--config", str(cfg), "--listen", f"127.0.0.1:{port}"],
                                    stdout=out, stderr=subprocess.STDOUT, env=env)
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(base + "/-/ready", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the daemon did not become ready:\n" + (root / "daemon.log").read_text())
                time.sleep(0.1)
            started = time.time()
            log(f"daemon soak: {slow} checks every 60 s + {fast} every 5 s for {minutes:g} min, pid {proc.pid}")
            samples: list[tuple[float, float, float, int]] = []  # (elapsed s, rss MiB, scrape s, bytes)
            end = time.monotonic() + minutes * 60
            while True:
                t0 = time.perf_counter()
                with urllib.request.urlopen(base + "/metrics", timeout=30) as r:
                    size = len(r.read())
                scrape = time.perf_counter() - t0
                samples.append((time.time() - started, _rss_mib(proc.pid), scrape, size))
                if time.monotonic() >= end:
                    break
                time.sleep(max(0.0, min(10.0, end - time.monotonic())))
            cpu_s = _cpu_s(proc.pid)
            load = os.getloadavg()
            proc.send_signal(signal.SIGTERM)
            t_stop = time.perf_counter()
            code = proc.wait(30)
            stop_s = time.perf_counter() - t_stop
        result = _collect(db, started, samples, minutes, slow, fast, code, stop_s)
    result["daemon_cpu_s"] = round(cpu_s, 1)  # user + system time of the daemon over the whole soak
    result["loadavg_end"] = [round(x, 2) for x in load]  # 1/5/15-minute load of the machine (2 cores here)
    return result


def _at(samples: list[tuple[float, float, float, int]], elapsed: float) -> float:
    """The RSS (MiB) of the first sample taken at or after `elapsed` seconds."""
    return next((s[1] for s in samples if s[0] >= elapsed), samples[-1][1])


def _collect(db: Path, started: float, samples: list[tuple[float, float, float, int]], minutes: float, slow: int,
             fast: int, code: int, stop_s: float) -> dict[str, Any]:
    import sqlalchemy as sa

    from reversib.history import History, runs_t, skipped_t, to_datetime

    with History.open(f"sqlite:///{db}") as h, h.engine.connect() as conn:
        rows = conn.execute(sa.select(runs_t.c.started_at, runs_t.c.scheduled_for, runs_t.c.outcome)
                            .where(runs_t.c.trigger == "schedule",
                                   runs_t.c.started_at >= to_datetime(started))).all()
        skipped = conn.execute(sa.select(sa.func.count()).select_from(skipped_t)).scalar_one()
        # runs that did not pass: (state, error), e.g. `interrupted` by the SIGTERM that ends the soak
        failed = [(r.state, r.error) for r in conn.execute(
            sa.select(runs_t.c.state, runs_t.c.error).where(runs_t.c.trigger == "schedule",
                                                            runs_t.c.started_at >= to_datetime(started),
                                                            runs_t.c.outcome != "passed"))]
    lags = [(s.replace(tzinfo=timezone.utc) - p.replace(tzinfo=timezone.utc)).total_seconds()
            for s, p, _ in rows if p is not None]
    outcomes: dict[str, int] = {}
    for _, _, o in rows:
        outcomes[str(o)] = outcomes.get(str(o), 0) + 1
    warm = min(60.0, minutes * 60 / 4)
    after_warm = [s for s in samples if s[0] >= warm] or samples[-1:]
    scrapes = [s[2] for s in samples]
    expected = minutes * 60 * (slow / 60 + fast / 5)
    return {
        "minutes": minutes, "checks": {"every_60s": slow, "every_5s": fast},
        "runs": len(rows), "runs_expected_approx": round(expected), "outcomes": outcomes, "skipped_slots": skipped,
        "lag_s": {"p50": round(_pct(lags, 0.50), 4), "p99": round(_pct(lags, 0.99), 4),
                  "max": round(max(lags, default=float("nan")), 4)},
        "rss_mib": {"first": round(samples[0][1], 1), "after_warmup": round(after_warm[0][1], 1),
                    "end": round(samples[-1][1], 1), "max": round(max(s[1] for s in samples), 1),
                    "growth_after_warmup": round(samples[-1][1] - after_warm[0][1], 1),
                    # a bounded growth (caches, allocator arenas filling) slows down; a leak does not
                    "growth_second_half": round(samples[-1][1] - _at(samples, samples[-1][0] / 2), 1),
                    "by_minute": [round(_at(samples, 60.0 * m), 1) for m in range(int(samples[-1][0] // 60) + 1)]},
        "scrape_s": {"median": round(statistics.median(scrapes), 4), "max": round(max(scrapes), 4),
                     "n": len(scrapes), "bytes": samples[-1][3], "all_ms": [round(x * 1000, 1) for x in scrapes]},
        "not_passed": [{"state": st, "error": (err or "")[:300]} for st, err in failed[:20]],
        "exit_code": code, "stop_s": round(stop_s, 2),
    }


def render(r: dict[str, Any]) -> str:
    return (f"daemon soak {r['minutes']:g} min, {r['checks']['every_60s']} checks/60 s + {r['checks']['every_5s']} "
            f"checks/5 s: {r['runs']} scheduled runs (~{r['runs_expected_approx']} slots), outcomes {r['outcomes']}, "
            f"{r['skipped_slots']} skipped; lag p50 {r['lag_s']['p50'] * 1000:.0f} ms, p99 "
            f"{r['lag_s']['p99'] * 1000:.0f} ms, max {r['lag_s']['max'] * 1000:.0f} ms; RSS {r['rss_mib']['first']} "
            f"-> {r['rss_mib']['after_warmup']} (after warm-up) -> {r['rss_mib']['end']} MiB (growth "
            f"{r['rss_mib']['growth_after_warmup']:+} MiB, {r['rss_mib']['growth_second_half']:+} MiB in the second "
            f"half); "
            f"/metrics median {r['scrape_s']['median'] * 1000:.0f} ms, "
            f"max {r['scrape_s']['max'] * 1000:.0f} ms ({r['scrape_s']['bytes']} bytes, {r['scrape_s']['n']} scrapes);"
            f" SIGTERM -> exit {r['exit_code']} in {r['stop_s']} s")


def install(h: ModuleType) -> None:
    """Register suite `daemon` into the harness module `h` (bench/run.py)."""

    @h.register("daemon", "soak: `reversib run` with 1,000 checks/60 s + 50/5 s over a year of history "
                          "(scheduling lag, memory growth, /metrics time)", [h.Case("soak", "the soak (minutes from "
                          "REVERSIB_BENCH_SOAK_MINUTES, default 10; smoke: 25 checks, 20 s)")])
    def suite_daemon(ctx: Any, selected: list[str]) -> Any:
        res = h.SuiteResult()
        if ctx.smoke:
            r = soak(1 / 3, slow=20, fast=5, days=30, reversib=ctx.tools.reversib, log=h.log)
        else:
            r = soak(float(os.environ.get("REVERSIB_BENCH_SOAK_MINUTES", "10")), reversib=ctx.tools.reversib,
                     log=h.log)
        if r["runs"] == 0 or r["exit_code"] != 0:
            raise h.BenchError(f"daemon soak: no scheduled run recorded or bad exit: {render(r)}")
        res.notes.append(render(r))
        for name, ok, text, detail in (
            ("scrape", r["scrape_s"]["max"] < 0.1, "/metrics scrape < 100 ms", f"max {r['scrape_s']['max']:.3f} s"),
            ("lag-p99", r["lag_s"]["p99"] < 1.0, "scheduling lag p99 < 1 s", f"{r['lag_s']['p99']:.3f} s"),
            ("rss-flat", r["rss_mib"]["growth_after_warmup"] < 20, "RSS growth after warm-up < 20 MiB",
             f"{r['rss_mib']['growth_after_warmup']:+.1f} MiB"),
        ):
            res.targets.append(h.Target(f"soak/{name}", "daemon", "soak", "reversib run", text,
                                        "PASS" if ok else "FAIL", detail))
        return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/suite_daemon.py", description="soak benchmark of `reversib run`")
    p.add_argument("--minutes", type=float, default=10.0, help="soak duration (default 10)")
    p.add_argument("--slow", type=int, default=1000, help="checks every 60 s (default 1000)")
    p.add_argument("--fast", type=int, default=50, help="checks every 5 s (default 50)")
    p.add_argument("--days", type=int, default=365, help="daily runs pre-filled per check (default 365)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--reversib", metavar="EXE", help="the reversib executable to soak (default: the venv's; e.g. a "
                   "wrapper running an older copy of the code, for a before/after)")
    args = p.parse_args(argv)
    r = soak(args.minutes, args.slow, args.fast, args.days, reversib=args.reversib,
             log=lambda m: print(m, file=sys.stderr, flush=True))
    print(render(r))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    return 0 if r["exit_code"] == 0 and r["runs"] else 2


if __name__ == "__main__":
    sys.exit(main())
