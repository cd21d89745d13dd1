"""Rolling coverage: a budget per run, every entry verified within the period, changed entries first."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from reversib.history import History
from reversib.manifests.create import create_manifest
from reversib.metrics import HistoryCollector, ScheduledCheck
from reversib.model import FindingKind, Outcome
from reversib.runner import run_check
from tests.helpers import flip_byte
from tests.scale.helpers import DAY, T0, Clock, StoredChecksums, check_config, make_sized_export

N = 40


@pytest.fixture
def export(tmp_path: Path) -> Path:
    root = tmp_path / "export"
    make_sized_export(root, N)
    return root


def test_twenty_percent_a_day_covers_every_entry_within_seven_days(tmp_path: Path, export: Path) -> None:
    check = check_config(export, coverage={"period": "7d", "budget_share": 0.2})
    clock = Clock()
    rng = random.Random(1)
    total = sum(p.stat().st_size for p in export.rglob("*.bin"))
    max_size = max(p.stat().st_size for p in export.rglob("*.bin"))
    with History.open(f"sqlite:///{tmp_path / 'h.db'}", clock=clock) as history:
        collector = HistoryCollector(history, lambda: [ScheduledCheck.of(check, T0)], clock=clock)
        for day in range(21):
            clock.now = T0 + day * DAY
            result = run_check(check, history, clock=clock, rng=rng)
            cov = result.coverage
            assert cov is not None
            # Selected entries only are verified; the others are neither verified nor findings.
            assert result.outcome is Outcome.PASSED and result.findings == []
            assert result.files_verified == cov["selected_files"] == result.tiers["downloaded"]
            assert result.files_verified + cov["not_sampled_files"] == N
            assert result.files_listed == N  # completeness: every entry, every run
            assert result.bytes_verified == cov["selected_bytes"] <= cov["budget_bytes"] + max_size
            assert cov["budget_bytes"] <= 0.2 * total + 1
            assert result.bytes_downloaded is not None and result.bytes_downloaded >= result.bytes_verified
            states = {s.path: s.verified_at for s in history.entry_states("scale")}
            if day >= 6:  # 20% a run: the whole export is verified by the sixth run, then kept so
                assert len(states) == N
                assert min(states.values()) >= clock.now - 7 * DAY, f"day {day}: an entry is overdue"
                assert cov["ratio"] == 1.0 and cov["covered_files"] == N
                metrics = collector.render().decode()
                assert 'reversib_check_coverage_ratio{check="scale"} 1.0' in metrics
                assert 'reversib_check_coverage_period_seconds{check="scale"} 604800.0' in metrics
            elif day <= 3:  # four runs of 20% cannot have covered it all
                assert cov["ratio"] < 1.0
        # The run row keeps the figures (what the metrics read).
        assert history.runs("scale", limit=1)[0].coverage == cov


def test_a_changed_entry_is_verified_in_the_very_next_run(tmp_path: Path, export: Path) -> None:
    check = check_config(export, coverage={"period": "7d", "budget_share": 0.2})
    clock = Clock()
    rng = random.Random(2)
    with History.open(f"sqlite:///{tmp_path / 'h.db'}", clock=clock) as history:
        for day in range(8):
            clock.now = T0 + day * DAY
            run_check(check, history, clock=clock, rng=rng)
        states = {s.path: s.verified_at for s in history.entry_states("scale")}
        freshest = max(states, key=lambda p: (states[p], p))  # verified in the last run: not due for days
        (export / freshest).write_bytes(b"a new version of this file\n")
        create_manifest(export, "json", export.parent / "manifest.json", replace=True)
        clock.now += DAY
        result = run_check(check, history, clock=clock, rng=rng)
        assert result.outcome is Outcome.PASSED
        assert result.coverage is not None and result.coverage["changed_files"] == 1
        after = {s.path: s for s in history.entry_states("scale")}
        assert after[freshest].verified_at == clock.now and after[freshest].size == 27


def test_corruption_of_an_entry_not_sampled_is_found_within_the_period(tmp_path: Path, export: Path) -> None:
    check = check_config(export, coverage={"period": "7d", "budget_share": 0.2})
    clock = Clock()
    rng = random.Random(3)
    with History.open(f"sqlite:///{tmp_path / 'h.db'}", clock=clock) as history:
        for day in range(7):
            clock.now = T0 + day * DAY
            run_check(check, history, clock=clock, rng=rng)
        states = {s.path: s.verified_at for s in history.entry_states("scale")}
        freshest = max(states, key=lambda p: (states[p], p))
        flip_byte(export / freshest)  # same size: only a content read can tell
        (export / min(states)).unlink()  # completeness runs in full: found at once
        found_on = None
        for day in range(7, 14):
            clock.now = T0 + day * DAY
            result = run_check(check, history, clock=clock, rng=rng)
            kinds = {(f.kind, f.path) for f in result.findings}
            assert (FindingKind.MISSING, min(states)) in kinds
            if (FindingKind.DIGEST_MISMATCH, freshest) in kinds:
                found_on = day
                break
        assert found_on is not None and found_on - 6 <= 7


def test_a_byte_budget_and_a_share_both_bound_the_run(tmp_path: Path, export: Path) -> None:
    check = check_config(export, coverage={"period": "7d", "budget_bytes": "5kB", "budget_share": 0.5,
                                           "random_share": 0})
    with History.open(f"sqlite:///{tmp_path / 'h.db'}") as history:
        result = run_check(check, history, rng=random.Random(4))
    assert result.coverage is not None and result.coverage["budget_bytes"] == 5000
    assert 0 < result.coverage["selected_bytes"] == result.bytes_verified <= 5000
    # random_share 0: the ordered entries take the budget; draws only fill what the next one left over
    assert result.coverage["random_files"] < result.files_verified


@pytest.mark.parametrize(("block", "message"), [
    ({"period": "7d"}, "budget_bytes and/or coverage.budget_share"),
    ({"period": "7d", "budget_share": 1.5}, "less than or equal to 1"),
    ({"period": "0s", "budget_share": 0.2}, "greater than 0"),
    ({"period": "7d", "budget_share": 0.2, "bogus": 1}, "Extra inputs"),
])
def test_the_coverage_block_is_validated(export: Path, block: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        check_config(export, coverage=block)


def test_coverage_needs_fixity(export: Path) -> None:
    with pytest.raises(ValidationError, match=r"need fixity\.enabled"):
        check_config(export, coverage={"period": "7d", "budget_share": 0.2}, fixity={"enabled": False})


def test_verify_now_json_reports_coverage_and_bytes_downloaded(tmp_path: Path, export: Path) -> None:
    import yaml

    from tests.cli_helpers import verify_json

    checks = tmp_path / "checks"
    checks.mkdir()
    (checks / "scale.yaml").write_text(yaml.safe_dump({
        "version": 1, "name": "scale", "source": {"url": str(export)},
        "manifest": {"location": str(export.parent / "manifest.json")},
        "coverage": {"period": "7d", "budget_share": 0.25}}))
    config = tmp_path / "reversib.yaml"
    config.write_text(yaml.safe_dump({"version": 1, "checks_dir": "checks"}))
    code, doc = verify_json(["--config", str(config), "scale"], tmp_path / "h.db")  # validated by the schema
    run = doc["runs"][0]
    assert code == 0 and run["outcome"] == "passed"
    cov = run["coverage"]
    assert cov["selected_files"] == run["files_verified"] and cov["not_sampled_files"] == N - run["files_verified"]
    assert run["bytes_downloaded"] == run["bytes_verified"]  # the manifest is read from elsewhere


def test_the_evidence_report_shows_the_coverage(tmp_path: Path, export: Path) -> None:
    import datetime as dt

    from reversib.evidence.report import build_report, render_html, render_markdown

    check = check_config(export, coverage={"period": "7d", "budget_share": 0.2})
    clock = Clock()
    rng = random.Random(5)
    with History.open(f"sqlite:///{tmp_path / 'h.db'}", clock=clock) as history:
        for day in range(8):
            clock.now = T0 + day * DAY
            last = run_check(check, history, clock=clock, rng=rng)
        utc = dt.timezone.utc
        doc = build_report(history, [check], since=dt.datetime.fromtimestamp(T0 - DAY, utc),
                           until=dt.datetime.fromtimestamp(clock.now + DAY, utc))
    cov = doc["checks"][0]["coverage"]
    assert cov["run_id"] == last.run_id and cov["ratio"] == 1.0 and cov["covered_files"] == N
    assert "Rolling coverage: 100.0% of" in render_markdown(doc)
    assert f"{N} of {N} entries) verified within 7d 0h" in render_html(doc)


def test_stored_checksums_do_not_count_as_coverage(tmp_path: Path, export: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`fixity.accept: [stored_checksum]`: the provider's checksums are metadata, not bytes reversib read.  Six
    runs of 20% once gave a coverage of 1.0 with nothing downloaded."""
    monkeypatch.setattr("reversib.runner.open_source", StoredChecksums())
    cheap = check_config(export, coverage={"period": "7d", "budget_share": 0.2}, fixity={"accept": ["stored_checksum"]})
    clock = Clock()
    with History.open(f"sqlite:///{tmp_path / 'h.db'}", clock=clock) as history:
        for day in range(6):
            clock.now = T0 + day * DAY
            result = run_check(cheap, history, clock=clock, rng=random.Random(day))
            assert result.outcome is Outcome.PASSED and "downloaded" not in result.tiers
            assert result.tiers["stored_checksum"] > 0 and result.coverage is not None
            assert result.coverage["ratio"] == 0.0 and result.coverage["covered_files"] == 0


def test_a_stored_checksum_check_keeps_the_coverage_clock(tmp_path: Path, export: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Every entry downloaded at T0; later runs compare stored checksums only: the entries' last download is
    still T0, so the coverage lapses a period after it and the planner still sees them as due."""
    clock = Clock()
    with History.open(f"sqlite:///{tmp_path / 'h.db'}", clock=clock) as history:
        assert run_check(check_config(export), history, clock=clock).tiers == {"downloaded": N}
        monkeypatch.setattr("reversib.runner.open_source", StoredChecksums())
        cheap = check_config(export, coverage={"period": "7d", "budget_share": 0.2},
                             fixity={"accept": ["stored_checksum"]})
        clock.now = T0 + DAY
        result = run_check(cheap, history, clock=clock, rng=random.Random(1))
        assert result.tiers == {"stored_checksum": result.coverage["selected_files"]}  # type: ignore[index]
        assert result.coverage is not None and result.coverage["ratio"] == 1.0  # the downloads of T0
        states = list(history.entry_states("scale"))
        assert {s.tier for s in states} == {"downloaded"} and {s.verified_at for s in states} == {T0}
        clock.now = T0 + 8 * DAY
        result = run_check(cheap, history, clock=clock, rng=random.Random(2))
        assert result.coverage is not None and result.coverage["ratio"] == 0.0
        assert result.coverage["oldest_verified_at"] == T0


def test_a_name_that_is_not_utf8_keeps_its_last_download() -> None:
    """The manifest is in path order, the history in stored-path order (a byte that is not UTF-8 stored `\\xNN`):
    `a\\udcff` sorts after `a~` in one and before it in the other, and once looked never verified (picked first
    every run)."""
    from reversib.config import CoverageConfig
    from reversib.history import EntryRecord, storable
    from reversib.manifests.base import ManifestEntry

    odd = b"a\xff".decode("utf-8", "surrogateescape")
    entries = sorted([ManifestEntry("a~", 10, {"sha256": "11" * 32}), ManifestEntry(odd, 10, {"sha256": "22" * 32}),
                      ManifestEntry("b", 10, {"sha256": "33" * 32})], key=lambda e: e.path)
    states = sorted([EntryRecord("a~", 10, {"sha256": "11" * 32}, "downloaded", T0),
                     EntryRecord(storable(odd), 10, {"sha256": "22" * 32}, "downloaded", T0 + 1)],
                    key=lambda s: s.path)
    assert [e.path for e in entries][:2] == ["a~", odd] and [s.path for s in states] == ["a\\xff", "a~"]
    from reversib.coverage import plan

    p = plan(entries, states, CoverageConfig(period=7 * DAY, budget_bytes=10, random_share=0), T0 + DAY,
             random.Random(0))
    assert list(p.last) == [T0, T0 + 1, float("-inf")]
    assert list(p.selected) == ["b"]  # the never-downloaded one, not the odd name


def test_the_budget_is_real_bytes_from_the_first_run_over_a_sha256sums(tmp_path: Path) -> None:
    """A SHA256SUMS gives no sizes and a first run knows none from the history: the export is listed once
    more for them, so 30 files of 100 kB with a 200 kB budget download two files, not all thirty."""
    from tests.helpers import make_export, run_tool

    root = tmp_path / "export"
    make_export(root, {f"f{i:02d}.bin": bytes([i]) * 100_000 for i in range(30)})
    run_tool(["sha256sum"], root, "SHA256SUMS")
    check = check_config(root, manifest={"path": "SHA256SUMS"}, coverage={"period": "7d", "budget_bytes": 200_000})
    share = check_config(root, id="share", manifest={"path": "SHA256SUMS"},
                         coverage={"period": "7d", "budget_share": 0.2})
    with History.open(f"sqlite:///{tmp_path / 'h.db'}") as history:
        first = run_check(check, history, rng=random.Random(3))
        by_share = run_check(share, history, rng=random.Random(3))
    assert first.outcome is Outcome.PASSED and first.tiers == {"downloaded": 2}
    cov = first.coverage
    assert cov is not None and (cov["budget_bytes"], cov["bytes"], cov["selected_bytes"]) == (200_000, 3_000_000,
                                                                                              200_000)
    assert first.bytes_downloaded is not None and first.bytes_downloaded < 300_000
    assert by_share.coverage is not None and by_share.coverage["budget_bytes"] == 600_000
    assert by_share.tiers == {"downloaded": 6}
