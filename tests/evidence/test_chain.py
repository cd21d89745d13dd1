"""The hash chain: every completed run is linked in its own transaction; tampering directly in the
database is detected and named by `audit verify`; deleting the newest runs or rewriting a whole chain
is detected against the signed heads."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reversib.evidence import anchor
from reversib.evidence.audit import verify_chains
from reversib.evidence.chain import backfill, heads_t, links_t, read_heads
from reversib.history import History, findings_t, runs_t
from reversib.model import Outcome
from tests.evidence.conftest import DAY, T0, Ledger


def build(ledger: Ledger, n: int = 6) -> list[str]:
    """n daily runs, the third one failing (with findings)."""
    ids = []
    for i in range(n):
        result = ledger.run(T0 + i * DAY, corrupt=(i == 2))
        assert result.outcome is (Outcome.FAILED if i == 2 else Outcome.PASSED)
        ids.append(result.run_id)
    return ids


def execute(history: History, sql: str, **params: object) -> None:
    with history.engine.begin() as conn:
        conn.execute(sa.text(sql), params)


def test_every_run_is_linked_in_order(ledger: Ledger) -> None:
    ids = build(ledger)
    with ledger.history.engine.connect() as conn:
        links = conn.execute(sa.select(links_t).order_by(links_t.c.seq)).mappings().all()
        heads = read_heads(conn)
    assert [link["run_id"] for link in links] == ids
    assert [link["seq"] for link in links] == [1, 2, 3, 4, 5, 6]
    assert links[0]["prev_digest"] is None
    assert all(b["prev_digest"] == a["record_digest"] for a, b in itertools.pairwise(links))
    assert heads["acme"].seq == 6 and heads["acme"].run_id == ids[-1]
    report = verify_chains(ledger.history)
    assert report.ok, report.problems
    assert report.links == 6


def test_interrupted_runs_are_linked_too(ledger: Ledger) -> None:
    build(ledger, 2)
    run_id = ledger.history.start_run(check_id="acme", check_name="ACME export", trigger="cli")
    assert ledger.history.mark_interrupted(run_id, "process died")
    assert verify_chains(ledger.history).ok
    with ledger.history.engine.connect() as conn:
        assert read_heads(conn)["acme"].run_id == run_id


def test_changed_finding_is_named(ledger: Ledger) -> None:
    ids = build(ledger)
    execute(ledger.history, "UPDATE findings SET actual = 'sha256:00' WHERE run_id = :r", r=ids[2])
    report = verify_chains(ledger.history)
    assert [(p.kind, p.seq, p.run_id) for p in report.problems] == [("altered", 3, ids[2])]


def test_changed_outcome_is_named(ledger: Ledger) -> None:
    ids = build(ledger)
    execute(ledger.history, "UPDATE runs SET outcome = 'passed' WHERE id = :r", r=ids[2])
    execute(ledger.history, "DELETE FROM findings WHERE run_id = :r", r=ids[2])
    first = verify_chains(ledger.history).first_problems()
    assert [(p.kind, p.seq, p.run_id) for p in first] == [("altered", 3, ids[2])]


def test_deleted_middle_run_is_named(ledger: Ledger) -> None:
    ids = build(ledger)
    execute(ledger.history, "DELETE FROM runs WHERE id = :r", r=ids[3])
    report = verify_chains(ledger.history)
    assert [(p.kind, p.seq, p.run_id) for p in report.problems] == [("removed", 4, ids[3])]


def test_deleted_middle_run_and_its_link_is_named(ledger: Ledger) -> None:
    ids = build(ledger)
    execute(ledger.history, "DELETE FROM runs WHERE id = :r", r=ids[3])
    execute(ledger.history, "DELETE FROM chain_links WHERE run_id = :r", r=ids[3])
    first = verify_chains(ledger.history).first_problems()
    assert [(p.kind, p.seq) for p in first] == [("removed", 4)]
    assert "link 4 of the chain is gone" in first[0].message and ids[4] in first[0].message


def test_inserted_run_is_named(ledger: Ledger) -> None:
    ids = build(ledger)
    with ledger.history.engine.begin() as conn:
        row = dict(conn.execute(sa.select(runs_t).where(runs_t.c.id == ids[1])).mappings().one())
        row.update(id="f" * 32, scheduled_for=None, outcome="passed")
        conn.execute(runs_t.insert().values(row))
    report = verify_chains(ledger.history)
    assert [(p.kind, p.run_id) for p in report.problems] == [("inserted", "f" * 32)]


def test_inserted_run_with_a_forged_link_is_named(ledger: Ledger) -> None:
    """The forger appends a link but cannot know... the chain's next record digest is recomputable, so
    they rewrite the head too: the inserted run in the middle is still named by the chain break."""
    ids = build(ledger)
    with ledger.history.engine.begin() as conn:
        row = dict(conn.execute(sa.select(runs_t).where(runs_t.c.id == ids[1])).mappings().one())
        row.update(id="f" * 32, scheduled_for=None)
        conn.execute(runs_t.insert().values(row))
        # shift links 3.. up by one and put the forged run at seq 3
        for seq in range(6, 2, -1):
            conn.execute(links_t.update().where(links_t.c.seq == seq).values(seq=seq + 1))
        link2 = conn.execute(sa.select(links_t).where(links_t.c.seq == 2)).mappings().one()
        conn.execute(links_t.insert().values(check_id="acme", seq=3, run_id="f" * 32,
                                             prev_digest=link2["record_digest"],
                                             content_digest=link2["content_digest"],
                                             record_digest=link2["record_digest"], linked_at=link2["linked_at"]))
    first = verify_chains(ledger.history).first_problems()
    assert [(p.kind, p.seq, p.run_id) for p in first] == [("altered", 3, "f" * 32)]


def test_reordered_runs_are_named(ledger: Ledger) -> None:
    ids = build(ledger)
    # swap the places of runs 2 and 3 in the chain (a failure moved before the pass that preceded it)
    with ledger.history.engine.begin() as conn:
        for old, new in ((ids[1], "tmp"), (ids[2], ids[1]), ("tmp", ids[2])):
            conn.execute(links_t.update().where(links_t.c.run_id == old).values(run_id=new))
    first = verify_chains(ledger.history).first_problems()
    assert [(p.kind, p.seq, p.run_id) for p in first] == [("reordered", 2, ids[2])]
    assert ids[1] in first[0].message and "link 3" in first[0].message


def test_reordered_timestamps_are_named(ledger: Ledger) -> None:
    ids = build(ledger)
    with ledger.history.engine.begin() as conn:
        a, b = (conn.execute(sa.select(runs_t.c.started_at, runs_t.c.finished_at).where(runs_t.c.id == i)).one()
                for i in (ids[3], ids[4]))
        conn.execute(runs_t.update().where(runs_t.c.id == ids[3]).values(started_at=b[0], finished_at=b[1]))
        conn.execute(runs_t.update().where(runs_t.c.id == ids[4]).values(started_at=a[0], finished_at=a[1]))
    first = verify_chains(ledger.history).first_problems()
    assert [(p.kind, p.seq, p.run_id) for p in first] == [("altered", 4, ids[3])]


def test_altered_link_is_named(ledger: Ledger) -> None:
    ids = build(ledger)
    execute(ledger.history, "UPDATE chain_links SET content_digest = :d WHERE seq = 5", d="0" * 64)
    first = verify_chains(ledger.history).first_problems()
    assert [(p.kind, p.seq, p.run_id) for p in first] == [("altered", 5, ids[4])]


@pytest.mark.parametrize("column,value", [("coverage", {"verified_ratio": 1.0}), ("bytes_downloaded", 10**12)])
def test_coverage_and_bytes_downloaded_are_covered(ledger: Ledger, column: str, value: object) -> None:
    """What the report shows of a run (rolling coverage, egress) cannot be edited unseen (chain version 2)."""
    ids = build(ledger, 3)
    with ledger.history.engine.begin() as conn:
        conn.execute(runs_t.update().where(runs_t.c.id == ids[1]).values({column: value}))
    first = verify_chains(ledger.history).first_problems()
    assert [(p.kind, p.seq, p.run_id) for p in first] == [("altered", 2, ids[1])]


def test_a_link_of_an_unknown_chain_version_is_named(ledger: Ledger) -> None:
    build(ledger, 3)
    with ledger.history.engine.begin() as conn:
        conn.execute(links_t.update().where(links_t.c.seq == 2).values(version=9))
    first = verify_chains(ledger.history).first_problems()
    assert [(p.kind, p.seq) for p in first] == [("altered", 2)] and "chain version 9" in first[0].message


def _key(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "signing.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    return key, path


def _anchor(ledger: Ledger, tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    key, _ = _key(tmp_path)
    heads_file = tmp_path / "heads.json"
    with ledger.history.engine.connect() as conn:
        anchor.anchor_heads(heads_file, read_heads(conn), key, ledger.history._now())
    return key, heads_file


def test_deleting_the_newest_runs_is_only_seen_against_the_signed_heads(ledger: Ledger, tmp_path: Path) -> None:
    ids = build(ledger)
    key, heads_file = _anchor(ledger, tmp_path)
    with ledger.history.engine.begin() as conn:  # a careful forger: runs, links and head row
        conn.execute(runs_t.delete().where(runs_t.c.id.in_(ids[4:])))
        conn.execute(links_t.delete().where(links_t.c.seq > 4))
        link4 = conn.execute(sa.select(links_t).where(links_t.c.seq == 4)).mappings().one()
        conn.execute(heads_t.update().values(seq=4, run_id=link4["run_id"], record_digest=link4["record_digest"]))
    assert verify_chains(ledger.history).ok  # invisible from inside the database
    report = verify_chains(ledger.history, anchor.load_heads(heads_file, key.public_key()))
    assert [(p.kind, p.seq, p.run_id) for p in report.problems] == [("anchor", 6, ids[5])]
    assert "newest runs were deleted" in report.problems[0].message


def test_rewriting_a_whole_chain_is_only_seen_against_the_signed_heads(ledger: Ledger, tmp_path: Path) -> None:
    ids = build(ledger)
    key, heads_file = _anchor(ledger, tmp_path)
    with ledger.history.engine.begin() as conn:  # turn the failure into a pass and re-chain everything
        conn.execute(runs_t.update().where(runs_t.c.id == ids[2]).values(outcome="passed", counts={}))
        conn.execute(findings_t.delete().where(findings_t.c.run_id == ids[2]))
        conn.execute(links_t.delete())
        conn.execute(heads_t.delete())
        assert backfill(conn, ledger.history._now()) == 6
    assert verify_chains(ledger.history).ok
    report = verify_chains(ledger.history, anchor.load_heads(heads_file, key.public_key()))
    assert [(p.kind, p.seq) for p in report.problems] == [("anchor", 6)]
    assert "rewritten" in report.problems[0].message


def _reanchor(ledger: Ledger, heads_file: Path, key: Ed25519PrivateKey) -> None:
    """What the daemon does after each run (evidence.attach): anchor the database's heads."""
    from reversib.evidence.chain import still_linked

    with ledger.history.engine.connect() as conn:
        anchor.anchor_heads(heads_file, read_heads(conn), key, ledger.history._now(),
                            lambda head: still_linked(conn, head))


@pytest.mark.parametrize("tamper", ["delete_newest", "rewrite"])
def test_tampering_stays_visible_against_the_heads_after_more_runs(ledger: Ledger, tmp_path: Path,
                                                                    tamper: str) -> None:
    """The runs after a tampering anchor again: the anchor must not move past the changed chain."""
    ids = build(ledger)
    key, heads_file = _anchor(ledger, tmp_path)
    with ledger.history.engine.begin() as conn:
        if tamper == "delete_newest":
            conn.execute(runs_t.delete().where(runs_t.c.id.in_(ids[4:])))
            conn.execute(links_t.delete().where(links_t.c.seq > 4))
            link4 = conn.execute(sa.select(links_t).where(links_t.c.seq == 4)).mappings().one()
            conn.execute(heads_t.update().values(seq=4, run_id=link4["run_id"],
                                                 record_digest=link4["record_digest"]))
        else:
            conn.execute(runs_t.update().where(runs_t.c.id == ids[2]).values(outcome="passed", counts={}))
            conn.execute(findings_t.delete().where(findings_t.c.run_id == ids[2]))
            conn.execute(links_t.delete())
            conn.execute(heads_t.delete())
            backfill(conn, ledger.history._now())
    for day in (10, 11, 12):  # later runs, each anchoring as the daemon does; the chain grows past link 6
        ledger.run(T0 + day * DAY)
        with pytest.raises(anchor.AnchorRefused, match="acme: the anchored head \\(link 6"):
            _reanchor(ledger, heads_file, key)
    assert verify_chains(ledger.history).ok  # still invisible from inside the database
    heads = anchor.load_heads(heads_file, key.public_key())
    assert heads["acme"].seq == 6 and heads["acme"].run_id == ids[5]  # the anchor stayed
    report = verify_chains(ledger.history, heads)
    assert [(p.kind, p.seq, p.run_id) for p in report.problems] == [("anchor", 6, ids[5])]
    assert "has another digest: the chain was rewritten" in report.problems[0].message  # link 6 was re-made


def test_an_untampered_chain_moves_the_anchor_forward(ledger: Ledger, tmp_path: Path) -> None:
    build(ledger, 3)
    key, heads_file = _anchor(ledger, tmp_path)
    newer = ledger.run(T0 + 5 * DAY)
    _reanchor(ledger, heads_file, key)
    heads = anchor.load_heads(heads_file, key.public_key())
    assert heads["acme"].seq == 4 and heads["acme"].run_id == newer.run_id
    assert verify_chains(ledger.history, heads).ok


def test_heads_file_only_moves_forward_and_is_signed(ledger: Ledger, tmp_path: Path) -> None:
    build(ledger, 3)
    key, heads_file = _anchor(ledger, tmp_path)
    stale = {"acme": read_heads(ledger.history.engine.connect())["acme"]}
    build_more = ledger.run(T0 + 10 * DAY)
    with ledger.history.engine.connect() as conn:
        anchor.anchor_heads(heads_file, read_heads(conn), key, ledger.history._now())
    anchor.anchor_heads(heads_file, {"acme": stale["acme"]}, key, ledger.history._now())  # a late writer
    heads = anchor.load_heads(heads_file, key.public_key())
    assert heads["acme"].seq == 4 and heads["acme"].run_id == build_more.run_id
    raw = heads_file.read_bytes()
    heads_file.write_bytes(raw.replace(b'"seq": 4', b'"seq": 3'))
    with pytest.raises(anchor.SignatureError):
        anchor.load_heads(heads_file, key.public_key())
    other = Ed25519PrivateKey.generate()
    heads_file.write_bytes(raw)
    with pytest.raises(anchor.SignatureError, match="not by the expected key"):
        anchor.load_heads(heads_file, other.public_key())


def test_signed_document_with_one_byte_changed_fails(tmp_path: Path) -> None:
    key, _ = _key(tmp_path)
    path = tmp_path / "report.json"
    anchor.write_signed(path, {"kind": "report", "ratio": 0.5, "text": "été"}, key)
    assert anchor.verify_file(path, key.public_key())["ratio"] == 0.5
    raw = bytearray(path.read_bytes())
    for i in range(len(raw)):  # every single-byte change of the file fails verification
        changed = bytearray(raw)
        changed[i] ^= 0x01
        path.write_bytes(bytes(changed))
        with pytest.raises(anchor.SignatureError):
            anchor.verify_file(path, key.public_key())
    path.write_bytes(bytes(raw))
    anchor.verify_file(path, key.public_key())
    assert json.loads(raw)["signature"]["algorithm"] == "ed25519"


def _attach(ledger: Ledger, tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    """Anchoring as the daemon and the CLI set it up (`evidence.attach`): after every completed run."""
    from types import SimpleNamespace

    key, key_file = _key(tmp_path)
    heads_file = tmp_path / "heads.json"
    assert anchor.attach(ledger.history, SimpleNamespace(heads_path=str(heads_file), heads_s3=None,
                                                         signing_key_file=str(key_file)))
    return key, heads_file


def test_a_chain_cut_without_a_signed_checkpoint_does_not_move_the_anchor(
        ledger: Ledger, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ids = build(ledger, 3)
    key, heads_file = _attach(ledger, tmp_path)
    ledger.run(T0 + 4 * DAY)  # anchored: link 4
    with ledger.history.engine.begin() as conn:  # every link gone, the head row moved on: "pruned", unsigned
        conn.execute(links_t.delete())
        conn.execute(runs_t.delete().where(runs_t.c.id.in_(ids)))
        conn.execute(heads_t.update().values(seq=10))
    ledger.run(T0 + 5 * DAY)
    assert "not moving the signed heads past a changed chain" in caplog.text
    assert anchor.load_heads(heads_file, key.public_key())["acme"].seq == 4


def test_a_signed_prune_lets_the_anchor_move_on(ledger: Ledger, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    import datetime as dt

    from reversib.evidence.prune import prune

    build(ledger, 4)
    key, heads_file = _attach(ledger, tmp_path)
    ledger.run(T0 + 5 * DAY)  # anchored: link 5
    assert prune(ledger.history, key, dt.datetime.fromtimestamp(T0 + 5.5 * DAY, dt.timezone.utc))
    later = ledger.run(T0 + 6 * DAY)
    assert "not moving" not in caplog.text
    heads = anchor.load_heads(heads_file, key.public_key())
    assert heads["acme"].seq == 6 and heads["acme"].run_id == later.run_id
    assert verify_chains(ledger.history, heads, key.public_key()).ok


def test_another_check_anchored_meanwhile_is_no_false_alarm(ledger: Ledger, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Check B's run is linked and anchored between check A's reading of the heads and its anchoring: A
    must read the chain afresh under the lock, not from a snapshot taken before it (SQLite)."""
    from reversib.runner import run_check
    from tests.evidence.conftest import make_check

    _attach(ledger, tmp_path)
    other = make_check(ledger.root, id="beta")
    ledger.run(T0)
    run_check(other, ledger.history, clock=ledger.clock)
    real = anchor.anchor_heads
    busy = {"inside": False}

    def interleaved(*args: object, **kwargs: object) -> object:
        if not busy["inside"]:
            busy["inside"] = True
            try:
                run_check(other, ledger.history, clock=ledger.clock)  # beta links and anchors link 2 now
            finally:
                busy["inside"] = False
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(anchor, "anchor_heads", interleaved)
    ledger.run(T0 + DAY)
    assert "not moving" not in caplog.text, caplog.text
