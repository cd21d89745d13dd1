"""The verifier against a real local export: completeness merge, fixity, one fault -> one finding."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import pytest

from reversib.manifests.base import ManifestEntry, finalize
from reversib.model import Outcome, Severity, Tier, decide_outcome
from reversib.sources.local import LocalSource
from reversib.verify import VerifyOptions, verify

from .helpers import DEFAULT_FILES, make_export, sha256


def manifest_for(files: dict[str, bytes], sizes: bool = True):
    raw = [ManifestEntry(p, len(d) if sizes else None, {"sha256": sha256(d)}) for p, d in files.items()]
    return finalize("json", "test", raw, [])


def kinds(report) -> list[str]:
    return [f.kind.value for f in report.findings]


def test_untouched_export_passes(tmp_path: Path) -> None:
    root = make_export(tmp_path / "x")
    report = verify(LocalSource(root), manifest_for(DEFAULT_FILES))
    assert report.findings == []
    assert report.files_verified == len(DEFAULT_FILES)
    assert report.bytes_verified == sum(len(d) for d in DEFAULT_FILES.values())
    assert report.tiers == {"downloaded": len(DEFAULT_FILES)}
    assert {v.path for v in report.verified} == set(DEFAULT_FILES)
    assert all(v.digests["sha256"] == sha256(DEFAULT_FILES[v.path]) for v in report.verified)


@pytest.mark.parametrize("sizes", [True, False])
def test_size_mismatch_skips_digest(tmp_path: Path, sizes: bool) -> None:
    root = make_export(tmp_path / "x")
    (root / "a.txt").write_bytes(b"alpha\nmore\n")
    report = verify(LocalSource(root), manifest_for(DEFAULT_FILES, sizes=sizes))
    # With sizes in the manifest: one size_mismatch, no digest computed.  Without: one digest_mismatch.
    assert kinds(report) == (["size_mismatch"] if sizes else ["digest_mismatch"])
    assert report.findings[0].path == "a.txt"


def test_missing_and_unexpected(tmp_path: Path) -> None:
    root = make_export(tmp_path / "x")
    (root / "b" / "c.csv").unlink()
    (root / "extra.txt").write_text("x")
    report = verify(LocalSource(root), manifest_for(DEFAULT_FILES))
    assert sorted((f.kind.value, f.path) for f in report.findings) == [("missing", "b/c.csv"),
                                                                       ("unexpected", "extra.txt")]


def test_allow_unexpected_and_ignore(tmp_path: Path) -> None:
    root = make_export(tmp_path / "x")
    (root / "extra.txt").write_text("x")
    (root / "b" / "tmpfile.tmp").write_text("x")
    report = verify(LocalSource(root), manifest_for(DEFAULT_FILES),
                    VerifyOptions(allow_unexpected=True, ignore=("*.tmp",)))
    assert [(f.kind.value, f.path, f.sev) for f in report.findings] == [("unexpected", "extra.txt", Severity.WARNING)]
    assert decide_outcome(report.findings) is Outcome.PASSED


def test_canonical_order_with_tricky_names(tmp_path: Path) -> None:
    files = {"a-b": b"1", "a/b": b"2", "a.b": b"3", "a0": b"4", "ä/x": b"5", "A": b"6", "a b/c": b"7", "é": b"8"}
    root = make_export(tmp_path / "x", files)
    listed = [e.path for e in LocalSource(root).iter_entries()]
    assert listed == sorted(files)
    report = verify(LocalSource(root), manifest_for(files))
    assert report.findings == [] and report.files_verified == len(files)


def test_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("top secret")
    files = {"real.txt": b"inside\n"}
    root = make_export(tmp_path / "x", files)
    os.symlink("real.txt", root / "link.txt")
    os.symlink(outside, root / "escape.txt")
    os.symlink("../secret.txt", root / "escape2.txt")
    manifest = manifest_for({"real.txt": b"inside\n", "link.txt": b"inside\n", "escape.txt": b"top secret"})
    report = verify(LocalSource(root), manifest)
    found = sorted((f.kind.value, f.path) for f in report.findings)
    assert found == [("unsafe_path", "escape.txt"), ("unsafe_path", "escape2.txt")]
    # the escaping link was never read: no digest recorded for it
    assert {v.path for v in report.verified} == {"real.txt", "link.txt"}


def test_name_normalization(tmp_path: Path) -> None:
    nfc = unicodedata.normalize("NFC", "café.txt")
    nfd = unicodedata.normalize("NFD", "café.txt")
    root = make_export(tmp_path / "x", {nfd: b"x"})
    report = verify(LocalSource(root), manifest_for({nfc: b"x"}))
    assert kinds(report) == ["name_normalization"]
    assert report.findings[0].path == nfc


def test_case_folding(tmp_path: Path) -> None:
    root = make_export(tmp_path / "x", {"Report.PDF": b"x"})
    report = verify(LocalSource(root), manifest_for({"report.pdf": b"x"}))
    assert kinds(report) == ["name_normalization"]


def test_fifo_is_unreadable_not_hung(tmp_path: Path) -> None:
    root = make_export(tmp_path / "x", {"a": b"1"})
    os.mkfifo(root / "pipe")
    report = verify(LocalSource(root), manifest_for({"a": b"1", "pipe": b"2"}))
    assert kinds(report) == ["unreadable"]


def test_size_only_tier_and_require_tier(tmp_path: Path) -> None:
    root = make_export(tmp_path / "x")
    report = verify(LocalSource(root), manifest_for(DEFAULT_FILES), VerifyOptions(fixity=False))
    assert report.tiers == {"size_only": len(DEFAULT_FILES)} and report.findings == []
    report = verify(LocalSource(root), manifest_for(DEFAULT_FILES),
                    VerifyOptions(fixity=False, require_tier=Tier.DOWNLOADED))
    assert set(kinds(report)) == {"tier_insufficient"}
    assert decide_outcome(report.findings) is Outcome.ERROR


@pytest.mark.parametrize("parallelism", [1, 2, 8])
def test_large_files_in_parallel(tmp_path: Path, parallelism: int) -> None:
    big = {f"big{i}.bin": os.urandom(5 << 20) for i in range(4)}
    root = make_export(tmp_path / "x", big)
    report = verify(LocalSource(root), manifest_for(big), VerifyOptions(parallelism=parallelism))
    assert report.findings == [] and report.files_verified == 4
    (root / "big2.bin").write_bytes(b"\0" + big["big2.bin"][1:])
    report = verify(LocalSource(root), manifest_for(big), VerifyOptions(parallelism=parallelism))
    assert [(f.kind.value, f.path) for f in report.findings] == [("digest_mismatch", "big2.bin")]


def test_strongest_and_all_algorithms(tmp_path: Path) -> None:
    import hashlib

    data = b"payload"
    root = make_export(tmp_path / "x", {"f": data})
    m = finalize("json", "t", [ManifestEntry("f", 7, {"md5": hashlib.md5(data).hexdigest(),
                                                      "sha256": "0" * 64})], [])
    assert kinds(verify(LocalSource(root), m)) == ["digest_mismatch"]
    m = finalize("json", "t", [ManifestEntry("f", 7, {"md5": "0" * 32, "sha256": sha256(data)})], [])
    report = verify(LocalSource(root), m, VerifyOptions(algorithms="strongest"))
    assert report.findings == [] and list(report.verified[0].digests) == ["sha256"]


def test_memory_does_not_grow_with_file_size(tmp_path: Path) -> None:
    """Hash a 256 MiB sparse file in a child process and compare peak RSS with a 1 MiB one."""
    import subprocess
    import sys

    code = r"""
import resource, sys
from reversib.manifests.base import ManifestEntry, finalize
from reversib.sources.local import LocalSource
from reversib.verify import verify, VerifyOptions
root, size, digest = sys.argv[1], int(sys.argv[2]), sys.argv[3]
m = finalize("json", "t", [ManifestEntry("f", size, {"sha256": digest})], [])
r = verify(LocalSource(root), m, VerifyOptions(parallelism=2))
assert r.findings == [], r.findings
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    import hashlib

    rss = []
    for size in (1 << 20, 256 << 20):
        d = tmp_path / f"s{size}"
        d.mkdir()
        with open(d / "f", "wb") as f:
            f.truncate(size)
        h = hashlib.sha256()
        with open(d / "f", "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        out = subprocess.run([sys.executable, "-c", code, str(d), str(size), h.hexdigest()], check=True,
                             capture_output=True, text=True).stdout
        rss.append(int(out.strip()))
    assert rss[1] < rss[0] + 8 * 1024, f"peak RSS grew from {rss[0]} KiB to {rss[1]} KiB"


def test_many_small_files_use_the_helper_process_and_agree(tmp_path: Path) -> None:
    """Above MIN_FILES_FOR_PROCESS small files, batches go to `reversib.hashworker`: same verdict."""
    from reversib.verify import _Dispatcher

    count = _Dispatcher.MIN_FILES_FOR_PROCESS + 500
    files = {f"d{i // 100:02d}/f{i:04d}.bin": os.urandom(64 + i % 50) for i in range(count)}
    root = make_export(tmp_path / "x", files)
    manifest = manifest_for(files, sizes=False)
    names = sorted(files)
    (root / names[10]).write_bytes(b"changed")
    (root / names[-3]).unlink()
    os.mkfifo(root / names[-3])
    (root / names[1000]).unlink()
    (root / "d99").mkdir()
    (root / "d99" / "extra").write_bytes(b"x")
    serial = verify(LocalSource(root), manifest, VerifyOptions(parallelism=1))
    parallel = verify(LocalSource(root), manifest, VerifyOptions(parallelism=2))
    expected = sorted([("digest_mismatch", names[10]), ("unreadable", names[-3]), ("missing", names[1000]),
                       ("unexpected", "d99/extra")])
    assert sorted((f.kind.value, f.path) for f in serial.findings) == expected
    assert parallel.findings == serial.findings
    assert serial.helper_files == 0 and parallel.helper_files > 0
    assert parallel.files_verified == serial.files_verified == len(files) - 2
    assert parallel.verified and \
        {v.path: v.digests for v in parallel.verified} == {v.path: v.digests for v in serial.verified}


class _StoredChecksumSource(LocalSource):
    """A local export whose 'storage' keeps a sha256 per file (as S3 keeps ChecksumSHA256)."""

    def __init__(self, root: Path, stored: dict[str, str]):
        super().__init__(root)
        self.stored = stored
        self.asked: list[str] = []

    @property
    def capabilities(self):  # type: ignore[override]
        from reversib.sources.base import Capabilities

        return Capabilities(digests_without_download=frozenset({"sha256"}))

    def digests_without_download(self, entry, algorithms):  # type: ignore[override]
        from reversib.sources.base import StoredDigests

        self.asked.append(entry.path)
        digest = self.stored.get(entry.path)
        return StoredDigests("stored_checksum", {"sha256": digest}, "test storage") if digest else None


def test_stored_checksum_tier_only_when_accepted(tmp_path: Path) -> None:
    root = make_export(tmp_path / "x")
    stored = {p: sha256(d) for p, d in DEFAULT_FILES.items() if p != "a.txt"}  # a.txt: no stored checksum
    stored["b/c.csv"] = "f" * 64  # the storage's checksum disagrees with the manifest
    manifest = manifest_for(DEFAULT_FILES)

    source = _StoredChecksumSource(root, stored)
    report = verify(source, manifest)  # not accepted: everything downloaded, storage never asked
    assert report.tiers == {"downloaded": len(DEFAULT_FILES)} and source.asked == [] and report.findings == []

    source = _StoredChecksumSource(root, stored)
    report = verify(source, manifest, VerifyOptions(accept=frozenset({Tier.STORED_CHECKSUM})))
    assert report.tiers == {"downloaded": 1, "stored_checksum": len(DEFAULT_FILES) - 1}
    assert [(f.kind.value, f.path) for f in report.findings] == [("digest_mismatch", "b/c.csv")]
    assert report.findings[0].detail == "stored_checksum: test storage"
    assert report.bytes_verified == len(DEFAULT_FILES["a.txt"])  # only a.txt was read
    report = verify(source, manifest, VerifyOptions(accept=frozenset({Tier.STORED_CHECKSUM}),
                                                    require_tier=Tier.DOWNLOADED))
    assert sorted(f.kind.value for f in report.findings) == ["digest_mismatch"] + ["tier_insufficient"] * 3
