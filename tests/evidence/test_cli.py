"""`reversib audit verify` and `reversib report` through the real CLI, with a configuration that signs
the chain heads after each run (a key made by the real ssh-keygen)."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import sqlalchemy as sa

from reversib.cli import main
from reversib.evidence.chain import heads_t, links_t
from reversib.history import History, runs_t
from tests.cli_helpers import run_cli
from tests.evidence.conftest import sh, write_export


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(config file, history db, heads file) with one check over a real export."""
    export = write_export(tmp_path / "export")
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "acme.yaml").write_text(
        f"version: 1\nid: acme\nname: ACME daily\nsource:\n  url: {export}\nmanifest:\n  path: SHA256SUMS\n"
        "labels:\n  customer: acme\n")
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "reversib", "-f", str(tmp_path / "signing_key"))
    config = tmp_path / "reversib.yaml"
    config.write_text("version: 1\nchecks_dir: checks\nhistory:\n  url: sqlite:///history.db\n"
                      "evidence:\n  signing_key_file: signing_key\n  heads_path: anchor/heads.json\n")
    return config, tmp_path / "history.db", tmp_path / "anchor" / "heads.json"


def cli(config: Path, db: Path, *args: str) -> tuple[int, str, str]:
    err = io.StringIO()
    with redirect_stderr(err):
        code, out = run_cli([*args, "--config", str(config)], db)
    return code, out, err.getvalue()


def test_audit_verify_against_the_heads_written_after_each_run(setup: tuple[Path, Path, Path]) -> None:
    config, db, heads = setup
    for _ in range(4):
        assert cli(config, db, "verify-now", "acme", "--no-progress")[0] == 0
    doc = json.loads(heads.read_text())
    assert doc["heads"]["acme"]["seq"] == 4 and doc["signature"]["algorithm"] == "ed25519"
    code, out, _ = cli(config, db, "audit", "verify", "--against", str(heads))
    assert code == 0 and out.strip().endswith("OK: 1 chains, 4 links, 1 heads checked against " + str(heads))

    with History(f"sqlite:///{db}") as h, h.engine.begin() as conn:  # delete the newest run, cleanly
        newest = conn.execute(sa.select(links_t).where(links_t.c.seq == 4)).mappings().one()
        third = conn.execute(sa.select(links_t).where(links_t.c.seq == 3)).mappings().one()
        conn.execute(runs_t.delete().where(runs_t.c.id == newest["run_id"]))
        conn.execute(links_t.delete().where(links_t.c.seq == 4))
        conn.execute(heads_t.update().values(seq=3, run_id=third["run_id"], record_digest=third["record_digest"]))
    assert cli(config, db, "audit", "verify")[0] == 0  # invisible from inside
    code, out, _ = cli(config, db, "audit", "verify", "--against", str(heads), "--public-key",
                       str(config.parent / "signing_key.pub"))
    assert code == 1
    assert f"acme: anchor: the signed head (link 4, run {newest['run_id']}) is gone" in out
    code, out, _ = cli(config, db, "audit", "verify", "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    for _ in range(2):  # later runs anchor again: said plainly, and the anchor does not follow the cut chain
        code, _, err = cli(config, db, "verify-now", "acme", "--no-progress")
        assert code == 0 and "Traceback" not in err
        assert "not moving the signed heads past a changed chain" in err and "acme: the anchored head (link 4" in err
    code, out, _ = cli(config, db, "audit", "verify", "--against", str(heads))
    assert code == 1 and f"the signed head (link 4, run {newest['run_id']}) has another digest" in out

    heads.write_text(heads.read_text().replace('"seq": 4', '"seq": 3'))  # the anchor itself edited
    code, _, err = cli(config, db, "audit", "verify", "--against", str(heads))
    assert code == 1 and "cannot be trusted" in err


def test_signed_json_report_and_verify(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    config, db, _ = setup
    assert cli(config, db, "verify-now", "acme", "--no-progress")[0] == 0
    out_file = tmp_path / "report.json"
    assert cli(config, db, "report", "--format", "json", "--output", str(out_file))[0] == 0
    doc = json.loads(out_file.read_text())
    assert doc["kind"] == "reversib-report" and doc["signature"]["key_id"].startswith("ed25519:")
    assert doc["checks"][0]["check_id"] == "acme" and doc["checks"][0]["runs"] == 1
    code, out, _ = cli(config, db, "report", "--verify", str(out_file))
    assert code == 0 and "valid signature" in out
    raw = out_file.read_bytes()
    pos = raw.index(b'"runs": 1')
    out_file.write_bytes(raw[:pos + 8] + b"2" + raw[pos + 9:])  # one byte: 1 run becomes 2
    code, _, err = cli(config, db, "report", "--verify", str(out_file))
    assert code == 1 and "NOT VALID" in err


def test_markdown_report(setup: tuple[Path, Path, Path]) -> None:
    config, db, _ = setup
    assert cli(config, db, "verify-now", "acme", "--no-progress")[0] == 0
    code, out, _ = cli(config, db, "report", "--check", "acme", "--since", "7d")
    assert code == 0
    assert "| ACME daily | " in out and "Chain head: link 1, run `" in out


def test_report_usage_errors(setup: tuple[Path, Path, Path]) -> None:
    config, db, _ = setup
    assert cli(config, db, "report", "--since", "yesterday")[0] == 64
    with redirect_stderr(io.StringIO()):
        assert main(["report", "--verify", "/nonexistent", "--history", f"sqlite:///{db}"]) == 64  # no key
