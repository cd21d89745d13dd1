"""Challenge reads (docs/coverage.md): random byte ranges compared with block digests recorded earlier.

When a check has a `challenge:` block, every full download that matches the manifest also records the
sha256 of each `block_size` block of the entry (computed during the same read: `digests.BlockHasher`),
stored with the entry's state in the history.  Later runs read `challenge.reads` random blocks of
entries they did not download, and compare: a provider cannot answer that from cached metadata (a
stored checksum, an ETag) -- it has to hold the bytes.  Such an entry is counted with tier `challenge`
(once: an entry also compared with a stored checksum in the same run counts as challenged only);
a different block is a `digest_mismatch` finding naming the block and its byte range.

Block digests are used only while the manifest still gives the digests the download matched (`of`)
and the size they covered: an entry that changed is never challenged against its old content.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from collections.abc import Iterable
from typing import Any

from reversib.config import ChallengeConfig
from reversib.digests import CHUNK
from reversib.manifests.base import Manifest, ManifestEntry
from reversib.model import Finding, FindingKind, Tier
from reversib.sources.base import Cancelled, Source

BLOCK_ALGORITHM = "sha256"
DRAWS_PER_READ = 8  # entries drawn per wanted read, to find some with block digests


def encode(v: Any) -> str | None:
    """The block digests of one verified entry (`verify.Verified`) as stored in the history, or None."""
    blocks = getattr(v, "blocks", None)
    if blocks is None:
        return None
    stamp = dt.datetime.fromtimestamp(v.verified_at, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps({"a": blocks.algorithm, "b": blocks.block_size, "n": v.size, "at": stamp,
                       "of": dict(sorted(v.digests.items())), "d": blocks.digests}, separators=(",", ":"))


def _usable(m: ManifestEntry, stored: dict[str, Any]) -> bool:
    """The recorded blocks describe the content the manifest gives now."""
    of = stored.get("of") or {}
    common = [a for a in m.digests if a in of]
    if not common or any(of[a] != m.digests[a] for a in common):
        return False
    if m.size is not None and stored.get("n") != m.size:
        return False
    return stored.get("a") == BLOCK_ALGORITHM and bool(stored.get("d")) and int(stored.get("b") or 0) > 0


def challenge(source: Source, manifest: Manifest, report: Any, config: ChallengeConfig,
              recorded: Any, rng: random.Random, skip: Iterable[str] = ()) -> None:
    """Read back `config.reads` random blocks of entries not downloaded in this run (`report`: the run's
    `verify.VerifyReport`, updated in place).  `recorded(paths) -> {path: blocks JSON}` reads the history."""
    entries = manifest.entries
    if config.reads <= 0 or not entries:
        return
    done = {v.path for v in report.verified if v.tier is Tier.DOWNLOADED}
    bad = {f.path for f in report.findings if f.path} | set(skip)
    want = min(len(entries), config.reads * DRAWS_PER_READ)
    drawn = rng.sample(range(len(entries)), want)
    candidates = {entries[i].path: entries[i] for i in drawn
                  if entries[i].path not in done and entries[i].path not in bad}
    stored = recorded(list(candidates))
    usable: list[tuple[ManifestEntry, dict[str, Any]]] = []
    for path, text in stored.items():
        m = candidates.get(path)
        if m is None:
            continue
        try:
            blocks = json.loads(text)
        except ValueError:
            continue
        if isinstance(blocks, dict) and _usable(m, blocks):
            usable.append((m, blocks))
    usable.sort(key=lambda pair: pair[0].path)
    rng.shuffle(usable)
    chosen = usable[:config.reads]
    # Entries this run verified already at a weaker tier (a stored checksum...): counted once, as challenged.
    paths = {m.path for m, _ in chosen}
    weaker = {v.path: v.tier.value for v in report.verified if v.path in paths}
    buf = bytearray(CHUNK)
    for m, blocks in chosen:
        _read_block(source, m, blocks, rng, report, buf, weaker.get(m.path))


def _read_block(source: Source, m: ManifestEntry, blocks: dict[str, Any], rng: random.Random, report: Any,
                buf: bytearray, counted: str | None = None) -> None:
    """One challenge read.  `counted`: the tier the entry was already counted with in this run (its count moves
    to `challenge`, the stronger tier: an entry is one of `files_verified` once)."""
    size, digests, block_size = int(blocks["n"]), blocks["d"], int(blocks["b"])
    k = rng.randrange(len(digests))
    offset = k * block_size
    length = max(0, min(block_size, size - offset))
    where = f"bytes {offset}-{offset + length - 1}" if length else "empty entry"
    h = hashlib.new(BLOCK_ALGORITHM)
    nbytes = 0
    view = memoryview(buf)
    try:
        with source.open_range(m.path, offset, length) as stream:
            while n := stream.readinto(view):
                h.update(view[:n])
                nbytes += n
    except Cancelled:
        raise
    except OSError as exc:
        report.findings.append(Finding(FindingKind.UNREADABLE, m.path, expected=f"block {k} ({where}) readable",
                                       actual=f"challenge read failed: {exc.strerror or exc}"))
        return
    report.tiers[Tier.CHALLENGE.value] = report.tiers.get(Tier.CHALLENGE.value, 0) + 1
    if counted is not None and report.tiers.get(counted, 0) > 0:
        report.tiers[counted] -= 1
        if not report.tiers[counted]:
            del report.tiers[counted]
    else:
        report.files_verified += 1
    report.bytes_verified += nbytes
    got = h.hexdigest()
    if nbytes != length or got != digests[k]:
        actual = f"{BLOCK_ALGORITHM}:{got}" + (f" ({nbytes} of {length} bytes read)" if nbytes != length else "")
        report.findings.append(Finding(
            FindingKind.DIGEST_MISMATCH, m.path, expected=f"{BLOCK_ALGORITHM}:{digests[k]}", actual=actual,
            detail=f"challenge read of block {k} ({where}) against the block digests of the full download "
                   f"of {blocks.get('at')}"))
