"""`verify-now --shard K/N --run-id ID` from the command line (docs/scale.md): an ad-hoc check end to end,
`--shard /N` from JOB_COMPLETION_INDEX, and the refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from reversib.history import History
from reversib.leases import MERGE, Leases
from tests.cli_helpers import run_cli, verify_json
from tests.helpers import DEFAULT_FILES, flip_byte, make_export, run_tool

USAGE = 64


@pytest.fixture
def export(tmp_path: Path) -> Path:
    root = make_export(tmp_path / "exp")
    run_tool(["sha256sum"], root, "SHA256SUMS")
    (root / "SHA256SUMS").rename(tmp_path / "SHA256SUMS")
    return root


def _adhoc(tmp_path: Path, export: Path, *more: str) -> list[str]:
    return ["--source", str(export), "--manifest", str(tmp_path / "SHA256SUMS"), *more]


def test_an_adhoc_sharded_run_end_to_end(tmp_path: Path, export: Path) -> None:
    db = tmp_path / "h.db"
    code, doc = verify_json(_adhoc(tmp_path, export, "--shard", "1/3", "--run-id", "job-uid-1"), db)
    run = doc["runs"][0]
    assert code == 0 and run["outcome"] == "passed", run["findings"]
    assert run["files_verified"] == run["manifest_entries"] == len(DEFAULT_FILES)  # the three shards, merged
    with History.open(f"sqlite:///{db}") as history:
        rows = Leases(history, 60).rows(run["run_id"])
        assert sorted(rows) == [MERGE, 0, 1, 2] and {r["state"] for r in rows.values()} == {"done"}
        assert len(history.runs(run["check_id"])) == 1


def test_a_finished_run_id_is_refused_not_replayed(tmp_path: Path, export: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Reusing the --run-id of a finished run once printed its old verdict (PASSED, rc 0) after a byte had
    been flipped, verifying nothing."""
    db = tmp_path / "h.db"
    args = ["verify-now", *_adhoc(tmp_path, export, "--shard", "0/1", "--run-id", "nightly"), "--no-progress"]
    assert run_cli(args, db)[0] == 0
    capsys.readouterr()
    flip_byte(export / "a.txt")
    code, out = run_cli(args, db)
    err = capsys.readouterr().err
    assert code == USAGE and "PASSED" not in out.upper()
    assert "was already finished at" in err and "outcome passed" in err and "nothing was verified now" in err
    code, doc = verify_json(_adhoc(tmp_path, export, "--shard", "0/1", "--run-id", "nightly-2"), db)
    assert code == 1 and doc["runs"][0]["outcome"] == "failed"


def test_shard_k_from_job_completion_index(tmp_path: Path, export: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "h.db"
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    assert run_cli(["verify-now", *_adhoc(tmp_path, export, "--shard", "/2", "--run-id", "j")], db)[0] == USAGE
    assert "JOB_COMPLETION_INDEX is not set" in capsys.readouterr().err
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")  # out of range for 2 shards: K was read from it
    assert run_cli(["verify-now", *_adhoc(tmp_path, export, "--shard", "/2", "--run-id", "j")], db)[0] == USAGE
    assert "--shard 2/2" in capsys.readouterr().err
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    code, doc = verify_json(_adhoc(tmp_path, export, "--shard", "/2", "--run-id", "j"), db)
    assert code == 0 and doc["runs"][0]["files_verified"] == len(DEFAULT_FILES)
    with History.open(f"sqlite:///{db}") as history:
        assert sorted(Leases(history, 60).rows(doc["runs"][0]["run_id"])) == [MERGE, 0, 1]


def test_several_shards_need_a_run_id(tmp_path: Path, export: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "h.db"
    assert run_cli(["verify-now", *_adhoc(tmp_path, export, "--shard", "0/2")], db)[0] == USAGE
    assert "needs --run-id" in capsys.readouterr().err
    assert not db.exists()  # refused before the history is opened: no run recorded


def test_a_late_shard_of_a_merged_run_says_it_replays(tmp_path: Path, export: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """N > 1: a pod of an Indexed Job that starts after the others took its shard over and merged the run (e.g.
    `parallelism` < `completions`) must not fail the Job: it gets the run's stored verdict, said to be a replay."""
    db = tmp_path / "h.db"
    code, first = verify_json(_adhoc(tmp_path, export, "--shard", "0/2", "--run-id", "uid-1"), db)
    assert code == 0
    capsys.readouterr()
    code, late = verify_json(_adhoc(tmp_path, export, "--shard", "1/2", "--run-id", "uid-1"), db)
    err = capsys.readouterr().err
    assert code == 0 and late["runs"][0]["run_id"] == first["runs"][0]["run_id"]
    assert "nothing was verified now by this process" in err and "a replay" in err
    # Another N under the same id is no late shard of that run: refused.
    assert run_cli(["verify-now", *_adhoc(tmp_path, export, "--shard", "1/3", "--run-id", "uid-1")], db)[0] == USAGE
    assert "was already finished at" in capsys.readouterr().err
