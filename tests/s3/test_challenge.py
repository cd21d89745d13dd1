"""Challenge reads against the S3 endpoint: ranged GETs of random blocks, compared with the block digests of
the last full download -- which stored checksums (metadata) cannot answer."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from reversib.config import CheckConfig
from reversib.history import History
from reversib.model import FindingKind, Outcome
from reversib.runner import run_check
from tests.helpers import make_export, run_tool
from tests.s3.conftest import Endpoint
from tests.s3.helpers import s3_options, upload_tree

BLOCK = 64 << 10
N = 4


def _check(endpoint: Endpoint, bucket: str, **more: Any) -> CheckConfig:
    return CheckConfig.model_validate({
        "version": 1, "id": "s3-challenge", "name": "s3 challenge",
        "source": {"url": f"s3://{bucket}/exp/", "s3": s3_options(endpoint.url)},
        "manifest": {"path": "SHA256SUMS"}, "challenge": {"block_size": "64KiB", "reads": N}, **more})


def test_challenge_reads_on_s3(tmp_path: Path, endpoint: Endpoint, s3: Any, bucket: str) -> None:
    rng = random.Random(5)
    root = make_export(tmp_path / "e", {f"o{i}.bin": rng.randbytes(3 * BLOCK + 100) for i in range(N)})
    run_tool(["sha256sum"], root, "SHA256SUMS")
    upload_tree(s3, bucket, "exp/", root, ChecksumAlgorithm="SHA256")
    with History.open(f"sqlite:///{tmp_path / 'h.db'}") as history:
        first = run_check(_check(endpoint, bucket), history, rng=random.Random(1))
        assert first.outcome is Outcome.PASSED and first.tiers == {"downloaded": N}
        payload, manifest = N * (3 * BLOCK + 100), (root / "SHA256SUMS").stat().st_size
        assert first.bytes_downloaded is not None  # every object, and the manifest (read twice: sniffed, parsed)
        assert payload + manifest <= first.bytes_downloaded <= payload + 2 * manifest

        # Stored checksums every run (metadata), and N random blocks read back with ranged GETs.
        endpoint.reset()
        cheap = {"fixity": {"accept": ["stored_checksum"]}}
        second = run_check(_check(endpoint, bucket, **cheap), history, rng=random.Random(2))
        assert second.outcome is Outcome.PASSED, second.findings
        assert second.tiers == {"challenge": N} and second.files_verified == N  # compared and challenged: once
        gets = [(path, rng_header) for method, path, rng_header in endpoint.requests()
                if method == "GET" and path.endswith(".bin")]
        assert len(gets) == N
        for _, r in gets:  # an exact range: one block, nothing after it leaves the store
            assert r is not None and re.fullmatch(r"bytes=\d+-\d+", r), r
            start, end = map(int, r[6:].split("-"))
            assert end - start + 1 in (BLOCK, 100) and start % BLOCK == 0, r
        assert second.bytes_downloaded is not None and second.bytes_downloaded <= N * BLOCK + 2000

        # The object's checksum metadata is intact but its bytes are not: only a challenge can tell.
        endpoint.faults(flip={f"/{bucket}/exp/o2.bin": [0, 10]})
        third = run_check(_check(endpoint, bucket, **cheap), history, rng=random.Random(3))
    assert third.outcome is Outcome.FAILED
    bad = [f for f in third.findings if f.path == "o2.bin"]
    assert len(bad) == 1 and bad[0].kind is FindingKind.DIGEST_MISMATCH
    assert bad[0].detail is not None and bad[0].detail.startswith("challenge read of block ")
