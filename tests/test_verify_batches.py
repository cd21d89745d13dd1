"""The verifier's batches of small files (`Capabilities.batch_files`, `Source.open_many`): the same verdict as one
`open_range` per file, whatever goes wrong with a file."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from reversib.sources.base import Capabilities, GuardedStream
from reversib.sources.local import LocalSource
from reversib.verify import VerifyOptions, verify

from .helpers import make_export
from .test_verify import manifest_for


class _Batched(LocalSource):
    """A local export that asks for batches of 7 files up to 3000 bytes (the default `open_many`)."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.batches: list[list[str]] = []

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(batch_files=7, batch_file_max=3000)

    def open_many(self, paths: Sequence[str]) -> Iterator[tuple[str, GuardedStream | OSError]]:
        self.batches.append(list(paths))
        return super().open_many(paths)


def test_batches_give_the_same_verdict_as_one_file_at_a_time(tmp_path: Path) -> None:
    files = {f"d{i % 4}/f{i:03d}": os.urandom(i * 53 % 5000) for i in range(120)}
    root = make_export(tmp_path / "x", files)
    names = sorted(files)
    small = [n for n in names if len(files[n]) <= 3000]
    (root / small[3]).write_bytes(b"x" * len(files[small[3]]))  # corrupt, same size
    (root / small[5]).unlink()
    os.mkfifo(root / small[5])  # never opened by the default open_many either: unreadable, not hung
    (root / small[7]).unlink()  # missing
    manifest = manifest_for(files, sizes=False)  # no sizes: the digest (not the size) tells
    batched = _Batched(root)
    for parallelism in (1, 3):
        got = verify(batched, manifest, VerifyOptions(parallelism=parallelism))
        plain = verify(LocalSource(root), manifest, VerifyOptions(parallelism=parallelism))
        assert sorted((f.kind.value, f.path) for f in got.findings) == sorted(
            [("digest_mismatch", small[3]), ("unreadable", small[5]), ("missing", small[7])])
        assert got.findings == plain.findings
        assert got.files_verified == plain.files_verified == len(files) - 2
        assert got.bytes_verified == plain.bytes_verified
        assert {v.path: v.digests for v in got.verified} == {v.path: v.digests for v in plain.verified}
    batched_paths = [p for b in batched.batches for p in b]
    assert batched.batches and all(len(b) <= 7 for b in batched.batches)
    assert all(len(files[p]) <= 3000 for p in batched_paths)  # larger files: one open_range each
    assert sorted(set(batched_paths)) == sorted(set(small) - {small[5], small[7]})  # listed as a problem: no read
