"""History retention: pruning old runs replaces the start of each chain by a signed checkpoint, the
chain stays verifiable; a forged, unsigned or absent checkpoint is named by `audit verify`; a chain
that does not verify is never pruned.  On SQLite and on the real PostgreSQL (the `ledger` fixture)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reversib.evidence.audit import verify_chains
from reversib.evidence.chain import Head, links_t, read_heads
from reversib.evidence.prune import PruneError, checkpoint_run_id, prune
from reversib.history import findings_t, runs_t
from reversib.model import Outcome
from reversib.runner import run_check
from tests.evidence.conftest import DAY, T0, Ledger, make_check
from tests.evidence.test_chain import build, execute

KEY = Ed25519PrivateKey.generate()


def at(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc)


def count(ledger: Ledger, table: sa.Table) -> int:
    with ledger.history.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def chain(ledger: Ledger) -> list[tuple[int, str]]:
    with ledger.history.engine.connect() as conn:
        return [(r.seq, r.run_id) for r in conn.execute(sa.select(links_t).order_by(links_t.c.seq))]


def pruned_ledger(ledger: Ledger) -> list[str]:
    """10 daily runs (the third failing, with findings), then the 6 oldest pruned."""
    ids = build(ledger, 10)
    ledger.clock.t = T0 + 10 * DAY
    done = prune(ledger.history, KEY, at(T0 + 5.5 * DAY))
    assert [(p.check_id, p.runs, p.through_seq) for p in done] == [("acme", 6, 6)]
    return ids


def test_pruned_chain_starts_at_a_signed_checkpoint_and_verifies(ledger: Ledger) -> None:
    ids = pruned_ledger(ledger)
    assert chain(ledger) == [(6, checkpoint_run_id("acme")), *[(i + 1, ids[i]) for i in range(6, 10)]]
    assert count(ledger, runs_t) == 4 and count(ledger, findings_t) == 0  # the failed run's findings went too
    report = verify_chains(ledger.history, key=KEY.public_key())
    assert report.ok, report.problems
    assert (report.checkpoints, report.links) == (1, 4)
    # the chain goes on after the checkpoint, and a second prune replaces the checkpoint
    assert ledger.run(T0 + 10 * DAY).outcome is Outcome.PASSED
    ledger.clock.t = T0 + 12 * DAY
    assert [p.through_seq for p in prune(ledger.history, KEY, at(T0 + 8.5 * DAY))] == [9]
    assert [s for s, _ in chain(ledger)] == [9, 10, 11]
    report = verify_chains(ledger.history, key=KEY.public_key())
    assert report.ok and report.links == 2, report.problems


def test_anchored_heads_still_check_after_pruning(ledger: Ledger) -> None:
    ids = pruned_ledger(ledger)
    with ledger.history.engine.connect() as conn:
        head = read_heads(conn)["acme"]
    public = KEY.public_key()
    assert verify_chains(ledger.history, {"acme": head}, key=public).ok
    # an older anchored head, now pruned, is covered by the signed checkpoint
    assert verify_chains(ledger.history, {"acme": Head("acme", 3, ids[2], "0" * 64)}, key=public).ok
    # the checkpoint's own link is checked like any other: the digest it signs must be the anchored one
    bad = verify_chains(ledger.history, {"acme": Head("acme", 6, ids[5], "0" * 64)}, key=public)
    assert [(p.kind, p.seq) for p in bad.problems] == [("anchor", 6)]


def test_without_the_public_key_a_checkpoint_could_not_be_verified(ledger: Ledger) -> None:
    pruned_ledger(ledger)
    report = verify_chains(ledger.history)
    assert not report.problems and not report.ok
    assert report.could_not_verify == ["acme: the chain starts at a checkpoint (link 6, links 1..6 pruned): "
                                       "give the public key to verify it"]


def test_forged_checkpoints_are_named(ledger: Ledger) -> None:
    pruned_ledger(ledger)
    with ledger.history.engine.connect() as conn:
        cp = conn.execute(sa.select(links_t).where(links_t.c.run_id == checkpoint_run_id("acme"))).mappings().one()
    public = KEY.public_key()
    # one hex digit of the signature changed
    flipped = ("1" if cp["content_digest"][0] != "1" else "2") + cp["content_digest"][1:]
    execute(ledger.history, "UPDATE chain_links SET content_digest = :d WHERE run_id = :r", d=flipped,
            r=checkpoint_run_id("acme"))
    first = verify_chains(ledger.history, key=public).first_problems()
    assert [(p.kind, p.seq) for p in first] == [("checkpoint", 6)]
    assert "forged or altered" in first[0].message
    # someone pruning further with another key (deleting links 7..8 and their runs)
    execute(ledger.history, "DELETE FROM chain_links WHERE check_id = 'acme' AND seq <= 8")
    other = Ed25519PrivateKey.generate()
    with ledger.history.engine.begin() as conn:
        eighth = conn.execute(sa.select(links_t.c.prev_digest).where(links_t.c.seq == 9)).scalar_one()
    from reversib.evidence.prune import payload

    sig = other.sign(payload("acme", 8, eighth, cp["linked_at"])).hex()
    execute(ledger.history, "INSERT INTO chain_links (check_id, seq, run_id, prev_digest, content_digest, "
            "record_digest, linked_at) VALUES ('acme', 8, :r, :p, :c, :d, :t)", r=checkpoint_run_id("acme"),
            p=sig[:64], c=sig[64:], d=eighth, t=cp["linked_at"])
    problems = verify_chains(ledger.history, key=public).problems
    assert [(p.kind, p.seq) for p in problems][:1] == [("checkpoint", 8)]


def test_several_checks_each_get_their_checkpoint(ledger: Ledger) -> None:
    build(ledger, 4)
    beta = make_check(ledger.root, id="beta")
    for i in range(3):
        ledger.clock.t = T0 + i * DAY + 3600
        assert run_check(beta, ledger.history, clock=ledger.clock).outcome is Outcome.PASSED
    ledger.clock.t = T0 + 10 * DAY
    done = prune(ledger.history, KEY, at(T0 + 2.5 * DAY))
    assert [(p.check_id, p.runs, p.through_seq) for p in done] == [("acme", 3, 3), ("beta", 3, 3)]
    report = verify_chains(ledger.history, key=KEY.public_key())
    assert report.ok and (report.checkpoints, report.links) == (2, 1), report.problems
    # beta's chain is only its checkpoint now, and goes on from it
    assert run_check(beta, ledger.history, clock=ledger.clock).outcome is Outcome.PASSED
    report = verify_chains(ledger.history, key=KEY.public_key())
    assert report.ok and report.links == 2 and report.checks["beta"].seq == 4  # type: ignore[union-attr]


def test_absent_checkpoint_is_named(ledger: Ledger) -> None:
    ids = pruned_ledger(ledger)
    execute(ledger.history, "DELETE FROM chain_links WHERE run_id = :r", r=checkpoint_run_id("acme"))
    first = verify_chains(ledger.history, key=KEY.public_key()).first_problems()
    assert [(p.kind, p.seq) for p in first] == [("removed", 1)]
    assert "link 1..6 of the chain is gone" in first[0].message and ids[6] in first[0].message
    assert "no signed checkpoint replaces them" in first[0].message


def test_a_tampered_chain_is_never_pruned(ledger: Ledger) -> None:
    ids = build(ledger, 6)
    execute(ledger.history, "UPDATE findings SET actual = 'sha256:00' WHERE run_id = :r", r=ids[2])
    ledger.clock.t = T0 + 10 * DAY
    with pytest.raises(PruneError, match=f"acme: altered: run {ids[2]}"):
        prune(ledger.history, KEY, at(T0 + 5.5 * DAY))
    assert count(ledger, runs_t) == 6 and [s for s, _ in chain(ledger)] == [1, 2, 3, 4, 5, 6]


def test_dry_run_and_nothing_old_enough(ledger: Ledger) -> None:
    build(ledger, 4)
    ledger.clock.t = T0 + 10 * DAY
    assert prune(ledger.history, KEY, at(T0 - DAY)) == []
    assert [p.runs for p in prune(ledger.history, KEY, at(T0 + 2.5 * DAY), dry_run=True)] == [3]
    assert count(ledger, runs_t) == 4 and verify_chains(ledger.history).ok


def test_history_prune_through_the_cli(tmp_path: Path) -> None:
    from tests.evidence.conftest import sh, write_export
    from tests.evidence.test_cli import cli

    export = write_export(tmp_path / "export")
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "acme.yaml").write_text(
        f"version: 1\nid: acme\nname: ACME daily\nsource:\n  url: {export}\nmanifest:\n  path: SHA256SUMS\n")
    config = tmp_path / "reversib.yaml"
    config.write_text("version: 1\nchecks_dir: checks\nhistory:\n  url: sqlite:///history.db\n")
    db = tmp_path / "history.db"
    for _ in range(3):
        assert cli(config, db, "verify-now", "acme", "--no-progress")[0] == 0
    code, _, err = cli(config, db, "history", "prune", "--older-than", "0s")
    assert code == 64 and "needs evidence.signing_key_file" in err
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key"))
    config.write_text(config.read_text() + "evidence:\n  signing_key_file: key\n")
    code, out, _ = cli(config, db, "history", "prune", "--older-than", "0s", "--dry-run")
    assert code == 0 and out.startswith("acme: would prune 3 runs (links 1..3")
    code, out, _ = cli(config, db, "history", "prune", "--older-than", "0s")
    assert code == 0 and out.startswith("acme: pruned 3 runs (links 1..3")
    assert cli(config, db, "verify-now", "acme", "--no-progress")[0] == 0
    code, out, _ = cli(config, db, "audit", "verify")
    assert code == 0 and out.strip() == "OK: 1 chains, 1 links, 1 starting at a signed checkpoint"
    code, out, _ = cli(config, db, "history", "acme")  # the history listing still works: one run left
    assert code == 0 and len(out.strip().splitlines()) == 1
    config.write_text(config.read_text().replace("evidence:\n  signing_key_file: key\n", ""))
    code, out, _ = cli(config, db, "audit", "verify")  # no key: the checkpoint cannot be verified
    assert code == 2 and "COULD NOT VERIFY" in out
