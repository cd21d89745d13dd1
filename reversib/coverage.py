"""Rolling coverage: which manifest entries a run verifies when the check has a budget (docs/coverage.md).

Completeness (the listing against the manifest, sizes included) always runs in full; only content
verification (the download, or a digest the source gives) is rationed.  Only downloads -- bytes reversib
read and hashed itself -- count for coverage and move an entry's coverage clock.  Each run:

1. merges the manifest with the entry states of the history (both in path order: no index of the
   export is built) and keeps, per entry, the time of its last download and its size;
2. orders the entries: *changed* first (the manifest's size or a digest differs from what reversib
   verified last time), then never verified, then least recently verified (ties in random order);
3. takes entries in that order while they fit in the budget minus its random share (the first one
   always, however large: the order always moves on), then draws entries at random for the random
   share -- so that a provider cannot tell in advance which entries the next run reads.

After the run, `measure` gives the share of the export's bytes verified within the period.  Memory
is a few arrays of one number per entry (about 40 bytes per entry with the sort).
"""

from __future__ import annotations

import math
import random
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from reversib.config import CoverageConfig
from reversib.history import storable
from reversib.manifests.base import ManifestEntry

# Tiers that count for coverage: reversib itself read and hashed every byte of the entry.  A digest the
# source gives (`stored_checksum`, `remote_digest`: metadata such as an S3 checksum or an ETag), a
# challenge read (a few blocks) and a size comparison do not.
CONTENT_TIERS = frozenset({"downloaded"})
NEVER = -math.inf
_CHANGED_KEY = -2e18  # sort keys: changed entries, then never verified (-1e18), then by time
_NEVER_KEY = -1e18


class EntryState(Protocol):
    @property
    def path(self) -> str: ...
    @property
    def size(self) -> int | None: ...
    @property
    def digests(self) -> Mapping[str, str]: ...
    @property
    def tier(self) -> str: ...
    @property
    def verified_at(self) -> float: ...


@dataclass
class Plan:
    """The entries one run verifies, and what the coverage measurement needs afterwards."""

    period: float
    budget_bytes: int
    selected: dict[str, int]  # manifest path -> index in the manifest's entries
    last: array[float]  # per manifest entry: last content verification (epoch seconds), NEVER when none
    sizes: array[int]  # per manifest entry: bytes (manifest, else history, else the mean of the known)
    downloaded: bytearray = field(default_factory=bytearray)  # per entry: 1 when its stored state is a download
    changed_files: int = 0
    random_files: int = 0
    selected_bytes: int = 0

    def __contains__(self, path: object) -> bool:
        return path in self.selected

    def records(self, verified: Iterable[Any]) -> Iterator[Any]:
        """This run's verified entries (`verify.Verified`) to store as entry states: all but those verified
        at a tier that does not count for coverage whose stored state is still a download of the same
        content -- a stored-checksum comparison must not reset the coverage clock (docs/coverage.md)."""
        for v in verified:
            if v.tier.value not in CONTENT_TIERS:
                i = self.selected.get(v.path)
                if i is not None and self.downloaded[i]:
                    continue
            yield v


def _changed(m: ManifestEntry, s: EntryState) -> bool:
    if m.size is not None and s.size is not None and m.size != s.size:
        return True
    return any(s.digests.get(a) not in (None, h) for a, h in m.digests.items())


def plan(entries: Sequence[ManifestEntry], states: Iterable[EntryState], config: CoverageConfig, now: float,
         rng: random.Random | None = None,
         listed_sizes: Callable[[set[str]], Mapping[str, int]] | None = None) -> Plan:
    """Choose the entries to verify in this run.  `entries` in any order (a manifest's: by path), `states` in
    the history's path order (History.entry_states, by stored path).  When neither the manifest nor the
    history knows the size of most entries (a first run over a `SHA256SUMS`), `listed_sizes` is asked for
    them (the export's listing): the budget is a cap in bytes, never a guess."""
    rng = rng or random.SystemRandom()
    n = len(entries)
    last = array("d", [NEVER]) * n
    sizes = array("q", [-1]) * n
    changed = bytearray(n)
    downloaded = bytearray(n)
    it = iter(states)
    st = next(it, None)
    # The history orders paths as it stores them (`storable`: a byte that is not UTF-8 written `\xNN`),
    # the manifest by the paths themselves: the merge walks the manifest in the history's order (a
    # sorted list of indices; the sort is linear when both orders agree, as for ASCII names).
    keys = [storable(m.path) for m in entries]  # the same string objects for clean names: references only
    by_key = sorted(range(n), key=keys.__getitem__)
    for i in by_key:
        m = entries[i]
        key = keys[i]
        while st is not None and st.path < key:
            st = next(it, None)
        size = m.size
        if st is not None and st.path == key:
            if _changed(m, st):
                changed[i] = 1
            elif st.tier in CONTENT_TIERS:
                last[i] = st.verified_at
                downloaded[i] = 1
            if size is None:
                size = st.size
        if size is not None:
            sizes[i] = size
    del keys, by_key
    unknown = [i for i in range(n) if sizes[i] < 0]
    if listed_sizes is not None and 2 * len(unknown) > n:
        listed = listed_sizes({entries[i].path for i in unknown})
        for i in unknown:
            size = listed.get(entries[i].path)
            if size is not None:
                sizes[i] = size
    del unknown
    known = [s for s in sizes if s >= 0]
    mean = round(sum(known) / len(known)) if known else 1
    for i in range(n):
        if sizes[i] < 0:
            sizes[i] = mean
    total = sum(sizes)
    budget = math.inf
    if config.budget_bytes is not None:
        budget = config.budget_bytes
    if config.budget_share is not None:
        budget = min(budget, math.ceil(config.budget_share * total))
    budget_bytes = int(min(budget, total))
    ordered_budget = budget_bytes - int(budget_bytes * config.random_share)

    order = list(range(n))
    rng.shuffle(order)  # ties (never verified, verified in the same second) in random order
    order.sort(key=lambda i: _CHANGED_KEY if changed[i] else (_NEVER_KEY if last[i] == NEVER else last[i]))
    result = Plan(period=config.period, budget_bytes=budget_bytes, selected={}, last=last, sizes=sizes,
                  downloaded=downloaded)
    used = 0
    for i in order:
        if result.selected and used + sizes[i] > ordered_budget:
            break
        if not result.selected and ordered_budget <= 0 and not changed[i]:
            break
        result.selected[entries[i].path] = i
        used += sizes[i]
        result.changed_files += changed[i]
    del order
    # The random share: draws among the entries not chosen yet, while they fit.
    left = n - len(result.selected)
    misses = 0
    while left > 0 and used < budget_bytes and misses < 64:
        i = rng.randrange(n)
        path = entries[i].path
        if path in result.selected:
            misses += 1
            continue
        if used + sizes[i] > budget_bytes:
            misses += 1
            continue
        result.selected[path] = i
        used += sizes[i]
        result.random_files += 1
        left -= 1
        misses = 0
    result.selected_bytes = used
    return result


def measure(p: Plan, verified: Iterable[Any], now: float, *, not_sampled_files: int = 0,
            not_sampled_bytes: int = 0) -> dict[str, Any]:
    """The run's coverage figures (stored with the run, shown by `--json`, the metrics and the report).

    `verified` are this run's verified entries (`verify.Verified`): those verified at a content tier
    count as verified now."""
    last = p.last
    for v in verified:
        i = p.selected.get(v.path)
        if i is not None and v.tier.value in CONTENT_TIERS:
            last[i] = max(last[i], v.verified_at)
    cutoff = now - p.period
    covered_files = covered_bytes = 0
    oldest = math.inf
    for i, t in enumerate(last):
        if t >= cutoff:
            covered_files += 1
            covered_bytes += p.sizes[i]
        oldest = min(oldest, t)
    total = sum(p.sizes)
    return {
        "period_seconds": p.period,
        "budget_bytes": p.budget_bytes,
        "selected_files": len(p.selected),
        "selected_bytes": p.selected_bytes,
        "changed_files": p.changed_files,
        "random_files": p.random_files,
        "not_sampled_files": not_sampled_files,
        "not_sampled_bytes": not_sampled_bytes,
        "entries": len(last),
        "bytes": total,
        "covered_files": covered_files,
        "covered_bytes": covered_bytes,
        "ratio": covered_bytes / total if total else (covered_files / len(last) if len(last) else 1.0),
        "oldest_verified_at": None if oldest == NEVER or oldest == math.inf else oldest,
    }
