"""Challenge reads on local files: block digests recorded on full downloads, random blocks read back."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from reversib.config import CheckConfig
from reversib.history import History
from reversib.manifests.create import create_manifest
from reversib.model import FindingKind, Outcome
from reversib.runner import run_check
from tests.helpers import flip_byte
from tests.scale.helpers import DAY, T0, Clock, check_config

BLOCK = 64 << 10
N = 6


@pytest.fixture
def export(tmp_path: Path) -> Path:
    root = tmp_path / "export"
    rng = random.Random(11)
    for i in range(N):
        p = root / f"f{i}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(3 * BLOCK + 1000 * i))  # 4 blocks, the last one short
    create_manifest(root, "json", root.parent / "manifest.json", replace=True)
    return root


def _check(export: Path, reads: int, **coverage: object) -> CheckConfig:
    more: dict[str, object] = {"challenge": {"block_size": "64KiB", "reads": reads}}
    if coverage:
        more["coverage"] = {"period": "7d", **coverage}
    return check_config(export, **more)


def test_a_full_download_records_block_digests(tmp_path: Path, export: Path) -> None:
    with History.open(f"sqlite:///{tmp_path / 'h.db'}") as history:
        result = run_check(_check(export, 2), history, rng=random.Random(1))
        assert result.tiers == {"downloaded": N}  # every entry downloaded: nothing left to challenge
        stored = history.block_digests("scale", [f"f{i}.bin" for i in range(N)])
    import hashlib

    data = (export / "f5.bin").read_bytes()
    blocks = json.loads(stored["f5.bin"])
    assert blocks["b"] == BLOCK and blocks["n"] == len(data) and blocks["a"] == "sha256"
    assert blocks["d"] == [hashlib.sha256(data[o:o + BLOCK]).hexdigest() for o in range(0, len(data), BLOCK)]
    assert blocks["of"] == {"sha256": hashlib.sha256(data).hexdigest()}


def _warm(history: History, export: Path, clock: Clock) -> None:
    """Download everything once (blocks recorded), at T0."""
    clock.now = T0
    run_check(_check(export, 0), history, clock=clock, rng=random.Random(0))


def test_entries_not_downloaded_are_challenged(tmp_path: Path, export: Path) -> None:
    clock = Clock()
    with History.open(f"sqlite:///{tmp_path / 'h.db'}", clock=clock) as history:
        _warm(history, export, clock)
        clock.now += DAY
        # A budget of one byte: one entry downloaded (the least recently verified), the others challenged.
        result = run_check(_check(export, 3, budget_bytes=1), history, clock=clock, rng=random.Random(2))
    assert result.outcome is Outcome.PASSED, result.findings
    assert result.tiers == {"downloaded": 1, "challenge": 3}
    assert result.files_verified == 4
    assert result.coverage is not None and result.coverage["not_sampled_files"] == N - 1
    assert result.bytes_downloaded is not None and result.bytes_downloaded <= result.bytes_verified


def test_a_challenge_finds_corruption_that_the_budget_did_not_reach(tmp_path: Path, export: Path) -> None:
    clock = Clock()
    with History.open(f"sqlite:///{tmp_path / 'h.db'}", clock=clock) as history:
        _warm(history, export, clock)
        for offset in range(0, 3 * BLOCK + 5000, BLOCK):  # one flipped byte in every block: any read finds it
            flip_byte(export / "f5.bin", offset + 17)
        clock.now += DAY
        result = run_check(_check(export, N, budget_bytes=1), history, clock=clock, rng=random.Random(3))
        bad = [f for f in result.findings if f.path == "f5.bin"]
        states = {s.path: s for s in history.entry_states("scale")}
    assert result.outcome is Outcome.FAILED
    assert len(bad) == 1 and bad[0].kind is FindingKind.DIGEST_MISMATCH
    assert bad[0].detail is not None and bad[0].detail.startswith("challenge read of block ")
    assert "against the block digests of the full download of 2027-01-15T" in bad[0].detail
    assert bad[0].expected is not None and bad[0].expected.startswith("sha256:")
    assert states["f5.bin"].verified_at == T0  # a challenge is no full verification: the state is kept


def test_a_changed_entry_is_not_challenged_against_its_old_blocks(tmp_path: Path, export: Path) -> None:
    clock = Clock()
    with History.open(f"sqlite:///{tmp_path / 'h.db'}", clock=clock) as history:
        _warm(history, export, clock)
        for i in range(N):  # every entry changes, manifest too: the recorded blocks describe nothing any more
            (export / f"f{i}.bin").write_bytes(bytes([i]) * (3 * BLOCK))
        create_manifest(export, "json", export.parent / "manifest.json", replace=True)
        clock.now += DAY
        result = run_check(_check(export, N, budget_bytes=1, random_share=0), history, clock=clock,
                           rng=random.Random(4))
    assert result.outcome is Outcome.PASSED, result.findings
    assert "challenge" not in result.tiers


def test_the_challenge_block_is_validated(export: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="greater than or equal to 65536"):
        check_config(export, challenge={"block_size": "1KiB"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        check_config(export, challenge={"ranges": 3})


def test_an_entry_compared_and_challenged_in_one_run_counts_once(tmp_path: Path, export: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """With `fixity.accept: [stored_checksum]` an entry was counted twice, compared with its stored checksum and
    challenged ("8 of 4 files", tiers challenge: 4, stored_checksum: 4): now once, at the stronger tier."""
    from tests.scale.helpers import StoredChecksums

    clock = Clock()
    with History.open(f"sqlite:///{tmp_path / 'h.db'}", clock=clock) as history:
        _warm(history, export, clock)
        clock.now += DAY
        monkeypatch.setattr("reversib.runner.open_source", StoredChecksums())
        check = check_config(export, challenge={"block_size": "64KiB", "reads": 3},
                             fixity={"accept": ["stored_checksum"]})
        result = run_check(check, history, clock=clock, rng=random.Random(4))
    assert result.outcome is Outcome.PASSED, result.findings
    assert result.tiers == {"stored_checksum": N - 3, "challenge": 3}
    assert result.files_verified == sum(result.tiers.values()) == N
