"""Builders for the scale tests: a clock the test moves, exports with manifests, checks with a budget."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from reversib.config import CheckConfig
from reversib.manifests.create import create_manifest

DAY = 86400.0
T0 = 1_800_000_000.0  # 2027-01-15


class Clock:
    """A clock the test sets: every call returns `now`."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_sized_export(root: Path, n: int, seed: int = 7, max_size: int = 5000) -> dict[str, bytes]:
    """`n` files of random sizes and contents under `root`, and a reversib JSON manifest (sizes + sha256)."""
    rng = random.Random(seed)
    files = {f"d{i % 4}/f{i:03d}.bin": rng.randbytes(rng.randint(1, max_size)) for i in range(n)}
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    create_manifest(root, "json", root.parent / "manifest.json", replace=True)
    return files


def check_config(root: Path, **more: Any) -> CheckConfig:
    data: dict[str, Any] = {"version": 1, "id": "scale", "name": "scale", "source": {"url": str(root)},
                            "manifest": {"location": str(root.parent / "manifest.json")},
                            "fixity": {"parallelism": 2}, **more}
    return CheckConfig.model_validate(data)


class StoredChecksums:
    """`open_source` for a local export whose 'storage' gives every file's sha256 (as S3 keeps ChecksumSHA256):
    provider metadata, not bytes reversib read."""

    def __call__(self, url: str, options: object = None, **kw: object) -> object:
        import hashlib

        from reversib.sources.base import Capabilities, StoredDigests
        from reversib.sources.local import LocalSource

        class Stored(LocalSource):
            @property
            def capabilities(self) -> Capabilities:  # type: ignore[override]
                return Capabilities(digests_without_download=frozenset({"sha256"}))

            def digests_without_download(self, entry, algorithms):  # type: ignore[no-untyped-def,override]
                data = (self.root / entry.path).read_bytes()
                return StoredDigests("stored_checksum", {"sha256": hashlib.sha256(data).hexdigest()}, "test storage")

        return Stored(url, **kw)  # type: ignore[arg-type]

