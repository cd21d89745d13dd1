"""Suite `scale` of bench/run.py: large manifests, stored checksums on S3, replicas (docs/scale.md).

Cases:

* `manifest-1m`: a SHA256SUMS of 1,000,000 entries (smoke: 5,000) against a local export of as many
  empty files in 1,000 folders, completeness only (`fixity.enabled: false`): the listing compared with
  the manifest.  Time and peak RSS (targets: < 60 s, < 1 GB).  Anchor: GNU `find -type f` listing the
  same tree (the floor of any listing-based check).
* `s3-stored`: 20,000 objects x 4 KiB (smoke: 100) on the local moto endpoint, uploaded with SHA-256
  checksums, verified by their stored checksums (`fixity.accept: [stored_checksum]`, no download):
  objects/s and client CPU per object.  Anchor: `rclone check --one-way` (sizes and MD5 from the
  listing against the local copy), when rclone is installed.
* `replicas`: one export of 96 x 512 KiB (smoke: 24 x 64 KiB) on the local moto endpoint, verified by 1, 2
  and 3 `reversib run` daemons (replicas) on one fresh PostgreSQL history, one check `shards: 12` on an
  `every: 1h` schedule whose slot falls 2 s after every daemon is ready (bench/replicas.py).  Each replica
  reaches the endpoint through its own TCP proxy capping the bytes sent back to it at 2 MB/s
  (bench/throttle_proxy.py; `AWS_ENDPOINT_URL_S3` per daemon), so the speed-up shows coordination, not
  cores.  The figure is the run's `finished_at - scheduled_for` from the history (slot to merged run), not
  the process wall time (daemon start-up, wait for the slot, shutdown: in the notes).  Every daemon must
  see one run of that slot, passed, every file verified; the shards completed add up to 12, one merge,
  and the proxies carried the export once.  Anchor: 1 replica (targets: >= 1.8x with 2, >= 2.5x with 3).

Registered into bench/run.py by `install(harness_module)`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
EMPTY = hashlib.sha256(b"").hexdigest()


def install(h: ModuleType) -> None:
    import suite_s3

    cases = [h.Case("manifest-1m", "1,000,000-entry SHA256SUMS vs a local listing, completeness only (smoke: 5,000); "
                                   "anchor: find -type f"),
             h.Case("s3-stored", "20,000 x 4 KiB on moto verified by stored SHA-256 checksums (smoke: 100); "
                                 "anchor: rclone check (listing MD5s)"),
             h.Case("replicas", "1, 2, 3 daemons sharing a scheduled run of 12 shards on moto, each through its "
                                "own 2 MB/s proxy; slot -> finished; anchor: 1 replica")]

    @h.register("scale", "large manifests, S3 stored checksums and replicas on one PostgreSQL history "
                         "(docs/scale.md)", cases)
    def suite_scale(ctx: Any, selected: list[str]) -> Any:
        res = h.SuiteResult()
        if ctx.tools.reversib is None:
            raise h.BenchError("reversib is needed by the scale suite")
        for case in selected:
            if case == "manifest-1m":
                _manifest(h, ctx, res)
            elif case == "s3-stored":
                _s3_stored(h, suite_s3, ctx, res)
            elif case == "replicas":
                _replicas(h, suite_s3, ctx, res)
        return res


def _config(folder: Path, check: dict[str, Any]) -> Path:
    (folder / "checks").mkdir(parents=True, exist_ok=True)
    (folder / "checks" / f"{check['id']}.yaml").write_text(yaml.safe_dump({"version": 1, "name": check["id"],
                                                                           **check}))
    cfg = folder / "reversib.yaml"
    cfg.write_text(yaml.safe_dump({"version": 1, "checks_dir": "checks"}))
    return cfg


def _run_doc(s: Any) -> dict[str, Any] | str:
    try:
        doc = json.loads(s.stdout)
        return dict(doc["runs"][0])
    except (ValueError, KeyError, IndexError, TypeError):
        return f"exit code {s.returncode}, stdout is not a run document: {s.stdout[-300:]!r} {s.stderr[-300:]!r}"


def _add_target(h: ModuleType, res: Any, case: str, tool: str, text: str, ok: bool | None, detail: str) -> None:
    tid = f"{case}/{len([t for t in res.targets if t.case == case]) + 1}"
    status = "SKIP" if ok is None else "PASS" if ok else "FAIL"
    res.targets.append(h.Target(tid, "scale", case, tool, text, status, detail))
    row = h.find_row(res.rows, case, tool)
    if row is not None:
        row.targets.append(f"{tid}:{status}")


# ------------------------------------------------------------------------------------------ manifest-1m


def _build_empty_tree(h: ModuleType, root: Path, n: int) -> Path:
    """`n` empty files in 1,000 folders (`plain/`) and their SHA256SUMS, kept between runs."""
    marker = root / "bench-spec.json"
    spec = {"format": 1, "files": n}
    plain = root / "plain"
    if marker.exists() and json.loads(marker.read_text()) == spec:
        h.log(f"manifest-1m: reusing {root}")
        return plain
    if root.exists():
        shutil.rmtree(root)
    plain.mkdir(parents=True)
    h.log(f"manifest-1m: writing {n:,} empty files under {plain}")
    dirs = min(1000, max(1, n // 100))
    for d in range(dirs):
        (plain / f"d{d:03d}").mkdir()
    with open(plain / "SHA256SUMS", "w") as sums:
        for i in range(n):
            rel = f"d{i % dirs:03d}/f{i:07d}"
            os.close(os.open(plain / rel, os.O_WRONLY | os.O_CREAT, 0o644))
            sums.write(f"{EMPTY}  {rel}\n")
    marker.write_text(json.dumps(spec))
    return plain


def _manifest(h: ModuleType, ctx: Any, res: Any) -> None:
    n = 5_000 if ctx.smoke else 1_000_000
    plain = _build_empty_tree(h, ctx.data_dir / "scale" / "manifest-1m", n)
    res.datasets.append(f"scale/manifest-1m: {n:,} empty files in 1,000 folders, SHA256SUMS of {n:,} lines")
    cfg = _config(ctx.scratch / "cfg-manifest", {"id": "m1m", "source": {"url": str(plain)},
                                                 "manifest": {"path": "SHA256SUMS"}, "fixity": {"enabled": False}})

    def check(s: Any) -> str | None:
        doc = _run_doc(s)
        if isinstance(doc, str):
            return doc
        got = (doc.get("outcome"), doc.get("files_listed"), doc.get("manifest_entries"))
        if got != ("passed", n, n):  # the manifest itself is not counted as listed
            return f"outcome, files listed, manifest entries: {got}"
        return None

    find = shutil.which("find") or "find"
    tools = [h.Tool("find", lambda _: [find, str(plain), "-type", "f"]),
             h.Tool("reversib", lambda d: [ctx.tools.reversib, "verify-now", "m1m", "--config", str(cfg), "--history",
                                           h._history_url(d, ctx.tools.reversib), "--json", "--no-progress", "-q"],
                    check=check)]
    samples = h.measure(ctx, tools)
    rows = h.make_rows("scale", "manifest-1m", tools, samples, "find", "files/s", n, 0, h._commands(tools))
    res.rows += rows
    mine = h.find_row(rows, "manifest-1m", "reversib")
    if not ctx.smoke:
        _add_target(h, res, "manifest-1m", "reversib", "1M entries: under 60 s", mine.wall_s < 60,
                    f"{mine.wall_s:.1f} s")
        _add_target(h, res, "manifest-1m", "reversib", "1M entries: peak RSS under 1 GB", mine.peak_rss_mb < 1024,
                    f"{mine.peak_rss_mb:.0f} MB")


# ------------------------------------------------------------------------------------------ s3-stored


def _upload_sha256(s3mod: ModuleType, url: str, plain: Path) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=s3mod.KEY_ID,
                          aws_secret_access_key=s3mod.SECRET,
                          config=Config(s3={"addressing_style": "path"}, max_pool_connections=16,
                                        retries={"mode": "standard", "max_attempts": 10}))
    client.create_bucket(Bucket=s3mod.BUCKET)
    files = [p for p in sorted(plain.rglob("*")) if p.is_file()]

    def put(p: Path) -> None:
        client.put_object(Bucket=s3mod.BUCKET, Key=s3mod.PREFIX + p.relative_to(plain).as_posix(), Body=p.read_bytes(),
                          ChecksumAlgorithm="SHA256")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, files))


def _s3_stored(h: ModuleType, s3mod: ModuleType, ctx: Any, res: Any) -> None:
    if ctx.tools.sha256sum is None:
        raise h.BenchError("sha256sum is needed by scale/s3-stored")
    spec = h.DatasetSpec("scale-s3-stored", 100 if ctx.smoke else 20_000, 4 * h.KiB)
    ds = h.build_dataset(spec, ctx.data_dir / "scale" / "s3-stored", ctx.tools.sha256sum)
    url = f"s3://{s3mod.BUCKET}/{s3mod.PREFIX.rstrip('/')}"
    cfg = _config(ctx.scratch / "cfg-s3", {"id": "s3s", "source": {"url": url}, "manifest": {"path": "SHA256SUMS"},
                                           "fixity": {"accept": ["stored_checksum"]}})

    def check(s: Any) -> str | None:
        doc = _run_doc(s)
        if isinstance(doc, str):
            return doc
        if doc.get("outcome") != "passed" or doc.get("tiers") != {"stored_checksum": spec.files}:
            return f"outcome {doc.get('outcome')}, tiers {doc.get('tiers')}"
        return None

    with s3mod._Endpoint(ctx.scratch) as ep:
        import time

        t0 = time.perf_counter()
        _upload_sha256(s3mod, ep.url, ds.plain)
        h.log(f"scale/s3-stored: uploaded {spec.describe()} with SHA-256 checksums in {time.perf_counter() - t0:.1f} s")
        res.datasets.append(f"scale/s3-stored: {spec.describe()} on moto, SHA-256 checksums stored at upload")
        env = {**{k: v for k, v in ctx.env.items() if not k.startswith(("AWS_", "RCLONE_"))}, **s3mod._aws_env(ep.url)}
        tools = []
        rclone = shutil.which("rclone")
        if rclone is not None:
            tools.append(h.Tool("rclone-check", lambda _: [rclone, "check", "--one-way", "--exclude", "SHA256SUMS",
                                                           str(ds.plain), f"benchs3:{s3mod.BUCKET}/"
                                                                          f"{s3mod.PREFIX.rstrip('/')}"]))
        tools.append(h.Tool("reversib", lambda d: [ctx.tools.reversib, "verify-now", "s3s", "--config", str(cfg),
                                                   "--history", h._history_url(d, ctx.tools.reversib), "--json",
                                                   "--no-progress", "-q"], check=check))
        samples = h.measure(dataclasses.replace(ctx, env=env), tools)
    anchor = "rclone-check" if rclone is not None else "reversib"
    rows = h.make_rows("scale", "s3-stored", tools, samples, anchor, "files/s", spec.files, spec.total_bytes,
                       h._commands(tools))
    res.rows += rows
    for r in rows:
        res.notes.append(f"scale/s3-stored {r.tool}: {r.rate or 0:.0f} objects/s, client CPU {r.cpu_s:.2f} s = "
                         f"{r.cpu_s / spec.files * 1000:.3f} ms per object")
    if rclone is None:
        res.notes.append("scale/s3-stored: rclone not on PATH (Debian package `rclone`): no anchor row")


# ------------------------------------------------------------------------------------------ replicas


def _pg_reachable(h: ModuleType) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN, connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as exc:
        raise h.BenchError(f"scale/replicas needs PostgreSQL at 127.0.0.1:5432 (user postgres): {exc}") from None
    finally:
        admin.dispose()


def _replicas(h: ModuleType, s3mod: ModuleType, ctx: Any, res: Any) -> None:
    if ctx.tools.sha256sum is None:
        raise h.BenchError("sha256sum is needed by scale/replicas")
    _pg_reachable(h)
    # 12 shards of equal bytes (equal files, cut by count): 12, 6 and 4 shards for each of 1, 2, 3 replicas.
    spec = h.DatasetSpec("scale-replicas", 24 if ctx.smoke else 96, (64 * h.KiB) if ctx.smoke else 512 * h.KiB,
                         per_dir=1000)
    rate = 2_000_000  # bytes/s per replica: transfer, not the per-shard overhead (~0.2 s), dominates
    ds = h.build_dataset(spec, ctx.data_dir / "scale" / "replicas", ctx.tools.sha256sum)
    url = f"s3://{s3mod.BUCKET}/{s3mod.PREFIX.rstrip('/')}"

    def check(s: Any) -> str | None:
        if s.returncode != 0:
            return f"exit code {s.returncode}: {s.stderr[-600:]}"
        if f"files {spec.files} bytes {spec.total_bytes} outcome passed" not in s.stdout:
            return f"unexpected result {s.stdout.strip()!r}"
        if _SLOT_TO_FINISHED.search(s.stdout) is None:
            return f"no slot_to_finished_s in {s.stdout.strip()!r}"
        return None

    tools = [h.Tool(f"replicas-{r}", lambda d, r=r: [ctx.tools.python, str(BENCH_DIR / "replicas.py"),
                                                     ctx.tools.reversib, "--pg-admin", PG_ADMIN, "--workdir", str(d),
                                                     "--source", url, "--manifest", "SHA256SUMS",
                                                     "--replicas", str(r), "--shards", "12", "--rate", str(rate),
                                                     "--files", str(spec.files), "--bytes", str(spec.total_bytes)],
                    check=check)
             for r in (1, 2, 3)]
    with s3mod._Endpoint(ctx.scratch) as ep:
        s3mod._upload(ep.url, ds.plain)
        res.datasets.append(f"scale/replicas: {spec.describe()} on moto, 12 shards, each replica through its own "
                            f"TCP proxy capped at {rate / 1e6:g} MB/s")
        env = {**{k: v for k, v in ctx.env.items() if not k.startswith(("AWS_", "RCLONE_"))}, **s3mod._aws_env(ep.url)}
        samples = h.measure(dataclasses.replace(ctx, env=env), tools)
    # The figure is the slot -> run finished time each replicas.py reports (daemon start-up, the wait for the
    # slot and the shutdown are not the run); the tool's own wall time goes to the notes.
    for name, got in list(samples.items()):
        res.notes.append(f"scale/replicas {name}: process wall (start-up, slot wait, run, shutdown) "
                         + ", ".join(f"{s.wall_s:.1f}" for s in got) + " s; "
                         + "; ".join(_summary(s.stdout) for s in got))
        samples[name] = [_slot_sample(s) for s in got]
    rows = h.make_rows("scale", "replicas", tools, samples, "replicas-1", "MB/s", spec.files, spec.total_bytes,
                       h._commands(tools))
    res.rows += rows
    one = h.find_row(rows, "replicas", "replicas-1")
    for r, goal in ((2, 1.8), (3, 2.5)):
        row = h.find_row(rows, "replicas", f"replicas-{r}")
        speedup = one.wall_s / row.wall_s
        _add_target(h, res, "replicas", f"replicas-{r}", f"{r} replicas: >= {goal}x one replica",
                    None if ctx.smoke else speedup >= goal, f"{speedup:.2f}x")


_SLOT_TO_FINISHED = re.compile(r"slot_to_finished_s (\d+(?:\.\d+)?)")


def _summary(stdout: str) -> str:
    m = re.search(r"lag_s (\S+) shards (\S+) proxied_MB (\S+)", stdout)
    return f"lag {m[1]} s, shards {m[2]}, proxied MB {m[3]}" if m else "?"


def _slot_sample(s: Any) -> Any:
    """The sample with the run's slot -> finished seconds as its wall time (others' CPU scaled to it)."""
    m = _SLOT_TO_FINISHED.search(s.stdout)
    assert m is not None  # check() made sure
    wall = float(m[1])
    return dataclasses.replace(s, wall_s=wall, others_cpu_s=s.others_cpu_s * wall / max(s.wall_s, 1e-9))
