"""Suite `s3` of bench/run.py: the S3 source against a local S3 endpoint (moto's server, 127.0.0.1).

Cases (each a fresh endpoint process, data uploaded once per run):

* `large`: one 1 GiB object (smoke: 8 MiB); MB/s.  Tools: reversib (`verify-now --source s3://...`),
  `rclone check --download` (Debian's rclone, an s3 remote on the same endpoint, against the local copy),
  and `s3-loop` (bench/s3_loop.py: a plain sequential boto3 download + sha256 loop, the anchor); `floor`
  (bench/rawhash.py --import boto3,pydantic,sqlalchemy --threads 1: those imports, then SHA-256 of the local
  copy -- no network; SHA-256 of one stream does not split across cores): the least any tool on those
  libraries that hashes the object itself takes; `floor-net` (bench/s3_floor.py: the same imports, then one
  GetObject read by one thread and hashed by another -- the network floor of such a tool, with no
  configuration, manifest or history) and `download-only` (the same without hashing).  rclone compares
  bytes and computes no SHA-256.
* `small`: 10,000 objects x 4 KiB (smoke: 60) behind 10 ms of added latency per request (as a real
  provider has; moto alone serves only ~250 small requests/s, whatever the concurrency); objects/s.

For `small` the endpoint runs on cheroot (keep-alive, as real S3; werkzeug's development server closes every
connection and caps moto near 250 small requests/s on 2 cores, whatever the tool); for `large` on werkzeug
(cheroot sends moto's 1 GiB body at ~15 MB/s).
Every tool gets the same boto3 environment (`AWS_ENDPOINT_URL_S3`, keys, `AWS_RESPONSE_CHECKSUM_VALIDATION=
when_required`).  Notes give each tool's client CPU seconds per object (user+sys from wait4).
Registered into bench/run.py by `install(harness_module)`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
KEY_ID, SECRET = "AKIABENCHREVERSIB001", "bench-secret-not-real"
BUCKET, PREFIX = "reversib-bench", "export/"
LATENCY_S = 0.010
# The endpoint's HTTP server per case: cheroot keeps connections alive (as real S3 does) where werkzeug closes
# each one, which caps moto near 250 small requests/s; but cheroot sends a 1 GiB body at ~15 MB/s.
SERVER = {"large": "werkzeug", "small": "cheroot"}


def install(h: ModuleType) -> None:
    """Register the suite into the harness module `h` (bench/run.py, whatever name it runs under)."""
    cases = [h.Case("large", "one 1 GiB object (smoke: 8 MiB); MB/s; anchor: sequential boto3 loop"),
             h.Case("small", "10,000 objects x 4 KiB (smoke: 60) behind +10 ms per request; files/s; anchor: "
                             "sequential boto3 loop")]
    full = {"large": h.DatasetSpec("s3-large", 1, h.GiB), "small": h.DatasetSpec("s3-small", 10_000, 4 * h.KiB)}
    smoke = {"large": h.DatasetSpec("s3-large", 1, 8 * h.MiB), "small": h.DatasetSpec("s3-small", 60, 4 * h.KiB)}

    @h.register("s3", "the S3 source on a local moto endpoint vs rclone check --download and a sequential boto3 "
                      "loop (anchor)", cases)
    def suite_s3(ctx: Any, selected: list[str]) -> Any:
        res = h.SuiteResult()
        if ctx.tools.reversib is None or ctx.tools.sha256sum is None:
            raise h.BenchError("reversib and sha256sum are needed by the s3 suite")
        rclone = shutil.which("rclone")
        if rclone is None:
            res.notes.append("rclone rows skipped: rclone not on PATH (Debian package `rclone`)")
        for case in selected:
            spec = (smoke if ctx.smoke else full)[case]
            ds = h.build_dataset(spec, ctx.data_dir / "s3" / case, ctx.tools.sha256sum)
            with _Endpoint(ctx.scratch, SERVER[case]) as ep:
                t0 = time.perf_counter()
                _upload(ep.url, ds.plain)
                h.log(f"s3/{case}: uploaded {spec.describe()} in {time.perf_counter() - t0:.1f} s")
                res.datasets.append(f"s3/{case}: {spec.describe()} uploaded to moto at {ep.url}")
                if case == "small":
                    ep.configure({"latency": LATENCY_S})
                env = {**{k: v for k, v in ctx.env.items() if not k.startswith(("AWS_", "RCLONE_"))},
                       **_aws_env(ep.url)}
                tools = _tools(h, ctx, ds, rclone)
                samples = h.measure(dataclasses.replace(ctx, env=env), tools)
            unit = "MB/s" if case == "large" else "files/s"
            rows = h.make_rows("s3", case, tools, samples, "s3-loop", unit, spec.files, spec.total_bytes,
                               h._commands(tools))
            res.rows += rows
            for r in rows:
                res.notes.append(f"s3/{case} {r.tool}: client CPU {r.cpu_s:.2f} s = "
                                 f"{r.cpu_s / spec.files * 1000:.3f} ms per object")
        res.targets = _targets(h, res.rows, res.notes)
        return res


def _aws_env(url: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL_S3": url, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
            "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_EC2_METADATA_DISABLED": "true",
            "RCLONE_CONFIG_BENCHS3_TYPE": "s3", "RCLONE_CONFIG_BENCHS3_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCHS3_ENDPOINT": url, "RCLONE_CONFIG_BENCHS3_ACCESS_KEY_ID": KEY_ID,
            "RCLONE_CONFIG_BENCHS3_SECRET_ACCESS_KEY": SECRET, "RCLONE_CONFIG_BENCHS3_REGION": "us-east-1",
            "RCLONE_CONFIG_BENCHS3_FORCE_PATH_STYLE": "true"}


def _tools(h: ModuleType, ctx: Any, ds: Any, rclone: str | None) -> list[Any]:
    spec = ds.spec
    reversib = ctx.tools.reversib
    url = f"s3://{BUCKET}/{PREFIX.rstrip('/')}"
    tools = [
        h.Tool("s3-loop", lambda _: [ctx.tools.python, str(BENCH_DIR / "s3_loop.py"), "--bucket", BUCKET,
                                     "--prefix", PREFIX, "--manifest", str(ds.sums)],
               check=h._rawhash_check(spec.files, spec.total_bytes)),
        h.Tool("reversib", lambda d: [reversib, "verify-now", "--source", url, "--manifest", f"{url}/SHA256SUMS",
                                      "--json", "--history", h._history_url(d), "--no-progress", "--quiet"],
               check=h._reversib_check(spec.files, spec.total_bytes, exact=True)),
    ]
    if spec.files == 1:  # large: SHA-256 of one stream does not split across cores
        tools.append(h.Tool("floor", lambda _: [ctx.tools.python, str(h.RAWHASH), "--import",
                                                "boto3,pydantic,sqlalchemy", "--root", str(ds.plain),
                                                "--manifest", str(ds.sums), "--threads", "1"],
                            check=h._rawhash_check(spec.files, spec.total_bytes)))
        digest, _, name = ds.sums.read_text(encoding="utf-8").splitlines()[0].partition("  ")
        for tool, extra in (("floor-net", []), ("download-only", ["--no-hash"])):
            tools.append(h.Tool(tool, lambda _, extra=extra: [
                ctx.tools.python, str(BENCH_DIR / "s3_floor.py"), "--bucket", BUCKET, "--key", PREFIX + name,
                "--digest", digest, "--import", "boto3,pydantic,sqlalchemy", *extra],
                check=h._rawhash_check(spec.files, spec.total_bytes)))
    if rclone is not None:
        tools.append(h.Tool("rclone-check-download",
                            lambda _: [rclone, "check", "--download", "--one-way", "--exclude", "SHA256SUMS",
                                       str(ds.plain), f"benchs3:{BUCKET}/{PREFIX.rstrip('/')}"]))
    return tools


def _targets(h: ModuleType, rows: list[Any], notes: list[str]) -> list[Any]:
    targets: list[Any] = []

    def add(case: str, tool: str, text: str, ok: bool | None, detail: str) -> None:
        tid = f"S{len(targets) + 1}"
        status = "SKIP" if ok is None else "PASS" if ok else "FAIL"
        targets.append(h.Target(tid, "s3", case, tool, text, status, detail))
        row = h.find_row(rows, case, tool)
        if row is not None:
            row.targets.append(f"{tid}:{status}")

    large = {r.tool: r for r in rows if r.case == "large"}
    small = {r.tool: r for r in rows if r.case == "small"}
    if "reversib" in large:
        mine = large["reversib"]
        for other in ("s3-loop", "rclone-check-download"):
            o = large.get(other)
            add("large", "reversib", f"large: reversib no slower than {other}",
                None if o is None else mine.wall_s <= o.wall_s,
                "row missing" if o is None else f"{mine.wall_s:.2f} s vs {o.wall_s:.2f} s")
    if "reversib" in small and "s3-loop" in small:
        mine, loop = small["reversib"], small["s3-loop"]
        add("small", "reversib", "small: reversib >= 4x faster than the sequential loop",
            loop.wall_s / mine.wall_s >= 4, f"{loop.wall_s / mine.wall_s:.2f}x faster")
        add("small", "reversib", "small: client CPU per object <= 0.7x the loop's",
            mine.cpu_s <= 0.7 * loop.cpu_s, f"{mine.cpu_s:.2f} s vs {loop.cpu_s:.2f} s "
                                            f"({mine.cpu_s / max(loop.cpu_s, 1e-9):.2f}x)")
    net, loop = large.get("floor-net"), large.get("s3-loop")
    if net is not None and loop is not None:
        notes.append(f"s3/large: floor-net (import boto3, pydantic, SQLAlchemy; one GetObject read by one thread "
                     f"and hashed by another: no configuration, manifest or history) {net.wall_s:.2f} s vs "
                     f"s3-loop {loop.wall_s:.2f} s" + (": the floor alone is slower than the loop"
                                                       if net.wall_s > loop.wall_s else ""))
    only, rcl = large.get("download-only"), large.get("rclone-check-download")
    if only is not None and rcl is not None:
        notes.append(f"s3/large: download-only (the same imports and GetObject, no hashing at all) {only.wall_s:.2f} s "
                     f"vs rclone-check-download {rcl.wall_s:.2f} s"
                     + (": no tool on these libraries gets the object from this endpoint as fast as rclone, even "
                        "without hashing it" if only.wall_s > rcl.wall_s else ""))
    floor, rclone = large.get("floor"), large.get("rclone-check-download")
    if floor is not None and rclone is not None:
        notes.append(f"s3/large: floor (import boto3, pydantic, SQLAlchemy; SHA-256 of the same object from the "
                     f"local disk, no network) {floor.wall_s:.2f} s vs rclone-check-download {rclone.wall_s:.2f} s "
                     f"(rclone compares bytes and computes no SHA-256)"
                     + (": the floor alone is slower" if floor.wall_s > rclone.wall_s else ""))
    for r in rows:
        if r.tool == "reversib":
            add(r.case, "reversib", f"{r.case}: reversib peak RSS < 200 MB", r.peak_rss_mb < 200,
                f"{r.peak_rss_mb:.1f} MB")
    return targets


class _Endpoint:
    """`python -m tests.s3.endpoint` (moto + fault layer) on 127.0.0.1, killed by its PID on exit."""

    def __init__(self, scratch: Path, server: str = "werkzeug") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="moto-", dir=scratch))
        self.server = server
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> _Endpoint:
        port_file = self.dir / "port"
        with open(self.dir / "log", "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.s3.endpoint", "--port-file", str(port_file),
                                          "--server", self.server],
                                         cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"moto endpoint did not start: {(self.dir / 'log').read_text()[-400:]}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port_file.read_text().strip()}"
        return self

    def configure(self, conf: dict[str, Any]) -> None:
        req = urllib.request.Request(self.url + "/_faults/config", data=json.dumps(conf).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _upload(url: str, plain: Path) -> None:
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=KEY_ID,
                          aws_secret_access_key=SECRET,
                          config=Config(s3={"addressing_style": "path"}, max_pool_connections=16,
                                        retries={"mode": "standard", "max_attempts": 10}))
    client.create_bucket(Bucket=BUCKET)
    files = [p for p in sorted(plain.rglob("*")) if p.is_file()]
    big = TransferConfig(multipart_threshold=8 << 30, max_concurrency=4)  # one part: a plain ETag

    def put(p: Path) -> None:
        client.upload_file(str(p), BUCKET, PREFIX + p.relative_to(plain).as_posix(), Config=big)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, files))
    os.sync()
