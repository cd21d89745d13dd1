"""Rolling coverage split into shards: every shard computes the run's plan (one seed, one snapshot of the
entry states), verifies its part of it, and the merge reports what one unsharded run would."""

from __future__ import annotations

import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from reversib.history import History
from reversib.leases import Leases
from reversib.model import Outcome
from reversib.runner import run_check
from reversib.shards import ShardError, run_sharded
from tests.scale.helpers import DAY, T0, Clock, check_config, make_sized_export

N = 40


@pytest.fixture
def export(tmp_path: Path) -> Path:
    root = tmp_path / "export"
    make_sized_export(root, N)
    return root


def _states(history: History) -> dict[str, tuple[Any, ...]]:
    return {s.path: (s.size, dict(s.digests), s.tier, s.verified_at) for s in history.entry_states("scale")}


def test_a_sharded_run_reports_what_one_unsharded_run_reports(tmp_path: Path, export: Path) -> None:
    check = check_config(export, coverage={"period": "7d", "budget_share": 0.2})
    sharded = check.model_copy(update={"shards": 3})
    clock = Clock()
    a_url, b_url = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    with History.open(a_url, clock=clock) as a:  # a history of a few days, then copied: one snapshot, two databases
        for day in range(3):
            clock.now = T0 + day * DAY
            run_check(check, a, clock=clock, rng=random.Random(day))
    shutil.copy(tmp_path / "a.db", tmp_path / "b.db")
    with History.open(a_url, clock=clock) as a, History.open(b_url, clock=clock) as b:
        assert _states(a) == _states(b)
        for day in range(3, 10):
            clock.now = T0 + day * DAY
            run_id = uuid.uuid4().hex
            leases = Leases(b, 60.0)
            leases.ensure(run_id, 3)
            seed = leases.seed(run_id)  # the sharded run's seed, drawn when its rows were created
            one = run_check(check, a, clock=clock, rng=random.Random(seed))
            # One process does the three shards one after the other: each completes before the next plans.
            three = run_sharded(sharded, b, shard=(0, 3), run_id=run_id, clock=clock)
            assert one.outcome is three.outcome is Outcome.PASSED
            assert one.coverage is not None and three.coverage == one.coverage, f"day {day}"
            assert three.files_verified == one.files_verified == one.coverage["selected_files"]
            assert three.tiers == one.tiers
            now_a = {p for p, s in _states(a).items() if s[3] == clock.now}
            now_b = {p for p, s in _states(b).items() if s[3] == clock.now}
            assert now_a == now_b and len(now_a) == one.coverage["selected_files"]
            assert _states(a) == _states(b), f"day {day}"
            assert b.runs("scale", limit=1)[0].coverage == one.coverage
        assert one.coverage["ratio"] == 1.0


def test_twenty_percent_in_three_shards_covers_every_entry_within_seven_days(tmp_path: Path,
                                                                              export: Path) -> None:
    check = check_config(export, shards=3, coverage={"period": "7d", "budget_share": 0.2})
    clock = Clock()
    total = sum(p.stat().st_size for p in export.rglob("*.bin"))
    max_size = max(p.stat().st_size for p in export.rglob("*.bin"))
    with History.open(f"sqlite:///{tmp_path / 'h.db'}", clock=clock) as history:
        for day in range(14):
            clock.now = T0 + day * DAY
            result = run_sharded(check, history, shard=(day % 3, 3), run_id=uuid.uuid4().hex, clock=clock)
            cov = result.coverage
            assert cov is not None and cov["entries"] == N
            assert result.outcome is Outcome.PASSED and result.findings == []
            assert result.files_verified == cov["selected_files"] == result.tiers["downloaded"]
            assert result.files_verified + cov["not_sampled_files"] == N
            assert result.files_listed == N
            assert result.bytes_verified == cov["selected_bytes"] <= cov["budget_bytes"] + max_size
            assert cov["budget_bytes"] <= 0.2 * total + 1
            states = {s.path: s.verified_at for s in history.entry_states("scale")}
            assert len([t for t in states.values() if t == clock.now]) == cov["selected_files"]
            if day >= 6:  # within the period: every entry verified, then kept so
                assert len(states) == N
                assert min(states.values()) >= clock.now - 7 * DAY, f"day {day}: an entry is overdue"
                assert cov["ratio"] == 1.0 and cov["covered_files"] == N
            elif day <= 3:
                assert cov["ratio"] < 1.0


def test_shard_refuses_challenge_not_coverage(pg_url: str, export: Path) -> None:
    with History.open(pg_url) as history:  # the shards' entry records wait in PostgreSQL's JSON
        check = check_config(export, coverage={"period": "7d", "budget_share": 0.5},
                             challenge={"block_size": "64KiB"})
        with pytest.raises(ShardError, match="challenge"):
            run_sharded(check, history, shard=(0, 2), run_id=uuid.uuid4().hex)
        check = check_config(export, coverage={"period": "7d", "budget_share": 0.5})
        result = run_sharded(check, history, shard=(1, 2), run_id=uuid.uuid4().hex)
        assert result.outcome is Outcome.PASSED and result.coverage is not None
        assert result.coverage["entries"] == N and result.files_verified == result.coverage["selected_files"]
        assert len(list(history.entry_states("scale"))) == result.files_verified


def test_a_name_that_is_not_utf8_survives_the_shard_row() -> None:
    import json

    from reversib.history import EntryRecord
    from reversib.shards import _record_in, _record_out

    record = EntryRecord(b"caf\xe9/\xc3\xa9t\xc3\xa9.bin".decode("utf-8", "surrogateescape"), 3, {"sha256": "ab"},
                         "downloaded", T0, None)
    text = json.dumps(_record_out(record), ensure_ascii=False)
    assert "\\ud" not in text and all(ord(c) < 256 for c in text)  # valid text for PostgreSQL's json
    assert _record_in(json.loads(text)) == record
