"""Three `reversib run` daemons on one real PostgreSQL history (docs/scale.md): 50 small checks on short
intervals and one check split into 3 shards.  Every slot runs exactly once, none is missed; one daemon is
SIGKILLed while it holds a shard, the others take its work over once the lease has passed; the merged
run of the sharded check finds what one process finds on the same export."""

from __future__ import annotations

import os
import re
import signal
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from reversib.config import CheckConfig
from reversib.history import History, runs_t, skipped_t
from reversib.leases import MERGE, shards_t
from reversib.runner import run_check
from reversib.scheduler import Schedule
from tests.daemon.helpers import DaemonProcess, free_port, poll, small_export, write_config
from tests.helpers import flip_byte, make_export, run_tool

pytestmark = [pytest.mark.service, pytest.mark.timeout(280)]

SMALL, EVERY, LEASE = 50, 20.0, 5.0
RUN_FOR = float(os.environ.get("REVERSIB_REPLICAS_SECONDS", "100"))  # scheduled running, after the kill


def _big_export(root: Path) -> Path:
    make_export(root, {f"d{i % 3}/f{i:02d}.bin": bytes([i]) * 4000 for i in range(36)})
    run_tool(["sha256sum"], root, "SHA256SUMS")
    flip_byte(root / "d0/f03.bin", 100)  # digest_mismatch
    (root / "d1/f04.bin").unlink()  # missing
    (root / "extra.txt").write_text("not listed\n")  # unexpected
    return root


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def test_three_daemons_one_killed(tmp_path: Path, pg_database: str) -> None:
    small_export(tmp_path / "small")
    _big_export(tmp_path / "big")
    small = {"source": {"url": "../small"}, "manifest": {"path": "SHA256SUMS"}, "schedule": {"every": f"{EVERY:g}s"},
             "fixity": {"parallelism": 1}}
    checks = {f"s{i:02d}": small for i in range(SMALL)}
    # ~48 kB per shard at 12 kB/s: 4 s per shard, so the kill lands mid-shard.  Hourly, at the minute half an
    # hour from now: only the slot that every daemon catches up at start runs during the test (an `every: 1h`
    # slot fell inside the test once in ~30 runs, by the clock, and made two runs of it).
    minute = (datetime.now(timezone.utc).minute + 30) % 60
    big = {"source": {"url": "../big", "rate_limit": "12kB"}, "manifest": {"path": "SHA256SUMS"},
           "schedule": {"cron": f"{minute} * * * *"}, "shards": 3, "fixity": {"parallelism": 1}}
    checks["big"] = big
    cfg = write_config(tmp_path, checks, {"lease": f"{LEASE:g}s", "max_concurrent_checks": 4,
                                          "catch_up_window": "2h"}, history=pg_database)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    daemons = [DaemonProcess(cfg, free_port(), env=env) for _ in range(3)]
    try:
        for d in daemons:
            d.wait_ready(60)
        started = time.time()
        by_pid = {d.proc.pid: d for d in daemons}
        with History.open(pg_database) as history:
            engine = history.engine

            def holder() -> tuple[DaemonProcess, float] | None:
                with engine.connect() as conn:
                    rows = conn.execute(sa.select(shards_t.c.owner, shards_t.c.updated_at)
                                        .join(runs_t, runs_t.c.id == shards_t.c.run_id)
                                        .where(runs_t.c.check_id == "big", shards_t.c.state == "running",
                                               shards_t.c.shard >= 0)).all()
                for owner, _ in rows:
                    pid = int(owner.rpartition(":")[2])
                    if pid in by_pid:
                        return by_pid[pid], time.time()
                return None

            victim, _ = poll("a daemon holding a shard of the big check", holder, timeout=60)
            time.sleep(1.0)
            os.kill(victim.proc.pid, signal.SIGKILL)
            victim.proc.wait()
            killed_at = time.time()
            owner = f"{history.host}:{victim.proc.pid}"
            with engine.connect() as conn:  # what the victim held when it died: taken over later
                held = {(r.run_id, r.shard) for r in conn.execute(
                    sa.select(shards_t.c.run_id, shards_t.c.shard).where(shards_t.c.owner == owner,
                                                                        shards_t.c.state == "running"))}
            assert held, "the victim held no shard when killed"
            with engine.connect() as conn:  # its leases: nobody may take its shards over before they pass
                leases_until = {(r.run_id, r.shard): r.lease_until.timestamp() for r in conn.execute(
                    sa.select(shards_t.c.run_id, shards_t.c.shard, shards_t.c.lease_until)
                    .where(shards_t.c.owner == owner, shards_t.c.state == "running"))}
            taken_at: dict[tuple[str, int], float] = {}

            def taken_over() -> bool:
                with engine.connect() as conn:
                    for r in conn.execute(sa.select(shards_t.c.run_id, shards_t.c.shard, shards_t.c.owner)):
                        key = (r.run_id, r.shard)
                        if key in held and key not in taken_at and r.owner != owner:
                            taken_at[key] = time.time()
                return len(taken_at) == len(held)

            poll("the survivors to take the victim's shards over", taken_over, timeout=6 * LEASE, every=0.1)
            for key, at in taken_at.items():
                assert at >= leases_until[key] - 0.05, (key, at, leases_until[key])  # not before the lease passed
                assert at <= leases_until[key] + 3 * LEASE, (key, at, leases_until[key])  # and soon after
            survivors = [d for d in daemons if d is not victim]
            time.sleep(max(0.0, killed_at + RUN_FOR - time.time()))
            metrics = [d.get("/metrics")[1].decode() for d in survivors]
            stopped_at = time.time()
            for d in survivors:
                assert d.stop(20) == 0, d.logs()[-3000:]

            with engine.connect() as conn:
                runs = conn.execute(sa.select(runs_t)).mappings().all()
                shard_rows = conn.execute(sa.select(shards_t)).mappings().all()
                skipped = conn.execute(sa.select(skipped_t)).mappings().all()
            big_run = [r for r in runs if r["check_id"] == "big"]
            big_findings = history.findings(big_run[0]["id"]) if big_run else []
    finally:
        for d in daemons:
            d.stop(5)

    logs = "\n".join(d.logs() for d in daemons)
    assert "Traceback" not in logs and "error ignored" not in logs, logs[-5000:]
    # Every slot of every small check from when all three ran to shortly before the stop: exactly one run
    # (the unique (check, slot) row), finished and passed -- including the runs the victim had claimed.
    first, last = started + EVERY, stopped_at - 3 * LEASE  # after the catch-up backlog of the start
    by_slot: dict[tuple[str, datetime], list[dict[str, object]]] = {}
    for r in runs:
        if r["scheduled_for"] is not None:
            by_slot.setdefault((r["check_id"], r["scheduled_for"]), []).append(dict(r))
    expected_slots = 0
    for i in range(SMALL):
        check_id = f"s{i:02d}"
        schedule = Schedule.of(CheckConfig.model_validate({"version": 1, "id": check_id, "name": check_id,
                                                           "source": {"url": "/x"}, **{"schedule": small["schedule"]}}))
        assert schedule is not None
        slot = schedule.next_after(first)
        while slot <= last:
            found = by_slot.get((check_id, _utc(slot)), [])
            assert len(found) == 1, (check_id, _utc(slot), found)
            assert (found[0]["state"], found[0]["outcome"]) == ("finished", "passed"), found[0]
            expected_slots += 1
            slot = schedule.next_after(slot)
    assert expected_slots >= SMALL * int((last - first) // EVERY) > 0
    assert not [s for s in skipped if first <= s["scheduled_for"].timestamp() <= last], skipped

    # No work done twice: every shard and merge row of a finished run was claimed once, but for those the
    # victim held, claimed twice (taken over) and done.
    finished = {r["id"] for r in runs if r["state"] == "finished"}
    for row in shard_rows:
        if row["run_id"] not in finished:
            continue
        key = (row["run_id"], row["shard"])
        assert row["state"] == "done", row
        assert row["attempts"] == (2 if key in held else 1), row
        if key in held:
            assert row["owner"] != owner
    assert {run for run, _ in held} <= finished

    # The sharded run: one run, 3 shards and one merge; the same findings as one process on the export.
    assert len(big_run) == 1 and big_run[0]["state"] == "finished" and big_run[0]["outcome"] == "failed"
    big_rows = {r["shard"]: r for r in shard_rows if r["run_id"] == big_run[0]["id"]}
    assert set(big_rows) == {0, 1, 2, MERGE} and big_rows[MERGE]["attempts"] == 1
    with History.open(f"sqlite:///{tmp_path / 'single.db'}") as single:
        check = CheckConfig.model_validate({"version": 1, "id": "big", "name": "big",
                                            "source": {"url": str(tmp_path / "big")},
                                            "manifest": {"path": "SHA256SUMS"}})
        reference = run_check(check, single)
    assert sorted((f.kind, f.path, f.actual) for f in big_findings) == \
        sorted((f.kind, f.path, f.actual) for f in reference.findings)
    assert {f.kind.value for f in reference.findings} == {"digest_mismatch", "missing", "unexpected"}
    assert big_run[0]["files_verified"] == reference.files_verified

    # The survivors' metrics show the takeover.
    taken = sum(float(m) for text in metrics
                for m in re.findall(r'^reversib_daemon_shard_events_total\{event="taken_over"\} (\S+)$', text, re.M))
    assert taken >= len(held)
