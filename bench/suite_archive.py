"""Suite `archive` of bench/run.py (issue 7): an age-encrypted tar.zst verified inside, vs the shell pipeline.

    .venv/bin/python bench/run.py --suite archive [--repeat 3] [--wait-idle 5]
    .venv/bin/python bench/run.py --suite archive --smoke       # 4 x 1 MiB, repeat 1 (CI)

Case `tar-zst-age`: 20 members x 100 MiB = 2,000 MiB (half random bytes, half base64 text, so zstd has
work to do), plus a SHA256SUMS written by the real sha256sum, made into `tar | zstd -T0 -3 | age -r`.
Rows:
* anchor `age|zstd|tar-to-sha256sum`: `age -d -i KEY F | zstd -d | tar -xv --to-command=sha256sum` --
  decrypt, decompress, list and hash every member, as an operator would by hand (each layer its own process);
* `age|zstd|tar-to-openssl`: the same pipeline hashing with `openssl dgst -sha256` (GNU sha256sum has no SHA
  extensions here, OpenSSL's SHA-256 is several times faster): informational, the stronger pipeline;
* `reversib`: `reversib verify-now` of a check with `archive:` (the same decrypt, decompress and hashing, plus
  the comparison with the manifest inside the archive and the history write).
Targets: reversib at least 0.8x the anchor's throughput; reversib's peak RSS (its process and its
children, age included) under 200 MB.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

MEMBERS = 20
MEMBER_BYTES = 100 << 20
SMOKE_MEMBERS = 4
SMOKE_BYTES = 1 << 20
THROUGHPUT = 0.8
RSS_MB = 200


def install(h: ModuleType) -> None:
    cases = [h.Case("tar-zst-age", "20 x 100 MiB (smoke: 4 x 1 MiB) in a tar.zst encrypted with age; MB/s of "
                                   "member bytes; anchor: age -d | zstd -d | tar -xv --to-command=sha256sum")]

    @h.register("archive", "an age-encrypted tar.zst verified inside vs the age | zstd | tar shell pipeline", cases)
    def suite_archive(ctx: Any, selected: list[str]) -> Any:
        return _suite(h, ctx, selected)


def _build(h: ModuleType, folder: Path, members: int, size: int) -> tuple[Path, Path, int]:
    """The encrypted archive and its key (rebuilt only when absent or of another shape)."""
    marker = folder / "bench-archive.json"
    shape = {"members": members, "size": size, "format": 1}
    enc, key = folder / "export.tar.zst.age", folder / "customer.key"
    if marker.exists() and json.loads(marker.read_text()) == shape and enc.exists() and key.exists():
        return enc, key, members * size
    shutil.rmtree(folder, ignore_errors=True)
    tree = folder / "tree"
    tree.mkdir(parents=True)
    h.log(f"archive: building {members} x {size >> 20} MiB members")
    for i in range(members):
        with open(tree / f"member-{i:02d}.bin", "wb") as f:
            left = size
            while left:
                n = min(left, 4 << 20)
                raw = os.urandom(n * 3 // 4 + 3 if i % 2 else n)
                f.write((base64.b64encode(raw) if i % 2 else raw)[:n])
                left -= n
    names = sorted(p.name for p in tree.iterdir())
    sums = subprocess.run(["sha256sum", "--", *names], cwd=tree, check=True, capture_output=True).stdout
    (tree / "SHA256SUMS").write_bytes(sums)
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    recipient = next(ln.split(": ", 1)[1] for ln in key.read_text().splitlines() if "public key" in ln)
    pipeline = (f"tar -C {shlex.quote(str(tree))} --sort=name -cf - . | zstd -q -T0 -3 | "
                f"age -r {shlex.quote(recipient)} -o {shlex.quote(str(enc))}")
    subprocess.run(["sh", "-c", pipeline], check=True)
    shutil.rmtree(tree)
    marker.write_text(json.dumps(shape))
    return enc, key, members * size


def _suite(h: ModuleType, ctx: Any, selected: list[str]) -> Any:
    res = h.SuiteResult()
    missing = [t for t in ("age", "age-keygen", "zstd", "tar", "sha256sum") if shutil.which(t) is None]
    if missing:
        note = f"archive suite skipped: not installed: {', '.join(missing)} (apt-get install age zstd)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise h.BenchError(note)
        res.notes.append(note)
        return res
    if ctx.tools.reversib is None:
        raise h.BenchError("reversib is needed by the archive suite")
    members, size = (SMOKE_MEMBERS, SMOKE_BYTES) if ctx.smoke else (MEMBERS, MEMBER_BYTES)
    for case in selected:
        folder = ctx.data_dir / "archive" / ("smoke" if ctx.smoke else "full")
        enc, key, total = _build(h, folder, members, size)
        res.datasets.append(f"archive/{case}: {members} x {size >> 20} MiB members (half random, half base64), "
                            f"tar | zstd -3 | age = {enc.stat().st_size / 2**20:.0f} MiB at {enc}")
        _prewarm(enc)
        tools = _tools(h, ctx, enc, key, members, total)
        samples = h.measure(ctx, tools)
        res.rows += h.make_rows("archive", case, tools, samples, "age|zstd|tar-to-sha256sum", "MB/s", members,
                                total, h._commands(tools))
    res.targets = _targets(h, res.rows)
    return res


def _prewarm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


def _tools(h: ModuleType, ctx: Any, enc: Path, key: Path, members: int, total: int) -> list[Any]:
    checks = ctx.scratch / "archive-checks" / "checks"
    checks.mkdir(parents=True, exist_ok=True)
    doc = {"version": 1, "id": "bench-archive", "name": "bench-archive", "source": {"url": str(enc.parent)},
           "archive": {"path": enc.name, "decrypt": {"identity_file": str(key)}}}
    (checks / "bench-archive.yaml").write_text(json.dumps(doc))
    cfg = checks.parent / "reversib.yaml"
    cfg.write_text("version: 1\nchecks_dir: checks\n")
    shell = (f"age -d -i {shlex.quote(str(key))} {shlex.quote(str(enc))} | zstd -q -d | "
             "tar -xv --to-command=sha256sum")

    def anchor_ok(s: Any) -> str | None:
        if s.returncode != 0:
            return f"exit code {s.returncode}: {s.stderr[-300:]}"
        hashed = sum(1 for line in s.stdout.splitlines() if len(line.split()[0]) == 64) if s.stdout else 0
        return None if hashed >= members else f"{hashed} members hashed, {members} expected"

    faster = shell.replace("--to-command=sha256sum", "--to-command='openssl dgst -sha256 -r'")
    tools = [h.Tool("age|zstd|tar-to-sha256sum", lambda _: ["sh", "-c", shell], check=anchor_ok)]
    if shutil.which("openssl"):  # the same pipeline hashing with OpenSSL's SHA-256 (informational row)
        tools.append(h.Tool("age|zstd|tar-to-openssl", lambda _: ["sh", "-c", faster], check=anchor_ok))
    return [*tools,
            h.Tool("reversib", lambda d: [ctx.tools.reversib, "verify-now", "bench-archive", "--config", str(cfg),
                                          "--json", "--history", h._history_url(d, ctx.tools.reversib),
                                          "--no-progress"],
                   check=h._reversib_check(members, total, exact=True))]


def _targets(h: ModuleType, rows: list[Any]) -> list[Any]:
    targets: list[Any] = []
    a, b = h.find_row(rows, "tar-zst-age", "reversib"), h.find_row(rows, "tar-zst-age", "age|zstd|tar-to-sha256sum")
    if a is None or b is None:
        return targets

    def add(name: str, text: str, ok: bool, detail: str) -> None:
        status = "PASS" if ok else "FAIL"
        targets.append(h.Target(f"tar-zst-age/{name}", "archive", "tar-zst-age", "reversib", text, status, detail))
        a.targets.append(f"{name}:{status}")

    speed = b.wall_s / a.wall_s
    add("vs-pipeline", f"throughput >= {THROUGHPUT}x the shell pipeline's", speed >= THROUGHPUT,
        f"reversib {a.wall_s:.2f} s vs pipeline {b.wall_s:.2f} s = {speed:.2f}x its throughput")
    add("rss", f"peak RSS < {RSS_MB} MB", a.peak_rss_mb < RSS_MB, f"{a.peak_rss_mb:.1f} MB")
    return targets
