"""Bandwidth limits: reads in flight capped per source, bytes downloaded counted."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import BinaryIO

import pytest

from reversib.manifests import load_manifest
from reversib.sources.base import Capabilities, RateLimiter
from reversib.sources.local import LocalSource
from reversib.verify import VerifyOptions, verify
from tests.helpers import make_export, run_tool


class SlowSource(LocalSource):
    """A latency-bound source (each open waits) that records how many reads are in flight at most."""

    def __init__(self, root: Path, limiter: RateLimiter | None = None) -> None:
        super().__init__(root, limiter=limiter)
        self.lock = threading.Lock()
        self.open_now = self.peak = 0

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(latency_bound=True, parallelism=16)

    def _open_raw(self, path: str, offset: int) -> BinaryIO:
        with self.lock:
            self.open_now += 1
            self.peak = max(self.peak, self.open_now)
        time.sleep(0.02)
        raw = super()._open_raw(path, offset)
        close = raw.close

        def closing() -> None:
            with self.lock:
                self.open_now -= 1
            close()

        raw.close = closing  # type: ignore[method-assign]
        return raw


@pytest.mark.parametrize(("cap", "peak"), [(None, 16), (3, 3), (1, 1)])
def test_max_connections_caps_reads_in_flight(tmp_path: Path, cap: int | None, peak: int) -> None:
    root = make_export(tmp_path / "e", {f"f{i:02d}": bytes([i]) * 1000 for i in range(40)})
    run_tool(["sha256sum"], root, "SHA256SUMS")
    limiter = RateLimiter(None)
    src = SlowSource(root, limiter)
    manifest = load_manifest(src, "SHA256SUMS")
    src.peak = 0
    report = verify(src, manifest, VerifyOptions(parallelism=2, max_connections=cap))
    assert report.files_verified == 40 and not report.findings
    assert src.peak == peak if cap is not None else src.peak > 3
    manifest_bytes = (root / "SHA256SUMS").stat().st_size  # read twice: format detection, then parsing
    assert limiter.consumed == 40 * 1000 + 2 * manifest_bytes


def test_source_max_connections_is_validated() -> None:
    from pydantic import ValidationError

    from reversib.config import SourceConfig

    assert SourceConfig(url="/x", max_connections=4).max_connections == 4
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        SourceConfig(url="/x", max_connections=0)
