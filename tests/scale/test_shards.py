"""Shards of one run on the real PostgreSQL: three processes, one killed mid-run; its shard is taken over
once its lease has passed, the merge runs once, and the merged run finds what a single process finds."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from reversib.history import History
from reversib.leases import MERGE, Leases, shards_t
from reversib.manifests.base import ManifestEntry
from reversib.runner import run_check
from reversib.shards import ENTRY_WEIGHT, Partition, ShardError, parse_shard, run_id_for
from tests.helpers import flip_byte, make_export, run_tool

ROOT = Path(__file__).resolve().parents[2]


def _export(tmp: Path) -> Path:
    root = make_export(tmp / "export", {f"d{i % 3}/f{i:02d}.bin": bytes([i]) * 4000 for i in range(36)})
    run_tool(["sha256sum"], root, "SHA256SUMS")
    (root / "SHA256SUMS").rename(tmp / "SHA256SUMS")
    flip_byte(root / "d0/f03.bin", 100)  # digest_mismatch
    (root / "d1/f04.bin").unlink()  # missing
    (root / "d2/f05.bin").write_bytes(b"short")  # size... (sha256sum lists no sizes: a digest mismatch)
    (root / "extra.txt").write_text("not listed\n")  # unexpected
    return root


def _config(tmp: Path, root: Path, rate: str) -> Path:
    (tmp / "checks").mkdir(exist_ok=True)
    (tmp / "checks" / "big.yaml").write_text(yaml.safe_dump({
        "version": 1, "id": "big", "name": "big", "source": {"url": str(root), "rate_limit": rate},
        "manifest": {"location": str(tmp / "SHA256SUMS")}, "fixity": {"parallelism": 1}}))
    cfg = tmp / "reversib.yaml"
    cfg.write_text(yaml.safe_dump({"version": 1, "checks_dir": "checks"}))
    return cfg


def _shard(cfg: Path, url: str, k: int, run: str, lease: float = 2.0) -> subprocess.Popen[str]:
    env = {k_: v for k_, v in os.environ.items() if k_ != "CI"}
    return subprocess.Popen([sys.executable, "-m", "reversib", "verify-now", "big", "--config", str(cfg), "--history",
                             url, "--shard", f"{k}/3", "--run-id", run, "--lease", str(lease), "--json",
                             "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def _findings(doc: dict[str, Any]) -> list[tuple[str, str | None, str | None]]:
    return sorted((f["kind"], f["path"], f["actual"]) for f in doc["runs"][0]["findings"])


def test_three_processes_one_killed_mid_run(tmp_path: Path, pg_database: str) -> None:
    root = _export(tmp_path)
    cfg = _config(tmp_path, root, "24kB")  # ~48 kB per shard: 2 s per shard, so a kill lands mid-run
    with History.open(f"sqlite:///{tmp_path / 'single.db'}") as single:
        from reversib.config import load_settings

        reference = run_check(load_settings(cfg).checks[0].model_copy(
            update={"source": load_settings(cfg).checks[0].source.model_copy(update={"rate_limit": None})}), single)
    expected = sorted((f.kind.value, f.path, f.actual) for f in reference.findings)
    assert {k for k, _, _ in expected} == {"digest_mismatch", "missing", "unexpected"}

    run = "job-nightly-1"
    procs = {k: _shard(cfg, pg_database, k, run) for k in range(3)}
    victim = procs[1]
    with History.open(pg_database) as history:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait until the victim holds shard 1, then kill it
            rows = Leases(history, 2.0).rows(run_id_for(run)) if history.get_run(run_id_for(run)) else {}
            if rows.get(1, {}).get("owner", "") == f"{history.host}:{victim.pid}":
                break
            time.sleep(0.05)
        else:
            pytest.fail("the victim never claimed its shard")
        time.sleep(0.5)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        outputs = {}
        for k in (0, 2):
            out, err = procs[k].communicate(timeout=120)
            assert procs[k].returncode == 1, err  # failed: the export has faults
            outputs[k] = json.loads(out)
        run_id = run_id_for(run)
        runs = history.runs("big")
        rows = Leases(history, 2.0).rows(run_id)
        with history.engine.connect() as conn:
            links = conn.execute(sa.text("SELECT count(*) FROM chain_links WHERE run_id = :r"), {"r": run_id}).scalar()
    # One run, finished once, chained once; the same findings as one process; every process reports it.
    assert [r.id for r in runs] == [run_id] and runs[0].state == "finished" and runs[0].outcome == "failed"
    assert links == 1
    for doc in outputs.values():
        assert doc["runs"][0]["run_id"] == run_id
        assert _findings(doc) == expected
    assert runs[0].files_verified == reference.files_verified and runs[0].tiers == reference.tiers
    assert rows[1]["attempts"] == 2 and rows[1]["owner"] != f"{history.host}:{victim.pid}"  # taken over
    assert all(r["state"] == "done" for r in rows.values()) and rows[MERGE]["attempts"] == 1


def test_the_shards_partition_the_manifest() -> None:
    rng = random.Random(7)
    entries = [ManifestEntry(f"dir{i % 7}/{i}.bin", rng.choice([0, 10, 4096, 1 << 20, 50 << 20, None]))
               for i in range(3000)]
    entries += [ManifestEntry("dir1/1.bin", 10), ManifestEntry("dir2/2.bin", 99 << 20)]  # duplicated paths:
    # in one shard only, weighing their largest size whatever their order
    paths = {e.path for e in entries}
    for n in (1, 3, 12):
        parts = [Partition(k, n, entries) for k in range(n)]
        assert sorted(p for part in parts for p in part.paths) == sorted(paths)  # disjoint, complete
        # Balanced by bytes: every shard within one entry's weight of the mean.
        heaviest = (99 << 20) + ENTRY_WEIGHT
        mean = sum(part.weight for part in parts) / n
        assert all(abs(part.weight - mean) <= heaviest for part in parts), [part.weight for part in parts]
        # Deterministic and canonical: the manifest's order does not matter; contiguous in path order.
        shuffled = entries[:]
        rng.shuffle(shuffled)
        assert [Partition(k, n, shuffled).paths for k in range(n)] == [part.paths for part in parts]
        order = sorted(paths)
        assert [min(order.index(p) for p in part.paths) for part in parts if part.paths] == sorted(
            min(order.index(p) for p in part.paths) for part in parts if part.paths)
    # Equal entries split exactly, sizes unknown (sha256sum) too; more shards than entries leaves some empty.
    same = [ManifestEntry(f"f{i:02d}", 512 * 1024) for i in range(96)]
    assert [len(Partition(k, 12, same)) for k in range(12)] == [8] * 12
    assert [len(Partition(k, 12, [ManifestEntry(e.path) for e in same])) for k in range(12)] == [8] * 12
    assert sorted(len(Partition(k, 5, same[:3])) for k in range(5)) == [0, 0, 1, 1, 1]


def test_shard_arguments() -> None:
    assert parse_shard("2/5", {}) == (2, 5)
    assert parse_shard("/4", {"JOB_COMPLETION_INDEX": "3"}) == (3, 4)
    assert parse_shard("4", {"JOB_COMPLETION_INDEX": "0"}) == (0, 4)
    for bad in ("5/5", "x/2", "/3", "0/0"):
        with pytest.raises(ShardError):
            parse_shard(bad, {})
    assert run_id_for("0123456789abcdef0123456789abcdef") == "0123456789abcdef0123456789abcdef"
    assert len(run_id_for("my-job")) == 32 and run_id_for("my-job") == run_id_for("my-job")


def test_a_shard_claim_is_exclusive_until_its_lease_passes(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    with History.open(f"sqlite:///{tmp_path / 'h.db'}", clock=lambda: now[0]) as history:
        run_id = history.start_run(check_id="c", check_name="c", trigger="cli")
        a, b = Leases(history, 10, owner="a"), Leases(history, 10, owner="b")
        a.ensure(run_id, 2)
        with pytest.raises(Exception, match="has 2 shards, not 3"):
            b.ensure(run_id, 3)
        assert a.claim(run_id, 0) and not b.claim(run_id, 0)
        assert not a.claim(run_id, MERGE)  # shards not done
        now[0] += 11  # a's lease passed: b takes the shard over, a can neither renew nor complete it
        assert b.claim(run_id, 0) and not a.renew(run_id, 0) and not a.complete(run_id, 0, {})
        assert b.complete(run_id, 0, {"x": 1})
        assert b.claim(run_id, 1) and b.complete(run_id, 1, {})
        assert a.claim(run_id, MERGE) and not b.claim(run_id, MERGE)
        with history.engine.connect() as conn:
            assert conn.execute(sa.select(shards_t.c.result).where(shards_t.c.shard == 0)).scalar() == {"x": 1}


def test_shards_and_lease_keys_are_validated(tmp_path: Path) -> None:
    from reversib.config import CheckConfig, RunDaemonConfig

    base = {"version": 1, "name": "c", "source": {"url": str(tmp_path)}}
    assert CheckConfig.model_validate({**base, "shards": 4}).shards == 4
    assert CheckConfig.model_validate(base).shards == 1
    for bad in (0, 1001, "x"):
        with pytest.raises(ValueError, match="shards"):
            CheckConfig.model_validate({**base, "shards": bad})
    with pytest.raises(ValueError, match="cannot be combined with coverage"):
        CheckConfig.model_validate({**base, "shards": 2, "coverage": {"period": "7d", "budget_share": 0.2}})
    assert RunDaemonConfig.model_validate({"lease": "90s"}).lease == 90.0
    with pytest.raises(ValueError, match="lease"):
        RunDaemonConfig.model_validate({"lease": "0s"})


def test_one_daemon_on_sqlite_runs_a_sharded_check(tmp_path: Path) -> None:
    """`shards: 3` with one daemon (SQLite): the daemon verifies the three shards itself and merges."""
    from reversib.config import load_settings
    from reversib.daemon import Daemon

    root = _export(tmp_path)
    cfg = _config(tmp_path, root, "10MB")
    settings = load_settings(cfg)
    check = settings.checks[0].model_copy(update={"shards": 3, "schedule": None})
    settings = dataclasses.replace(settings, checks=[check])
    with History.open(f"sqlite:///{tmp_path / 'h.db'}") as history:
        daemon = Daemon(settings, history)
        assert not daemon.replicas
        assert daemon.request_run("big").accepted
        assert daemon.wait_idle(60)
        runs = history.runs("big")
        rows = Leases(history, 60).rows(runs[0].id)
        with History.open(f"sqlite:///{tmp_path / 'ref.db'}") as ref:
            reference = run_check(check.model_copy(update={"shards": 1}), ref)
    assert len(runs) == 1 and runs[0].state == "finished" and runs[0].outcome == "failed"
    assert sorted(rows) == [MERGE, 0, 1, 2] and all(r["attempts"] == 1 for r in rows.values())
    assert runs[0].files_verified == reference.files_verified
    assert daemon.status().shard_events is None  # the metrics series are for PostgreSQL replicas
    daemon.stop(5)


def test_the_merge_row_ends_with_the_run_in_one_transaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process killed between finishing the run and completing its merge lease once left the merge row
    `running` for ever under a finished run (CI, test_three_daemons_one_killed): both are one transaction."""
    from reversib import history as history_module
    from reversib.model import Outcome, RunResult, RunState

    now = [1_800_000_000.0]
    with History.open(f"sqlite:///{tmp_path / 'h.db'}", clock=lambda: now[0]) as history:
        run_id = history.start_run(check_id="c", check_name="c", trigger="schedule")
        a = Leases(history, 10, owner="a")
        a.ensure(run_id, 1)
        assert a.claim(run_id, 0) and a.complete(run_id, 0, {}) and a.claim(run_id, MERGE)
        result = RunResult(check_id="c", check_name="c", run_id=run_id, outcome=Outcome.PASSED,
                           started_at=now[0], finished_at=now[0] + 1, state=RunState.FINISHED)

        def dies(*_: object) -> None:  # the process fails after the run row was written, before the commit
            raise RuntimeError("killed")

        with monkeypatch.context() as m:
            m.setattr(history_module._chain, "link_run", dies)
            with pytest.raises(RuntimeError):
                history.finish_run(result)
        assert history.get_run(run_id).state == "running"  # type: ignore[union-attr]
        assert a.rows(run_id)[MERGE]["state"] == "running"  # rolled back together: still taken over later
        history.finish_run(result)
        rows = a.rows(run_id)
        assert history.get_run(run_id).state == "finished"  # type: ignore[union-attr]
        assert {s: r["state"] for s, r in rows.items()} == {0: "done", MERGE: "done"}
        assert rows[MERGE]["lease_until"] is None and rows[MERGE]["result"] == {"ended": "finished"}
        assert a.open_work() == []


def test_a_run_of_a_removed_check_is_abandoned_once_idle_for_a_lease(tmp_path: Path) -> None:
    """No replica has the check any more: its run is marked interrupted one lease after the last change to
    its shards, naming the shards not verified; a live lease, or a `verify-now --shard` run, is left alone."""
    from reversib.shards import Replicas

    now = [1_800_000_000.0]
    with History.open(f"sqlite:///{tmp_path / 'h.db'}", clock=lambda: now[0]) as history:
        run_id = history.start_run(check_id="gone", check_name="gone", trigger="schedule")
        cli_run = history.start_run(check_id="gone", check_name="gone", trigger="cli")
        a = Leases(history, 10, owner="a")
        for r in (run_id, cli_run):
            a.ensure(r, 3)
        assert a.claim(run_id, 0) and a.complete(run_id, 0, {})
        assert a.claim(run_id, 1)  # a holds shard 1; shard 2 pending
        replicas = Replicas(history, 10, clock=lambda: now[0])
        assert not replicas.abandon("gone", run_id)
        now[0] += 9  # a's lease still live
        assert not replicas.abandon("gone", run_id) and history.get_run(run_id).state == "running"  # type: ignore[union-attr]
        now[0] += 12  # a's lease passed 11 s ago, shard 2 untouched for 21 s
        assert replicas.abandon("gone", run_id) and not replicas.abandon("gone", cli_run)
        run = history.get_run(run_id)
        assert run is not None and run.state == "interrupted" and run.outcome == "error"
        assert run.error is not None and "removed from the configuration" in run.error and "1, 2 of 3" in run.error
        assert all(r["state"] == "done" for r in a.rows(run_id).values() if r["shard"] != MERGE)
        assert [w[1] for w in a.open_work()] == ["gone"]  # only the command-line run, left to its processes
        assert history.get_run(cli_run).state == "running"  # type: ignore[union-attr]


def test_the_daemon_abandons_the_runs_of_a_removed_check(tmp_path: Path) -> None:
    """A daemon on SQLite whose configuration no longer has a check: the run it left with shards pending
    is marked interrupted by the poller (started because open work exists) after one lease."""
    from reversib.config import load_settings
    from reversib.daemon import Daemon

    root = _export(tmp_path)
    settings = load_settings(_config(tmp_path, root, "10MB"))
    settings = dataclasses.replace(
        settings, checks=[settings.checks[0].model_copy(update={"schedule": None})],
        daemon=settings.daemon.model_copy(update={"daemon": settings.daemon.daemon.model_copy(update={"lease": 1.0})}))
    with History.open(f"sqlite:///{tmp_path / 'h.db'}") as history:
        run_id = history.start_run(check_id="gone", check_name="gone", trigger="schedule")
        Leases(history, 1.0).ensure(run_id, 2)
        daemon = Daemon(settings, history)
        daemon.start(catch_up=False)
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and history.get_run(run_id).state == "running":  # type: ignore[union-attr]
                time.sleep(0.2)
        finally:
            daemon.stop(5)
        run = history.get_run(run_id)
    assert run is not None and run.state == "interrupted" and run.error is not None
    assert "shard(s) 0, 1 of 2 not verified" in run.error


def test_shards_that_read_different_manifests_merge_as_an_error(tmp_path: Path) -> None:
    """The partition is cut from the manifest: shards that saw two manifests may have verified an entry
    twice or never, so the merged run is an error saying so, never a pass."""
    from reversib.config import CheckConfig
    from reversib.shards import _merge

    check = CheckConfig.model_validate({"version": 1, "id": "c", "name": "c", "source": {"url": str(tmp_path)}})
    with History.open(f"sqlite:///{tmp_path / 'h.db'}") as history:
        run_id = history.start_run(check_id="c", check_name="c", trigger="cli")
        leases = Leases(history, 10)
        leases.ensure(run_id, 2)
        for k, digest in ((0, "a" * 64), (1, "b" * 64)):
            assert leases.claim(run_id, k)
            assert leases.complete(run_id, k, {"findings": [], "tiers": {"downloaded": 1}, "files_verified": 1,
                                               "manifest_digest": digest})
        assert leases.claim(run_id, MERGE)
        from reversib.sources.base import CancelToken

        result = _merge(check, history, leases, run_id, time.time, CancelToken())
    assert result.outcome.value == "error" and result.error is not None
    assert "manifest changed while the run's shards ran (2 different manifests" in result.error


def test_random_picks_are_not_derived_from_the_run_id(tmp_path: Path) -> None:
    """A scheduled run's id is sha256(check id, slot): its shards once seeded their random draws with it, so two
    independent histories picked the same entries, and a provider knowing the check id and the schedule could
    predict the coverage sample and the challenge blocks.  The seed is drawn when the run's rows are created and
    read by every shard."""
    from reversib.shards import run_replicated, slot_run_id
    from tests.scale.helpers import check_config, make_sized_export

    root = tmp_path / "export"
    make_sized_export(root, 40)
    check = check_config(root, coverage={"period": "7d", "budget_share": 0.2})
    slot = 1_800_000_000.0
    picked = []
    for name in ("a", "b"):
        with History.open(f"sqlite:///{tmp_path / f'{name}.db'}") as history:
            result = run_replicated(check, history, scheduled_for=slot)
            assert result is not None and result.run_id == slot_run_id("scale", slot)
            assert result.outcome.value == "passed"
            picked.append({s.path for s in history.entry_states("scale")})
    assert 0 < len(picked[0]) < 40 and 0 < len(picked[1]) < 40
    assert picked[0] != picked[1]

    with History.open(f"sqlite:///{tmp_path / 'c.db'}") as history:
        a, b = Leases(history, 10, owner="a"), Leases(history, 10, owner="b")
        a.ensure("r1", 3)
        b.ensure("r1", 3)  # a second process joining the run keeps the first one's seed
        a.ensure("r2", 3)
        assert a.seed("r1") == b.seed("r1") is not None and len(a.seed("r1") or "") == 32
        assert a.seed("r2") != a.seed("r1")


def _one_shard_done(history: History, leases: Leases) -> str:
    run_id = history.start_run(check_id="scale", check_name="scale", trigger="cli")
    leases.ensure(run_id, 1)
    assert leases.claim(run_id, 0) and leases.complete(run_id, 0, {"files_verified": 1})
    return run_id


def test_a_long_merge_keeps_its_lease(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The merge row's lease was never renewed: a merge outlasting it was claimed by a second process."""
    import threading

    from reversib import shards
    from reversib.sources.base import CancelToken
    from tests.scale.helpers import check_config

    original = shards._merge

    def slow(*args: Any) -> Any:
        time.sleep(2.0)  # more than three leases
        return original(*args)

    monkeypatch.setattr(shards, "_merge", slow)
    with History.open(f"sqlite:///{tmp_path / 'h.db'}") as history:
        a, b = Leases(history, 0.6, owner="a"), Leases(history, 0.6, owner="b")
        run_id = _one_shard_done(history, a)
        stolen: list[bool] = []
        stop = threading.Event()

        def other() -> None:
            while not stop.wait(0.1):
                stolen.append(b.claim(run_id, MERGE))

        thread = threading.Thread(target=other)
        thread.start()
        try:
            result = shards._work(check_config(tmp_path), history, a, run_id, 0, 1, time.time, CancelToken(), 0.05,
                                  wait=True)
        finally:
            stop.set()
            thread.join()
    assert result is not None and result.files_verified == 1
    assert stolen and not any(stolen)


def test_a_merge_that_lost_the_race_is_no_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes finishing the same run at once: the database keeps one (uq_chain_links_run); the other once
    crashed with the raw IntegrityError instead of returning the stored run."""
    from reversib import shards
    from reversib.sources.base import CancelToken
    from tests.scale.helpers import check_config

    with History.open(f"sqlite:///{tmp_path / 'h.db'}") as history:
        a = Leases(history, 60, owner="a")
        run_id = _one_shard_done(history, a)
        assert a.claim(run_id, MERGE)
        finish = history.finish_run

        def raced(result: Any, *more: Any) -> Any:
            other = dataclasses.replace(result, files_verified=7)
            finish(other)  # the other process's merge commits first ...
            raise sa.exc.IntegrityError("INSERT INTO chain_links ...", {}, Exception("uq_chain_links_run"))

        monkeypatch.setattr(history, "finish_run", raced)
        result = shards._merge(check_config(tmp_path), history, a, run_id, time.time, CancelToken())
    assert result.state.value == "finished" and result.files_verified == 7  # ... and is the run's verdict


def test_size_only_entries_are_counted_once_per_sharded_run(tmp_path: Path) -> None:
    """`fixity.enabled: false`: every shard recorded every entry's size comparison, so three shards reported
    18 entries verified out of 6."""
    from reversib.shards import run_sharded
    from tests.scale.helpers import check_config, make_sized_export

    root = tmp_path / "export"
    make_sized_export(root, 6)
    check = check_config(root, fixity={"enabled": False})
    with History.open(f"sqlite:///{tmp_path / 'h.db'}") as history:
        single = run_check(check, history)
        merged = run_sharded(check, history, shard=(0, 3), run_id="r" * 32)
    assert single.files_verified == single.manifest_entries == 6 and single.tiers == {"size_only": 6}
    assert merged.outcome.value == "passed"
    assert (merged.files_verified, merged.manifest_entries, merged.tiers) == (6, 6, {"size_only": 6})


def test_an_archive_check_cannot_be_sharded(tmp_path: Path) -> None:
    """An archive is one stream that every shard would decrypt and read whole (three shards reported 18
    members verified out of 6): `--shard K/N` with N > 1 is refused, as `shards: N` is in a check file."""
    from reversib.shards import ShardError, run_sharded
    from tests.archives.conftest import archive_check, make_tar, make_tree

    tree = make_tree(tmp_path, {f"m{i}.txt": f"member {i}\n".encode() for i in range(6)})
    drop = tmp_path / "drop"
    drop.mkdir()
    make_tar(tree, drop / "export.tar.zst")
    check = archive_check(drop, {"path": "export.tar.zst"})
    with History.open(f"sqlite:///{tmp_path / 'h.db'}") as history:
        with pytest.raises(ShardError, match="cannot be split into shards"):
            run_sharded(check, history, shard=(0, 3), run_id="a" * 32)
        one = run_sharded(check, history, shard=(0, 1), run_id="b" * 32)
    assert one.outcome.value == "passed" and (one.files_verified, one.tiers) == (6, {"downloaded": 6})
    with pytest.raises(ValueError, match="cannot be combined with archive"):
        archive_check(drop, {"path": "export.tar.zst"}, shards=3)
