"""The verifier's re-download of a mismatching entry (sources declaring `recheck_mismatch`), on local files
served through a source that corrupts its first reads like a faulty network would."""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import pytest

from reversib.manifests import load_manifest
from reversib.sources.base import Capabilities
from reversib.sources.local import LocalSource
from reversib.verify import VerifyOptions, verify
from tests.helpers import make_export, run_tool


class FlakySource(LocalSource):
    """Flips one bit of the first `bad_reads` reads of `target`; declares the recheck capability."""

    def __init__(self, root: Path, target: str, bad_reads: int, recheck: bool = True):
        super().__init__(root)
        self.target, self.bad_reads, self.recheck, self.opens = target, bad_reads, recheck, 0

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(recheck_mismatch=self.recheck)

    def _open_raw(self, path: str, offset: int) -> BinaryIO:
        raw = super()._open_raw(path, offset)
        if path != self.target:
            return raw
        self.opens += 1
        if self.opens > self.bad_reads:
            return raw
        data = bytearray(raw.read())
        raw.close()
        data[7] ^= 0x10
        return io.BytesIO(bytes(data))


@pytest.mark.parametrize(("bad_reads", "recheck", "severity", "detail", "opens"), [
    (0, True, None, None, 1),
    (1, True, "warning", "transient: second download matched", 2),
    (2, True, "error", "confirmed by a second download", 2),
    (1, False, "error", None, 1),  # a source without the capability is read once, as before
])
def test_recheck(tmp_path: Path, bad_reads: int, recheck: bool, severity: str | None, detail: str | None,
                 opens: int) -> None:
    root = make_export(tmp_path / "e", {"a.bin": bytes(range(256)) * 8, "b.txt": b"b\n"})
    run_tool(["sha256sum"], root, "SHA256SUMS")
    src = FlakySource(root, "a.bin", bad_reads, recheck)
    report = verify(src, load_manifest(src, "SHA256SUMS"), VerifyOptions(parallelism=1))
    found = [(f.kind.value, f.path, f.sev.value, f.detail) for f in report.findings]
    assert found == ([] if severity is None else [("digest_mismatch", "a.bin", severity, detail)])
    assert src.opens == opens
    assert report.files_verified == 2  # the entry is recorded (downloaded) in every case
