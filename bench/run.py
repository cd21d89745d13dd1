#!/usr/bin/env python3
"""reversib benchmark harness: every benchmark, one table format, ratios against a named anchor.

    .venv/bin/python bench/run.py                      # every suite, every case (minutes; builds data)
    .venv/bin/python bench/run.py --suite core --case large --repeat 5 --json bench/out/large.json
    .venv/bin/python bench/run.py --smoke              # tiny data, repeat 1, correctness only (CI)
    .venv/bin/python bench/run.py --list

A *suite* is a function registered in `SUITES` that builds what it needs, measures tools case by
case and returns rows (and targets).  Every tool runs as a subprocess (its start-up is included)
through a launcher that reports the tool's own peak RSS (see `Runner`); each measurement is the
median wall time of `--repeat` runs, interleaved tool by tool, after the data was read once so it
sits in the page cache.  Within a case every ratio is `tool wall / anchor wall` for the anchor
tool of that case, measured side by side in the same run.

Exit codes: 0 done; 1 a target was missed and `--strict` was given; 2 a tool failed to run or did
not verify correctly (the numbers would be meaningless, so this always fails loudly); 64 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_DATA_DIR = REPO / ".bench-data"
RAWHASH = BENCH_DIR / "rawhash.py"
KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
EXIT_OK, EXIT_TARGETS, EXIT_BROKEN, EXIT_USAGE = 0, 1, 2, 64


class BenchError(Exception):
    """A tool failed to run, or ran but did not verify correctly: the benchmark is invalid."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------

# Fallback launcher when GNU time is not installed.  It forks the tool, waits for it with
# os.wait4 and writes "<ru_maxrss KiB> <wall s>" to the file named by argv[1].
_PY_LAUNCHER = r"""
import os, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        os.write(2, f"launcher: cannot run {cmd[0]}: {exc}\n".encode())
    os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(out, "w") as f:
    f.write(f"{ru.ru_maxrss} {wall!r}\n")
sys.exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
"""


@dataclass(frozen=True)
class Sample:
    wall_s: float
    maxrss_kib: int
    returncode: int
    stdout: str
    stderr: str
    cpu_s: float = 0.0  # user + system time of the tool (and the launcher)
    others_cpu_s: float = 0.0  # CPU time other processes of the machine used meanwhile (/proc/stat)


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def busy_cpu_s() -> float | None:
    """CPU time all processes of the machine have used since boot (/proc/stat), None if unknown."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        v = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / _CLK_TCK


def others_busy(window: float = 0.3) -> float | None:
    """How many CPUs other processes keep busy right now (the harness sleeps meanwhile)."""
    b0 = busy_cpu_s()
    time.sleep(window)
    b1 = busy_cpu_s()
    return None if b0 is None or b1 is None else (b1 - b0) / window


def wait_idle(limit_s: float, threshold: float = 0.3) -> float | None:
    """Wait (up to limit_s) until other processes use less than `threshold` CPUs; return the last load."""
    deadline = time.monotonic() + limit_s
    said = False
    while True:
        load = others_busy()
        if load is None or load < threshold or time.monotonic() >= deadline:
            return load
        if not said:
            log(f"  machine busy (others use {load:.2f} CPUs): waiting up to {limit_s:.0f} s for it to settle")
            said = True
        time.sleep(0.5)


class Runner:
    """Runs one command and reports its wall time, exit code, output and *its own* peak RSS.

    The peak RSS of a child reported by `wait4` is at least the RSS high-water mark of the process
    that forked it (Linux carries the parent's `hiwater_rss` across fork/vfork + exec), so timing
    the tool straight from this harness would report the harness' own peak (it builds data in 64 MiB
    blocks) for every small tool.  The tool is therefore forked by a tiny launcher -- GNU
    `time -f %M` (about 1 MB) or, without it, a minimal Python (`python -S -I`, ~8 MB) -- and the
    launcher's `wait4` rusage is used.  `floor_mb` (the value reported for `/bin/true`) is the
    smallest peak a tool can show.  Wall time is taken around the launcher (GNU time: ~1 ms of
    extra fork/exec, the same for every tool) or inside it (Python launcher).
    """

    def __init__(self, scratch: Path, timeout: float, force_python: bool = False) -> None:
        self.scratch = scratch
        self.timeout = timeout
        self._n = 0
        self.kind = "python"
        gnu_time = shutil.which("time", path="/usr/bin:/bin:/usr/local/bin")
        if gnu_time and not force_python and self._gnu_time_works(gnu_time):
            self.kind = "gnu-time"
            self.gnu_time = gnu_time
        true = shutil.which("true") or "/bin/true"
        self.floor_mb = self.run([true], cwd=scratch).maxrss_kib / KiB

    def _gnu_time_works(self, gnu_time: str) -> bool:
        out = self.scratch / "time-probe"
        try:
            subprocess.run([gnu_time, "-f", "%M", "-o", str(out), "true"], check=True, capture_output=True,
                           timeout=10)
            return out.read_text().strip().splitlines()[-1].isdigit()
        except (OSError, subprocess.SubprocessError, IndexError):
            return False

    def describe(self) -> str:
        how = "GNU time -f %M" if self.kind == "gnu-time" else "python -S launcher + os.wait4"
        return f"{how}; RSS floor {self.floor_mb:.1f} MB"

    def run(self, cmd: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> Sample:
        self._n += 1
        rss_file = self.scratch / f"launch-{self._n}.rss"
        out_file = self.scratch / f"launch-{self._n}.out"
        err_file = self.scratch / f"launch-{self._n}.err"
        if self.kind == "gnu-time":
            argv = [self.gnu_time, "-f", "%M", "-o", str(rss_file), *cmd]
        else:
            argv = [sys.executable, "-S", "-I", "-c", _PY_LAUNCHER, str(rss_file), *cmd]
        timed_out = threading.Event()
        with open(out_file, "wb") as fo, open(err_file, "wb") as fe:
            busy0 = busy_cpu_s()
            t0 = time.perf_counter()
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                                    start_new_session=True)

            def kill() -> None:
                timed_out.set()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the session this Popen created, nothing else

            timer = threading.Timer(self.timeout, kill)
            timer.start()
            try:
                _, status, ru = os.wait4(proc.pid, 0)
            finally:
                timer.cancel()
            wall = time.perf_counter() - t0
            busy1 = busy_cpu_s()
        cpu = ru.ru_utime + ru.ru_stime
        others = max(0.0, busy1 - busy0 - cpu) if busy0 is not None and busy1 is not None else 0.0
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout = out_file.read_text(errors="replace")
        stderr = err_file.read_text(errors="replace")
        try:
            fields = rss_file.read_text().strip().splitlines()[-1].split()
            maxrss = int(fields[0])
            if self.kind == "python":
                wall = float(fields[1])
        except (OSError, IndexError, ValueError):
            reason = f"timed out after {self.timeout:.0f} s" if timed_out.is_set() else "launcher wrote no rusage"
            raise BenchError(f"{shlex.join(cmd)}: {reason} (exit {proc.returncode}); stderr: {_tail(stderr)}")
        for f in (rss_file, out_file, err_file):
            f.unlink(missing_ok=True)
        if timed_out.is_set():
            raise BenchError(f"{shlex.join(cmd)}: timed out after {self.timeout:.0f} s")
        return Sample(wall, maxrss, proc.returncode, stdout, stderr, cpu, others)


def _tail(text: str, lines: int = 8) -> str:
    tail = text.strip().splitlines()[-lines:]
    return " | ".join(tail) if tail else "(empty)"


@dataclass
class Tool:
    """One command of a case.  `argv` gets a fresh empty folder per repetition (history files...);
    `check` returns a problem (the run did not verify correctly) or None."""

    name: str
    argv: Callable[[Path], list[str]]
    cwd: Path | None = None  # None: the fresh per-repetition folder
    check: Callable[[Sample], str | None] = lambda s: None if s.returncode == 0 else f"exit code {s.returncode}"


def measure(ctx: Context, tools: Sequence[Tool]) -> dict[str, list[Sample]]:
    """Run every tool `ctx.repeat` times, interleaved (t1 t2 t3, t1 t2 t3...) so drift hits all alike."""
    samples: dict[str, list[Sample]] = {t.name: [] for t in tools}
    for rep in range(ctx.repeat):
        for tool in tools:
            if ctx.wait_idle > 0:
                wait_idle(ctx.wait_idle)
            rep_dir = Path(tempfile.mkdtemp(prefix=f"rep-{rep}-", dir=ctx.scratch))
            try:
                argv = tool.argv(rep_dir)
                sample = ctx.runner.run(argv, cwd=tool.cwd or rep_dir, env=ctx.env)
            finally:
                shutil.rmtree(rep_dir, ignore_errors=True)
            problem = tool.check(sample)
            if problem is not None:
                raise BenchError(f"{tool.name} did not verify correctly: {problem}\n  command: {shlex.join(argv)}\n"
                                 f"  stderr: {_tail(sample.stderr)}\n  stdout: {_tail(sample.stdout, 3)}")
            log(f"  {tool.name:<22} rep {rep + 1}/{ctx.repeat}: {sample.wall_s:8.3f} s  "
                f"{sample.maxrss_kib / KiB:7.1f} MB  cpu {sample.cpu_s:7.2f} s  others {sample.others_cpu_s:6.2f} s")
            samples[tool.name].append(sample)
    return samples


# --------------------------------------------------------------------------------------------
# Rows, targets, output
# --------------------------------------------------------------------------------------------

@dataclass
class Row:
    suite: str
    case: str
    tool: str
    wall_s: float  # median of the repetitions
    walls_s: list[float]
    rate: float | None  # in rate_unit
    rate_unit: str  # "MB/s" (10^6 bytes), "files/s" or "" (no work size)
    peak_rss_mb: float  # max ru_maxrss over the repetitions, MiB
    anchor: str
    ratio: float | None  # wall_s / anchor's wall_s
    files: int | None = None
    bytes: int | None = None
    cpu_s: float = 0.0  # median user+system time
    others_cpus: float = 0.0  # CPUs other processes kept busy during this tool's runs (0 = idle machine)
    command: str = ""
    targets: list[str] = field(default_factory=list)  # "vs-sha256sum:PASS"...


@dataclass
class Target:
    id: str  # "<case>/<name>", stable whatever the filters
    suite: str
    case: str
    tool: str  # the row it is printed next to
    text: str
    status: str  # PASS | FAIL | SKIP
    detail: str


@dataclass
class SuiteResult:
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)


def make_rows(suite: str, case: str, tools: Sequence[Tool], samples: dict[str, list[Sample]], anchor: str,
              rate_unit: str, files: int | None, nbytes: int | None,
              commands: dict[str, str] | None = None) -> list[Row]:
    anchor_wall = statistics.median(s.wall_s for s in samples[anchor])
    rows = []
    for tool in tools:
        got = samples[tool.name]
        wall = statistics.median(s.wall_s for s in got)
        rate: float | None = None
        if rate_unit == "MB/s" and nbytes:
            rate = nbytes / wall / 1e6
        elif rate_unit == "files/s" and files:
            rate = files / wall
        others = sum(s.others_cpu_s for s in got) / max(1e-9, sum(s.wall_s for s in got))
        rows.append(Row(suite, case, tool.name, wall, [round(s.wall_s, 6) for s in got], rate, rate_unit,
                        max(s.maxrss_kib for s in got) / KiB, anchor, wall / anchor_wall, files, nbytes,
                        round(statistics.median(s.cpu_s for s in got), 3), round(others, 3),
                        (commands or {}).get(tool.name, "")))
    return rows


def find_row(rows: Sequence[Row], case: str, tool: str) -> Row | None:
    return next((r for r in rows if r.case == case and r.tool == tool), None)


def _fmt_wall(w: float) -> str:
    return f"{w:.3f}" if w < 100 else f"{w:.1f}"


def _fmt_rate(r: Row) -> str:
    if r.rate is None:
        return "-"
    return f"{r.rate:,.0f} {r.rate_unit}" if r.rate >= 100 else f"{r.rate:.1f} {r.rate_unit}"


def _fmt_ratio(r: Row) -> str:
    if r.ratio is None:
        return "-"
    if r.tool == r.anchor:
        return "1.00x (anchor)"
    return f"{r.ratio:.2f}x {r.anchor}"


def render_table(rows: Sequence[Row]) -> str:
    head = ["suite", "case", "tool", "wall s", "MB/s or files/s", "peak RSS MB", "ratio vs anchor", "targets"]
    body = [[r.suite, r.case, r.tool, _fmt_wall(r.wall_s), _fmt_rate(r), f"{r.peak_rss_mb:.1f}", _fmt_ratio(r),
             " ".join(r.targets)] for r in rows]
    right = {3, 4, 5}
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return " | ".join(out).rstrip()

    sep = "-+-".join("-" * w for w in widths)
    return "\n".join([line(head), sep, *(line(b) for b in body)])


def render_markdown(rows: Sequence[Row]) -> str:
    head = ["suite", "case", "tool", "wall s", "MB/s or files/s", "peak RSS MB", "ratio vs anchor", "targets"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.suite, r.case, r.tool, _fmt_wall(r.wall_s), _fmt_rate(r), f"{r.peak_rss_mb:.1f}", _fmt_ratio(r),
                 " ".join(r.targets)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Suites registry
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tools:
    python: str
    reversib: str | None
    bagit: str | None
    sha256sum: str | None


@dataclass
class Context:
    runner: Runner
    repeat: int
    data_dir: Path
    scratch: Path
    smoke: bool
    keep_data: bool
    tools: Tools
    env: dict[str, str]
    wait_idle: float = 0.0


@dataclass(frozen=True)
class Case:
    name: str
    help: str


@dataclass(frozen=True)
class Suite:
    name: str
    help: str
    cases: tuple[Case, ...]
    run: Callable[[Context, list[str]], SuiteResult]

    def case_names(self) -> list[str]:
        return [c.name for c in self.cases]


SUITES: dict[str, Suite] = {}


def register(name: str, help: str, cases: Sequence[Case]) -> Callable[[Callable[[Context, list[str]], SuiteResult]],
                                                                       Callable[[Context, list[str]], SuiteResult]]:
    """Decorator: `@register("s3", "...", [Case(...), ...])` on `def suite(ctx, cases) -> SuiteResult`.
    The function gets the selected case names (in registry order) and returns its rows."""

    def deco(fn: Callable[[Context, list[str]], SuiteResult]) -> Callable[[Context, list[str]], SuiteResult]:
        if name in SUITES:
            raise ValueError(f"suite {name!r} registered twice")
        SUITES[name] = Suite(name, help, tuple(cases), fn)
        return fn

    return deco


# --------------------------------------------------------------------------------------------
# Suite "core": the verification core on a local disk
# --------------------------------------------------------------------------------------------

DATA_FORMAT = 1  # bump when the layout/content scheme changes: existing data is rebuilt
SPEC_FILE = "bench-spec.json"
BUILDING_FILE = "bench-building"


@dataclass(frozen=True)
class DatasetSpec:
    case: str
    files: int
    file_size: int
    per_dir: int = 100  # small files: files per leaf folder, 100 leaf folders per top folder

    @property
    def total_bytes(self) -> int:
        return self.files * self.file_size

    @property
    def large(self) -> bool:
        return self.file_size >= MiB

    def rel_path(self, i: int) -> str:
        if self.large:
            return f"big-{i:03d}.bin"
        return f"p{i // (self.per_dir * 100):03d}/d{(i // self.per_dir) % 100:02d}/f{i % self.per_dir:03d}.bin"

    def describe(self) -> str:
        where = "" if self.large or self.files <= self.per_dir else f" in nested folders ({self.per_dir} per folder)"
        return f"{self.files:,} files x {_size(self.file_size)} = {_size(self.total_bytes)}{where}, random bytes"

    def marker(self) -> dict[str, Any]:
        return {"format": DATA_FORMAT, "case": self.case, "files": self.files, "file_size": self.file_size,
                "per_dir": self.per_dir}


def _size(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


CORE_FULL = {
    "large": DatasetSpec("large", 8, GiB),
    "small-20k": DatasetSpec("small-20k", 20_000, 4 * KiB),
    "small-200k": DatasetSpec("small-200k", 200_000, 4 * KiB),
}
CORE_SMOKE = {
    "large": DatasetSpec("large", 3, 2 * MiB),
    "small-20k": DatasetSpec("small-20k", 200, 4 * KiB),
    "small-200k": DatasetSpec("small-200k", 2_000, 4 * KiB),
}
BLOCK = 64 * MiB  # large files: one random block per file, repeated with a (file, chunk) stamp


@dataclass(frozen=True)
class Dataset:
    spec: DatasetSpec
    root: Path

    @property
    def plain(self) -> Path:
        return self.root / "plain"

    @property
    def sums(self) -> Path:
        return self.plain / "SHA256SUMS"

    @property
    def bag(self) -> Path:
        return self.root / "bag"


def build_dataset(spec: DatasetSpec, root: Path, sha256sum: str) -> Dataset:
    """Build (or reuse, when its marker records the same spec) one dataset: `plain/` with a
    `SHA256SUMS` written by the real sha256sum, and `bag/`, a BagIt 1.0 bag of the same files
    (hardlinks) whose manifest has the same digests."""
    ds = Dataset(spec, root)
    marker = root / SPEC_FILE
    if marker.exists():
        try:
            same = json.loads(marker.read_text()) == spec.marker()
        except (OSError, ValueError):
            same = False
        if same and ds.sums.is_file() and (ds.bag / "manifest-sha256.txt").is_file():
            log(f"{spec.case}: reusing {root} ({spec.describe()})")
            return ds
    if root.exists():
        if not (marker.exists() or (root / BUILDING_FILE).exists()):
            raise BenchError(f"{root} exists but was not built by bench/run.py (no {SPEC_FILE}): refusing to "
                             "delete it; pick another --data-dir")
        log(f"{spec.case}: spec changed or build incomplete: rebuilding {root}")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / BUILDING_FILE).write_text("incomplete build: safe to delete\n")
    need = spec.total_bytes + 512 * MiB
    free = shutil.disk_usage(root).free
    if free < need:
        raise BenchError(f"{spec.case}: needs {need / GiB:.1f} GiB free under {root}, only {free / GiB:.1f} GiB")
    t0 = time.perf_counter()
    log(f"{spec.case}: writing {spec.describe()} under {ds.plain}")
    _write_files(spec, ds.plain)
    t1 = time.perf_counter()
    log(f"{spec.case}: written in {t1 - t0:.1f} s; running sha256sum for SHA256SUMS")
    digests = _write_sha256sums(spec, ds.plain, sha256sum)
    t2 = time.perf_counter()
    log(f"{spec.case}: SHA256SUMS in {t2 - t1:.1f} s; making the bag (hardlinks)")
    _write_bag(spec, ds, digests)
    log(f"{spec.case}: bag in {time.perf_counter() - t2:.1f} s")
    marker.write_text(json.dumps(spec.marker(), indent=2) + "\n")
    (root / BUILDING_FILE).unlink()
    return ds


def _write_files(spec: DatasetSpec, plain: Path) -> None:
    plain.mkdir(parents=True, exist_ok=True)
    if spec.large:
        for i in range(spec.files):
            block = bytearray(os.urandom(min(BLOCK, spec.file_size)))
            left, chunk = spec.file_size, 0
            with open(plain / spec.rel_path(i), "wb") as f:
                while left:
                    block[:16] = struct.pack("<QQ", i, chunk)  # no two chunks of the data set are equal
                    n = min(left, len(block))
                    f.write(memoryview(block)[:n])
                    left -= n
                    chunk += 1
        return
    made: set[str] = set()
    for i in range(spec.files):
        rel = spec.rel_path(i)
        folder = rel.rpartition("/")[0]
        if folder not in made:
            (plain / folder).mkdir(parents=True, exist_ok=True)
            made.add(folder)
        with open(plain / rel, "wb") as f:
            f.write(os.urandom(spec.file_size))


def _write_sha256sums(spec: DatasetSpec, plain: Path, sha256sum: str) -> dict[str, str]:
    """Run the real sha256sum (two at once, in batches) at the root; return {path: digest}."""
    rels = [spec.rel_path(i) for i in range(spec.files)]
    size = max(1, min(2000, math.ceil(len(rels) / 2)))
    batches = [rels[i:i + size] for i in range(0, len(rels), size)]

    def one(batch: list[str]) -> str:
        done = subprocess.run([sha256sum, "--", *batch], cwd=plain, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"sha256sum failed in {plain}: {done.stderr.strip()[:500]}")
        return done.stdout

    with ThreadPoolExecutor(max_workers=2) as pool:
        text = "".join(pool.map(one, batches))
    digests: dict[str, str] = {}
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        digests[name] = digest
    if sorted(digests) != sorted(rels):
        raise BenchError(f"sha256sum output in {plain} does not list the {len(rels)} files written")
    (plain / "SHA256SUMS").write_text(text)
    return digests


def _write_bag(spec: DatasetSpec, ds: Dataset, digests: dict[str, str]) -> None:
    """A BagIt 1.0 bag per RFC 8493, payload hardlinked from plain/ (so it shares the page cache)."""
    bag = ds.bag
    data = bag / "data"
    made: set[Path] = set()
    for i in range(spec.files):
        rel = spec.rel_path(i)
        dest = data / rel
        if dest.parent not in made:
            dest.parent.mkdir(parents=True, exist_ok=True)
            made.add(dest.parent)
        try:
            os.link(ds.plain / rel, dest)
        except OSError:
            shutil.copyfile(ds.plain / rel, dest)
    tag_files = {
        "bagit.txt": "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n",
        "manifest-sha256.txt": "".join(f"{digests[spec.rel_path(i)]}  data/{spec.rel_path(i)}\n"
                                       for i in range(spec.files)),
        "bag-info.txt": (f"Bag-Software-Agent: reversib bench/run.py\n"
                         f"Bagging-Date: {datetime.date.today().isoformat()}\n"
                         f"Payload-Oxum: {spec.total_bytes}.{spec.files}\n"),
    }
    for name, text in tag_files.items():
        (bag / name).write_text(text, encoding="utf-8")
    (bag / "tagmanifest-sha256.txt").write_text(
        "".join(f"{hashlib.sha256(text.encode()).hexdigest()}  {name}\n" for name, text in tag_files.items()))


def prewarm(ds: Dataset) -> float:
    """Read every payload byte once (bag/ shares the inodes) and stat the bag tree: page cache + dentries."""
    t0 = time.perf_counter()
    buf = bytearray(4 * MiB)
    for dirpath, _, names in os.walk(ds.plain):
        for name in names:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                while os.readv(fd, [buf]):
                    pass
            finally:
                os.close(fd)
    for dirpath, _, names in os.walk(ds.bag):
        for name in names:
            os.stat(os.path.join(dirpath, name))
    return time.perf_counter() - t0


def _reversib_check(files: int, nbytes: int, exact: bool) -> Callable[[Sample], str | None]:
    def check(s: Sample) -> str | None:
        try:
            doc = json.loads(s.stdout)
        except ValueError:
            return f"exit code {s.returncode}, stdout is not JSON"
        outcome = doc.get("outcome") if isinstance(doc, dict) else None
        if outcome != "passed" or s.returncode != 0:
            return f"outcome {outcome!r}, exit code {s.returncode}"
        runs = doc.get("runs") or [{}]
        got_files, got_bytes = runs[0].get("files_verified"), runs[0].get("bytes_verified")
        if not isinstance(got_files, int) or not isinstance(got_bytes, int):
            return f"no files_verified/bytes_verified in the JSON: {runs[0]!r:.300}"
        ok = (got_files, got_bytes) == (files, nbytes) if exact else got_files >= files and got_bytes >= nbytes
        if not ok:
            return f"verified {got_files} files / {got_bytes} bytes, expected {files} / {nbytes}"
        return None

    return check


def _rawhash_check(files: int, nbytes: int) -> Callable[[Sample], str | None]:
    def check(s: Sample) -> str | None:
        if s.returncode != 0:
            return f"exit code {s.returncode}"
        if f"files {files} bytes {nbytes} problems 0" not in s.stdout:
            return f"expected {files} files / {nbytes} bytes, got {s.stdout.strip()!r}"
        return None

    return check


_TEMPLATE_HISTORY: dict[str, Path] = {}


def _history_url(rep_dir: Path, reversib: str | None = None) -> str:
    """A history file per repetition.  With `reversib`, the file is a copy of one whose schema was
    created beforehand: the steady state of a deployment, where the history exists and each run
    appends to it (the run's writes are measured; the one-time schema creation is not).  Without,
    an empty file: the first run ever, schema creation included (the `startup` case)."""
    db = rep_dir / "history.db"
    if reversib is not None and rep_dir.is_dir():  # (not when only printing the command line)
        template = _TEMPLATE_HISTORY.get(reversib)
        if template is None:
            base = Path(tempfile.mkdtemp(prefix="reversib-bench-history-"))
            (base / "export").mkdir()
            (base / "export" / "a").write_bytes(b"a")
            (base / "export" / "SHA256SUMS").write_text(hashlib.sha256(b"a").hexdigest() + "  a\n")
            template = base / "history.db"
            subprocess.run([reversib, "verify-now", "--source", str(base / "export"), "--history",
                            "sqlite:///" + str(template), "--no-progress", "-q"], check=True, stdout=subprocess.DEVNULL)
            _TEMPLATE_HISTORY[reversib] = template
        shutil.copyfile(template, db)
    return "sqlite:///" + str(db)


def core_tools(ctx: Context, ds: Dataset, notes: list[str]) -> list[Tool]:
    t = ctx.tools
    spec = ds.spec
    assert t.sha256sum is not None and t.reversib is not None
    sha256sum, reversib = t.sha256sum, t.reversib
    tools = [
        Tool("sha256sum-c", lambda _: [sha256sum, "-c", "--quiet", "SHA256SUMS"], cwd=ds.plain),
        Tool("reversib", lambda d: [reversib, "verify-now", "--source", str(ds.plain), "--manifest", str(ds.sums),
                                    "--json", "--history", _history_url(d, reversib), "--no-progress"],
             check=_reversib_check(spec.files, spec.total_bytes, exact=True)),
        Tool("reversib-bag", lambda d: [reversib, "verify-now", "--source", str(ds.bag), "--json",
                                        "--history", _history_url(d, reversib), "--no-progress"],
             check=_reversib_check(spec.files, spec.total_bytes, exact=False)),
    ]
    if t.bagit:
        bagit = t.bagit
        tools.append(Tool("bagit.py", lambda _: [bagit, "--validate", str(ds.bag)]))
        tools.append(Tool("bagit.py-p2", lambda _: [bagit, "--validate", "--processes", "2", str(ds.bag)]))
    elif not any("bagit.py" in n for n in notes):
        notes.append("bagit.py rows skipped: bagit.py not found next to the Python running the harness nor on PATH "
                     "(install the `bagit` package)")
    tools.append(Tool("raw-limit", lambda _: [t.python, str(RAWHASH), "--root", str(ds.plain), "--manifest",
                                              str(ds.sums), "--threads", "2"],
                      check=_rawhash_check(spec.files, spec.total_bytes)))
    if not spec.large:
        tools.append(Tool("floor", lambda _: [t.python, str(RAWHASH), "--import", LIBRARIES.replace(" ", ""),
                                              "--root", str(ds.plain), "--manifest", str(ds.sums), "--threads", "2"],
                          check=_rawhash_check(spec.files, spec.total_bytes)))
    return tools


# The libraries the core issue asks for (pydantic: the configuration; SQLAlchemy: the history).  The `floor`
# rows import them, then hash like raw-limit: the least any verifier built on them can take (rawhash.py).
LIBRARIES = "pydantic, sqlalchemy"


def startup_tools(ctx: Context, tiny: Dataset) -> list[Tool]:
    t = ctx.tools
    assert t.sha256sum is not None and t.reversib is not None
    sha256sum, reversib = t.sha256sum, t.reversib
    return [
        Tool("python -c pass", lambda _: [t.python, "-c", "pass"]),
        Tool("import reversib.cli", lambda _: [t.python, "-c", "import reversib.cli"]),
        Tool("reversib --version", lambda _: [reversib, "--version"]),
        Tool("reversib 1 file", lambda d: [reversib, "verify-now", "--source", str(tiny.plain), "--manifest",
                                           str(tiny.sums), "--json", "--history", _history_url(d),
                                           "--no-progress"],
             check=_reversib_check(1, tiny.spec.total_bytes, exact=True)),
        Tool("sha256sum-c 1 file", lambda _: [sha256sum, "-c", "--quiet", "SHA256SUMS"], cwd=tiny.plain),
        Tool("import pydantic+sqlalchemy", lambda _: [t.python, "-c", f"import gc; gc.disable(); import {LIBRARIES}"]),
    ]


def _commands(tools: Sequence[Tool]) -> dict[str, str]:
    return {tool.name: shlex.join(tool.argv(Path("/tmp/<fresh>"))) for tool in tools}


CORE_CASES = [
    Case("startup", "fixed costs: interpreter, `import reversib.cli`, `reversib --version`, verify-now of one "
                    "4 KiB file with a fresh history (anchor: python -c pass)"),
    Case("large", "8 files x 1 GiB (smoke: 3 x 2 MiB); MB/s; anchor sha256sum -c"),
    Case("small-20k", "20,000 files x 4 KiB, 100 per folder (smoke: 200); files/s; anchor sha256sum -c"),
    Case("small-200k", "200,000 files x 4 KiB, 100 per folder (smoke: 2,000); files/s; anchor sha256sum -c"),
]


@register("core", "the verification core: local files against SHA256SUMS and a BagIt bag, vs sha256sum -c "
                  "(anchor), bagit.py and a raw hashlib limit", CORE_CASES)
def suite_core(ctx: Context, cases: list[str]) -> SuiteResult:
    res = SuiteResult()
    if ctx.tools.sha256sum is None:
        raise BenchError("sha256sum not found on PATH: the core suite's anchor")
    if ctx.tools.reversib is None:
        raise BenchError("reversib not found next to the Python running the harness nor on PATH "
                         "(pip install -e .), or give --reversib")
    specs = CORE_SMOKE if ctx.smoke else CORE_FULL
    base = ctx.data_dir / "core"
    for case in cases:
        if case == "startup":
            tiny_spec = DatasetSpec("startup", 1, 4 * KiB)
            tiny = build_dataset(tiny_spec, ctx.scratch / "startup-data", ctx.tools.sha256sum)
            res.datasets.append(f"core/startup: {tiny_spec.describe()} (temporary)")
            tools = startup_tools(ctx, tiny)
            log("core/startup: measuring")
            samples = measure(ctx, tools)
            res.rows += make_rows("core", case, tools, samples, "python -c pass", "", None, None, _commands(tools))
            continue
        spec = specs[case]
        ds = build_dataset(spec, base / case, ctx.tools.sha256sum)
        res.datasets.append(f"core/{case}: {spec.describe()} at {ds.root}")
        warm = prewarm(ds)
        log(f"core/{case}: pre-warmed the page cache in {warm:.1f} s")
        tools = core_tools(ctx, ds, res.notes)
        samples = measure(ctx, tools)
        unit = "MB/s" if spec.large else "files/s"
        res.rows += make_rows("core", case, tools, samples, "sha256sum-c", unit, spec.files, spec.total_bytes,
                              _commands(tools))
        if not ctx.keep_data and not ctx.smoke:
            log(f"core/{case}: --no-keep-data: removing {ds.root}")
            shutil.rmtree(ds.root)
    res.targets = core_targets(res.rows)
    res.notes += floor_notes(res.rows)
    return res


def floor_notes(rows: list[Row]) -> list[str]:
    """Each small-file target beside its `floor` row: importing the libraries the issue asks for, then
    hashing as raw-limit does, with no listing, no comparison and no history."""
    notes = []
    for case, limit in (("small-20k", 1.3), ("small-200k", 1.0)):
        anchor, floor, mine = (find_row(rows, case, tool) for tool in ("sha256sum-c", "floor", "reversib"))
        if anchor is None or floor is None:
            continue
        ratio = floor.wall_s / anchor.wall_s
        text = (f"{case}: floor (import {LIBRARIES}, then raw-limit) {floor.wall_s:.3f} s = {ratio:.2f}x sha256sum-c "
                f"against a target of {limit:.2f}x")
        if mine is not None:
            text += f"; reversib {mine.wall_s / floor.wall_s:.2f}x the floor"
        notes.append(text + (" (the floor alone misses the target)" if ratio > limit else ""))
    return notes


def core_targets(rows: list[Row]) -> list[Target]:
    targets: list[Target] = []

    def add(name: str, case: str, tool: str, text: str, status: str, detail: str) -> None:
        targets.append(Target(f"{case}/{name}", "core", case, tool, text, status, detail))
        row = find_row(rows, case, tool)
        if row is not None:
            row.targets.append(f"{name}:{status}")

    def ratio_target(name: str, case: str, tool: str, other: str | list[str], limit: float, text: str) -> None:
        """tool wall / other wall <= limit (other: the fastest of several rows)."""
        if not any(r.case == case for r in rows):
            return
        mine = find_row(rows, case, tool)
        others = [r for r in (find_row(rows, case, o) for o in ([other] if isinstance(other, str) else other)) if r]
        if mine is None or not others:
            add(name, case, tool, text, "SKIP", "row missing")
            return
        best = min(others, key=lambda r: r.wall_s)
        ratio = mine.wall_s / best.wall_s
        status = "PASS" if ratio <= limit else "FAIL"
        add(name, case, tool, text, status, f"{tool} {mine.wall_s:.3f} s / {best.tool} {best.wall_s:.3f} s = "
                                      f"{ratio:.2f}x time (need <= {limit:.2f}x; "
                                      f"{f'{1 / ratio:.2f}x faster' if ratio <= 1 else f'{ratio:.2f}x slower'})")

    ratio_target("vs-sha256sum", "large", "reversib", "sha256sum-c", 1 / 5,
                 "reversib >= 5x faster than sha256sum -c")
    ratio_target("vs-raw", "large", "reversib", "raw-limit", 1.25, "reversib within 1.25x of raw-limit")
    ratio_target("vs-sha256sum", "small-20k", "reversib", "sha256sum-c", 1.3,
                 "reversib <= 1.3x sha256sum -c time (start-up and history write included)")
    ratio_target("vs-sha256sum", "small-200k", "reversib", "sha256sum-c", 1.0, "reversib no slower than sha256sum -c")
    for case, factor in (("large", 1.8), ("small-20k", 3.0), ("small-200k", 3.0)):
        ratio_target("vs-bagit", case, "reversib-bag", ["bagit.py", "bagit.py-p2"], 1 / factor,
                     f"reversib >= {factor}x faster than bagit.py (same bag; the faster bagit.py row)")
    for case in dict.fromkeys(r.case for r in rows):
        for r in rows:
            if r.case == case and r.tool.startswith("reversib") and r.tool != "reversib --version":
                status = "PASS" if r.peak_rss_mb < 150 else "FAIL"
                add("rss", case, r.tool, f"{r.tool} peak RSS < 150 MB", status, f"{r.peak_rss_mb:.1f} MB")
    return targets


import suite_s3  # noqa: E402 - bench/suite_s3.py: the S3 source on a local moto endpoint

suite_s3.install(sys.modules[__name__])

import suite_sftp  # noqa: E402 - bench/suite_sftp.py: the SFTP source on a loopback sshd

suite_sftp.install(sys.modules[__name__])

import suite_daemon  # noqa: E402 - bench/suite_daemon.py: the daemon soak

suite_daemon.install(sys.modules[__name__])

import suite_report  # noqa: E402 - bench/suite_report.py: `reversib report` over a year of runs

suite_report.install(sys.modules[__name__])

import suite_dumps  # noqa: E402 - bench/suite_dumps.py: restoring a 1M-row pg_dump vs pg_restore by hand

suite_dumps.install(sys.modules[__name__])

import suite_archive  # noqa: E402 - bench/suite_archive.py: an age-encrypted tar.zst vs age | zstd | tar

suite_archive.install(sys.modules[__name__])

import suite_scale  # noqa: E402 - bench/suite_scale.py: 1M-entry manifest, S3 stored checksums, replicas

suite_scale.install(sys.modules[__name__])


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def _find_tool(name: str, explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / name  # the venv running the harness (not resolved: keep the venv)
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def _version(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({exc})"
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else f"exit {done.returncode}"


def _meta(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    t = ctx.tools
    try:
        mem = next(int(line.split()[1]) * KiB for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mem = 0
    return {
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gib": round(mem / GiB, 1),
        "python": platform.python_version(),
        "repeat": ctx.repeat,
        "smoke": ctx.smoke,
        "measurement": ctx.runner.describe(),
        "argv": [sys.argv[0], *(args.raw_argv or [])],
        "versions": {
            "reversib": _version([t.reversib, "--version"]) if t.reversib else None,
            "sha256sum": _version([t.sha256sum, "--version"]) if t.sha256sum else None,
            "bagit.py": _version([t.python, "-c", "import bagit; print('bagit', bagit.VERSION)"]) if t.bagit else None,
        },
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0] if __doc__ else None,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="exit codes: 0 done, 1 target missed with --strict, 2 a tool failed or did "
                                       "not verify, 64 usage")
    p.add_argument("--suite", action="append", metavar="NAME", help="run this suite (repeatable; default: all)")
    p.add_argument("--case", action="append", metavar="NAME",
                   help="run only these cases (repeatable or comma-separated; default: all of the selected suites)")
    p.add_argument("--repeat", type=int, default=3, metavar="N", help="runs per tool, median reported (default 3)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, metavar="DIR",
                   help=f"where data sets are built and reused (default {DEFAULT_DATA_DIR})")
    p.add_argument("--keep-data", action=argparse.BooleanOptionalAction, default=True,
                   help="keep built data sets for the next run (default: keep)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the rows (and targets) as JSON")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown (for the README)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny data sets in a temp dir, repeat 1: checks every tool runs and verifies (CI)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed (never with --smoke)")
    p.add_argument("--list", action="store_true", help="list suites and cases, then exit")
    p.add_argument("--reversib", metavar="PATH", help="the reversib executable (default: next to this Python)")
    p.add_argument("--timeout", type=float, default=3600, metavar="S", help="per tool run (default 3600 s)")
    p.add_argument("--wait-idle", type=float, default=30, metavar="S",
                   help="before each run, wait up to S s for other processes to use < 0.3 CPUs (default 30; "
                        "0 = never; always 0 with --smoke)")
    return p


def _select(args: argparse.Namespace) -> list[tuple[Suite, list[str]]]:
    names = args.suite or list(SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise SystemExit(f"bench/run.py: unknown suite {', '.join(unknown)} (known: {', '.join(SUITES)})")
    wanted = [c for arg in (args.case or []) for c in arg.split(",") if c]
    chosen = [SUITES[n] for n in dict.fromkeys(names)]
    known = {c for s in chosen for c in s.case_names()}
    bad = [c for c in wanted if c not in known]
    if bad:
        raise SystemExit(f"bench/run.py: unknown case {', '.join(bad)} (known: {', '.join(sorted(known))})")
    selection = [(s, [c for c in s.case_names() if not wanted or c in wanted]) for s in chosen]
    return [(s, cases) for s, cases in selection if cases]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code not in (0, None) else 0
    args.raw_argv = list(argv) if argv is not None else sys.argv[1:]
    if args.list:
        for s in SUITES.values():
            print(f"{s.name}: {s.help}")
            for c in s.cases:
                print(f"  {c.name:<12} {c.help}")
        return EXIT_OK
    if args.repeat < 1:
        parser.print_usage(sys.stderr)
        print("bench/run.py: --repeat must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        selection = _select(args)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVERSIB_")}
    if not args.smoke:
        # An installed reversib carries its bytecode (pip compiles it); this checkout has none when
        # PYTHONDONTWRITEBYTECODE is set, and every measured run would compile its modules again (~0.1 s).
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "reversib")], check=False,
                       stdout=subprocess.DEVNULL)
        log("byte-compiled reversib/ (as an installed package is)")
    tools = Tools(python=sys.executable, reversib=_find_tool("reversib", args.reversib),
                  bagit=_find_tool("bagit.py"), sha256sum=shutil.which("sha256sum"))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="reversib-bench-") as tmp:
        scratch = Path(tmp)
        data_dir = scratch / "data" if args.smoke else args.data_dir.absolute()
        ctx = Context(Runner(scratch, args.timeout), 1 if args.smoke else args.repeat, data_dir, scratch,
                      args.smoke, args.keep_data, tools, env, 0.0 if args.smoke else args.wait_idle)
        meta = _meta(ctx, args)
        result = SuiteResult()
        failure: str | None = None
        for suite, cases in selection:
            log(f"suite {suite.name}: cases {', '.join(cases)}")
            try:
                got = suite.run(ctx, cases)
            except BenchError as exc:
                failure = f"suite {suite.name}: {exc}"
                break
            result.rows += got.rows
            if not ctx.smoke:
                result.notes += noise_notes(got.rows)
            result.targets += got.targets
            result.notes += got.notes
            result.datasets += got.datasets
    meta["elapsed_s"] = round(time.perf_counter() - started, 1)
    report(meta, result, failure, args)
    if failure is not None:
        return EXIT_BROKEN
    if args.strict and not args.smoke and any(t.status == "FAIL" for t in result.targets):
        return EXIT_TARGETS
    return EXIT_OK


NOISY = 0.2  # CPUs used by other processes during a row's runs above which the row is flagged


def noise_notes(rows: Sequence[Row]) -> list[str]:
    return [f"noisy: {r.suite}/{r.case} {r.tool}: other processes kept {r.others_cpus:.2f} CPUs busy on average "
            "during its runs (machine not idle: its wall time is pessimistic)" for r in rows
            if r.others_cpus > NOISY and sum(r.walls_s) >= 0.5]  # /proc/stat ticks are 10 ms: short runs can't tell


def report(meta: dict[str, Any], result: SuiteResult, failure: str | None, args: argparse.Namespace) -> None:
    print(f"# reversib bench{' --smoke' if meta['smoke'] else ''}: {meta['started']}, {meta['host']}, "
          f"{meta['cpus']} CPUs, {meta['memory_gib']} GiB, Python {meta['python']}, repeat {meta['repeat']} "
          f"(median wall), {meta['elapsed_s']} s in all")
    print(f"# peak RSS: {meta['measurement']}; MB/s = 10^6 bytes/s; RSS MB = MiB")
    for name, version in meta["versions"].items():
        print(f"# {name}: {version}")
    for d in result.datasets:
        print(f"# data {d}")
    if result.rows:
        print()
        print(render_table(result.rows))
        if args.markdown:
            print()
            print(render_markdown(result.rows))
    if result.targets:
        print()
        print("targets" + (" (smoke: informational only, data too small to mean anything)" if args.smoke else "")
              + ":")
        for t in result.targets:
            print(f"  {t.status:<4} {t.id:<23} {t.text}: {t.detail}")
    for n in result.notes:
        print(f"note: {n}")
    if failure is not None:
        print(f"\nBENCHMARK FAILED: {failure}")
        print(f"bench/run.py: FAILED: {failure}", file=sys.stderr)
    if args.json:
        doc = {"schema": 1, "meta": meta, "datasets": result.datasets, "rows": [asdict(r) for r in result.rows],
               "targets": [asdict(t) for t in result.targets], "notes": result.notes, "failure": failure}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
