#!/usr/bin/env python3
"""R daemons (replicas) verifying one scheduled run of a sharded check together (`scale/replicas`, docs/scale.md).

    replicas.py REVERSIB --pg-admin URL --workdir DIR --source s3://BUCKET/PREFIX --manifest PATH
                --replicas R --shards N --rate BYTES_PER_S --files F --bytes B [--lead S]

The S3 endpoint is the one in `AWS_ENDPOINT_URL_S3` (keys from the usual AWS_* variables).  Steps:

1. a fresh PostgreSQL database (created through `--pg-admin`, dropped at the end): the shared history;
2. R bandwidth-capping TCP proxies to the endpoint (bench/throttle_proxy.py, in this process), one per
   replica, each `--rate` bytes/s back to its replica;
3. R `reversib run --listen 127.0.0.1:PORT` daemons on that history, configured with no check yet, each
   with `AWS_ENDPOINT_URL_S3` pointing at *its own* proxy; wait until every `/-/ready` answers 200;
4. a check `shards: N`, `schedule: {every: 1h}`, whose id is chosen so that its next slot (the multiples of
   the hour plus the per-check offset of docs/daemon.md) falls `--lead` s from now; written to `checks/`,
   then SIGHUP to every daemon; every daemon's `/api/v1/checks` must show that slot as `next_run` before it
   comes (else exit 1: raise `--lead`);
5. wait until the slot's run is finished (`/api/v1/checks/ID/runs`), then check that every daemon
   agrees: exactly one run, of that slot, finished, outcome passed, F files and B bytes verified; the
   daemons' `reversib_daemon_shard_events_total` add up to N shards completed, one merge, nothing taken
   over or lost; the proxies carried no more than the export once (plus listings and manifests);
6. SIGTERM every daemon (each must exit 0).

Prints `replicas R run ID files F bytes B outcome passed slot_to_finished_s S lag_s L shards a+b+c
proxied_MB x+y+z`: S is the run row's `finished_at - scheduled_for` (the slot to the merged run, on the
daemons' clock), the figure the bench reports -- daemon start-up, the wait for the slot and the shutdown
are not in it.  Exit 1 when anything above fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from throttle_proxy import Proxies  # bench/, the directory of this script

EVERY_S = 3600  # one slot an hour: the run never meets the next one


class Failed(Exception):
    pass


def next_slot(check_id: str, every: float, t: float) -> float:
    from reversib.scheduler import spread  # the daemons' own per-check offset (docs/daemon.md)

    off = spread(check_id, every)
    return (math.floor((t - off) / every) + 1) * every + off


def pick_check(lead: float, now: float) -> tuple[str, float]:
    """A fresh check id whose next slot is between `lead` and `lead` + 0.5 s after `now`."""
    base = uuid.uuid4().hex[:8]
    for k in range(1_000_000):
        cid = f"rep-{base}-{k}"
        slot = next_slot(cid, EVERY_S, now)
        if lead <= slot - now <= lead + 0.5:
            return cid, slot
    raise Failed("no check id found for the slot")  # pragma: no cover - ~7,200 tries expected


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def ts(iso: str | None) -> float | None:
    return None if iso is None else datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class Database:
    def __init__(self, admin_url: str) -> None:
        import sqlalchemy as sa

        self.sa = sa
        self.admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
        self.name = f"reversib_bench_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{self.name}"')
        self.url = admin_url.rsplit("/", 1)[0] + "/" + self.name

    def drop(self) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.admin.dispose()


class Daemon:
    def __init__(self, i: int, reversib: str, cfg: Path, history: str, proxy_port: int, workdir: Path) -> None:
        self.i = i
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
        env["AWS_ENDPOINT_URL_S3"] = f"http://127.0.0.1:{proxy_port}"  # this replica's own capped link
        self.log = workdir / f"daemon-{i}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([reversib, "run", "--config", str(cfg), "--history", history,
                                          "--listen", f"127.0.0.1:{self.port}"],
                                         env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def tail(self) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-6:])
        except OSError:
            return "(no log)"

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise Failed(f"daemon {self.i} exited {self.proc.returncode}: {self.tail()}")

    def json(self, path: str) -> Any:
        code, body = get(self.base + path)
        if code != 200:
            raise Failed(f"daemon {self.i}: GET {path}: {code} {body[:300]}")
        return json.loads(body)

    def shard_events(self) -> dict[str, int]:
        _, body = get(self.base + "/metrics")
        return {m.group(1): int(float(m.group(2)))
                for m in re.finditer(r'^reversib_daemon_shard_events_total\{event="(\w+)"\} (\S+)$', body, re.M)}

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9


def wait_until(what: str, cond: Any, timeout: float, daemons: list[Daemon], step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        for d in daemons:
            d.alive()
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


def ready(d: Daemon) -> bool:
    with contextlib.suppress(OSError):
        return get(d.base + "/-/ready", timeout=2)[0] == 200
    return False


def bench(a: argparse.Namespace, workdir: Path, history: str, daemons: list[Daemon], proxies: Proxies) -> str:
    wait_until("every daemon ready", lambda: all(ready(d) for d in daemons), 90, daemons)

    # The check, its slot `lead` s ahead, handed to every daemon by a reload (SIGHUP).
    cid, slot = pick_check(a.lead, time.time())
    src = urlsplit(a.source)
    (workdir / "checks" / f"{cid}.yaml").write_text(json.dumps({
        "version": 1, "name": cid, "source": {"url": a.source}, "manifest": {"path": a.manifest},
        "schedule": {"every": f"{EVERY_S}s"}, "shards": a.shards}))
    for d in daemons:
        d.proc.send_signal(signal.SIGHUP)

    def scheduled(d: Daemon) -> bool:
        rows = [c for c in d.json("/api/v1/checks")["checks"] if c["check"] == cid]
        return bool(rows) and abs((ts(rows[0]["next_run"]) or 0) - slot) < 0.01

    wait_until("every daemon to schedule the check", lambda: all(scheduled(d) for d in daemons), a.lead, daemons)
    if time.time() >= slot:
        raise Failed(f"the daemons scheduled the slot only after it passed: raise --lead (now {a.lead} s)")

    def finished() -> dict[str, Any] | None:
        runs = daemons[0].json(f"/api/v1/checks/{cid}/runs")["runs"]
        return next((r for r in runs if r["state"] != "running"), None)

    budget = a.bytes / a.rate * 3 + 120  # one replica alone, with room to spare
    wait_until(f"the run of slot {slot:.3f} to finish", finished, budget, daemons, step=0.1)

    # Every daemon sees the same single run of that slot, finished, passed, every file verified.
    expect = (1, slot, "schedule", "finished", "passed", a.files, a.bytes)
    run: dict[str, Any] = {}
    for d in daemons:
        runs = d.json(f"/api/v1/checks/{cid}/runs")["runs"]
        r = runs[0] if runs else {}
        got = (len(runs), round(ts(r.get("scheduled_for")) or 0, 3), r.get("trigger"), r.get("state"),
               r.get("outcome"), r.get("files_verified"), r.get("bytes_verified"))
        if got[0] != 1 or abs(got[1] - slot) > 0.002 or got[2:] != expect[2:]:
            raise Failed(f"daemon {d.i}: runs, slot, trigger, state, outcome, files, bytes = {got}, "
                         f"expected {expect} (error: {r.get('error')})")
        if run and r["id"] != run["id"]:
            raise Failed(f"daemons disagree on the run: {r['id']} vs {run['id']}")
        run = r
    events = [d.shard_events() for d in daemons]
    total = {k: sum(e.get(k, 0) for e in events) for k in ("completed", "merged", "taken_over", "lost", "released")}
    if total != {"completed": a.shards, "merged": 1, "taken_over": 0, "lost": 0, "released": 0}:
        raise Failed(f"shard events over all daemons {total}, expected {a.shards} completed and one merge: {events}")
    down = proxies.bytes_down
    overhead = a.shards * (256 * 1024 + a.files * 1024)  # per shard: a listing and the manifest, generously
    if sum(down) > a.bytes + overhead:
        raise Failed(f"the proxies carried {sum(down):,} bytes for an export of {a.bytes:,}: a file read twice?")
    started, done = ts(run["started_at"]) or 0.0, ts(run["finished_at"]) or 0.0
    return (f"replicas {a.replicas} run {run['id']} files {run['files_verified']} bytes {run['bytes_verified']} "
            f"outcome {run['outcome']} slot_to_finished_s {done - slot:.3f} lag_s {started - slot:.3f} "
            f"shards {'+'.join(str(e.get('completed', 0)) for e in events)} "
            f"proxied_MB {'+'.join(f'{b / 1e6:.1f}' for b in down)} check {cid} endpoint {src.netloc}")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("reversib")
    p.add_argument("--pg-admin", required=True, help="SQLAlchemy URL of a database to run CREATE DATABASE in")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--replicas", type=int, required=True)
    p.add_argument("--shards", type=int, required=True)
    p.add_argument("--rate", type=float, required=True, help="bytes/s of each replica's proxy")
    p.add_argument("--files", type=int, required=True)
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--lead", type=float, default=2.0, help="the slot this far after the daemons are ready (s)")
    a = p.parse_args()
    upstream = os.environ.get("AWS_ENDPOINT_URL_S3")
    if not upstream:
        print("AWS_ENDPOINT_URL_S3 must name the S3 endpoint", file=sys.stderr)
        return 64
    workdir = a.workdir
    (workdir / "checks").mkdir(parents=True, exist_ok=True)
    cfg = workdir / "reversib.yaml"
    cfg.write_text(json.dumps({"version": 1, "checks_dir": "checks", "daemon": {"catch_up": False}}))
    daemons: list[Daemon] = []
    db = Database(a.pg_admin)
    try:
        with Proxies(urlsplit(upstream).netloc, a.rate, a.replicas) as proxies:
            try:
                daemons = [Daemon(i, a.reversib, cfg, db.url, port, workdir) for i, port in enumerate(proxies.ports)]
                line = bench(a, workdir, db.url, daemons, proxies)
            finally:
                codes = [d.stop() for d in daemons]
            if any(codes):
                raise Failed(f"daemons exited {codes} on SIGTERM: {[d.tail() for d in daemons if d.proc.returncode]}")
    except Failed as exc:
        print(f"replicas {a.replicas}: {exc}", file=sys.stderr)
        for d in daemons:
            print(f"  daemon {d.i}: {d.tail()}", file=sys.stderr)
        return 1
    finally:
        db.drop()
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
