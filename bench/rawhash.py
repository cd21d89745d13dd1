"""The raw limit: hash the files of a `SHA256SUMS` with hashlib, nothing else.

Used by `bench/run.py` as the `raw-limit` row: what plain Python can do on this machine with
the same reads reversib does (1 MiB `readinto`, sha256, a fixed number of threads), without
reversib's listing, completeness check, history or start-up.  Digests are compared with the
manifest so that a row that did not really hash fails loudly.

    python bench/rawhash.py --root DIR --manifest DIR/SHA256SUMS [--threads 2] [--chunk 1048576]
                            [--import pydantic,sqlalchemy]

`--import` first imports those modules (with the garbage collector off, as `reversib` imports them):
the `floor` rows, what any verifier built on those libraries costs at least -- their import, then
hashing as fast as plain Python does -- before it lists, compares or records anything.

Exit 0 when every digest matches, 1 on a mismatch or an unreadable file, 2 on a bad manifest.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path


def read_sumfile(path: Path) -> list[tuple[str, str]]:
    """(hex digest, relative path) pairs of a GNU `sha256sum` file (text or `*` binary mode)."""
    pairs: list[tuple[str, str]] = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            if line.startswith("\\"):
                raise ValueError(f"{path}:{n}: escaped names are not supported by rawhash.py")
            digest, sep, name = line.partition(" ")
            if not sep or len(digest) != 64 or not name or name[0] not in " *":
                raise ValueError(f"{path}:{n}: not a sha256sum line: {line[:80]!r}")
            pairs.append((digest.lower(), name[1:]))
    return pairs


def hash_all(root: Path, pairs: list[tuple[str, str]], threads: int, chunk: int) -> tuple[int, int, list[str]]:
    """Hash every file over `threads` threads; return (files, bytes, problems)."""
    work: Iterator[tuple[str, str]] = iter(pairs)
    lock = threading.Lock()
    totals = [0, 0]
    problems: list[str] = []

    def worker() -> None:
        buf = bytearray(chunk)
        view = memoryview(buf)
        files = nbytes = 0
        while True:
            with lock:
                item = next(work, None)
            if item is None:
                break
            expected, name = item
            h = hashlib.sha256()
            try:
                with open(os.path.join(root, name), "rb", buffering=0) as f:
                    while n := f.readinto(view):
                        h.update(view[:n])
                        nbytes += n
            except OSError as exc:
                with lock:
                    problems.append(f"{name}: {exc.strerror or exc}")
                continue
            files += 1
            if h.hexdigest() != expected:
                with lock:
                    problems.append(f"{name}: digest mismatch")
        with lock:
            totals[0] += files
            totals[1] += nbytes

    pool = [threading.Thread(target=worker, name=f"rawhash-{i}") for i in range(max(1, threads))]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return totals[0], totals[1], problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--root", required=True, type=Path, help="folder the manifest's paths are relative to")
    p.add_argument("--manifest", required=True, type=Path, help="a sha256sum file")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk", type=int, default=1 << 20, help="read size in bytes (default 1 MiB)")
    p.add_argument("--import", dest="modules", default="", metavar="MOD,...",
                   help="import these modules first, garbage collector off (the floor rows)")
    args = p.parse_args(argv)
    if args.modules:
        gc.disable()
        for name in args.modules.split(","):
            importlib.import_module(name.strip())
        gc.enable()
    try:
        pairs = read_sumfile(args.manifest)
    except (OSError, ValueError) as exc:
        print(f"rawhash: {exc}", file=sys.stderr)
        return 2
    files, nbytes, problems = hash_all(args.root, pairs, args.threads, args.chunk)
    for problem in problems[:20]:
        print(f"rawhash: {problem}", file=sys.stderr)
    print(f"files {files} bytes {nbytes} problems {len(problems)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
