"""History retention: prune old runs, a signed checkpoint replacing the pruned prefix of each chain
(`reversib history prune --older-than 400d`, docs/evidence.md).

For each check, the longest prefix of its chain whose runs all finished before the cut-off is
removed (runs, findings, links), after the whole chain was verified: pruning never launders a
tampered record.  Link K, the last pruned one, is replaced by a **checkpoint link** in `chain_links`
(no schema change):

* `run_id` = `checkpoint-` + 21 hex digits of the sha256 of the check id (never a run id: those are
  32 hex digits; one per check, as `run_id` is unique in `chain_links`);
* `record_digest` = link K's record digest, which link K+1's `prev_digest` already names;
* `linked_at` = when it was pruned (whole seconds);
* `prev_digest` and `content_digest` = the two hex halves of the 64-byte Ed25519 signature (the key of
  the heads) over the canonical JSON of `{"kind": "reversib-chain-checkpoint", "v": 1, "check_id",
  "seq", "record_digest", "pruned_at"}`.

`audit verify` then accepts a chain starting at a checkpoint whose signature verifies, and names a
forged one (`checkpoint`) or a chain starting after link 1 without one (`removed`).  Pruning again
replaces the checkpoint by a newer one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from reversib.evidence.chain import _lock_head, links_t
from reversib.history import History, findings_t, iso, runs_t
from reversib.model import canonical_json

CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_KIND = "reversib-chain-checkpoint"
BATCH = 500


class PruneError(Exception):
    """A chain that does not verify is never pruned."""


@dataclass(frozen=True)
class Pruned:
    check_id: str
    runs: int  # runs removed
    through_seq: int  # the checkpoint's link
    through: dt.datetime | None  # finish of the newest pruned run

    def to_dict(self) -> dict[str, Any]:
        return {"check_id": self.check_id, "runs": self.runs, "through_seq": self.through_seq,
                "through": iso(self.through)}


def payload(check_id: str, seq: int, record: str, pruned_at: dt.datetime) -> bytes:
    return canonical_json({"kind": CHECKPOINT_KIND, "v": 1, "check_id": check_id, "seq": seq,
                           "record_digest": record, "pruned_at": iso(pruned_at)}).encode("ascii")


def checkpoint_run_id(check_id: str) -> str:
    """The `run_id` of a check's checkpoint link (32 characters, not hex: never a run's id)."""
    return CHECKPOINT_PREFIX + hashlib.sha256(check_id.encode("utf-8")).hexdigest()[:32 - len(CHECKPOINT_PREFIX)]


def is_checkpoint(link: Mapping[str, Any]) -> bool:
    return str(link["run_id"]).startswith(CHECKPOINT_PREFIX)


def verify_checkpoint(link: Mapping[str, Any], key: Ed25519PublicKey) -> str | None:
    """None when the checkpoint link's signature verifies with `key`, else why not."""
    try:
        signature = bytes.fromhex(str(link["prev_digest"] or "") + str(link["content_digest"] or ""))
    except ValueError:
        return "its signature is not hex"
    if len(signature) != 64:
        return "it carries no Ed25519 signature"
    try:
        key.verify(signature, payload(link["check_id"], int(link["seq"]), link["record_digest"], link["linked_at"]))
    except InvalidSignature:
        return "its signature does not verify with the public key: it was forged or altered"
    return None


def prune(history: History, key: Ed25519PrivateKey, older_than: dt.datetime, *,
          check_ids: Sequence[str] | None = None, dry_run: bool = False) -> list[Pruned]:
    """Prune, per check, the chain prefix of runs finished before `older_than`.  Raises PruneError
    (before changing anything) when a chain to prune does not verify."""
    from reversib.evidence.audit import verify_chains

    public = key.public_key()
    report = verify_chains(history, key=public)
    with history.engine.connect() as conn:
        candidates = _candidates(conn, older_than, check_ids)
    bad = [p for p in report.first_problems() if p.check_id in candidates]
    if bad or report.could_not_verify:
        why = "; ".join(f"{p.check_id}: {p.kind}: {p.message}" for p in bad) or "; ".join(report.could_not_verify)
        raise PruneError(f"the history does not verify, nothing was pruned: {why}")
    out: list[Pruned] = []
    now = history._now().replace(microsecond=0)
    for check_id, (seq, record, run_ids, through) in sorted(candidates.items()):
        if not dry_run:
            with history._write() as conn:
                _lock_head(conn, check_id)
                link = conn.execute(sa.select(links_t).where(links_t.c.check_id == check_id,
                                                             links_t.c.seq == seq)).mappings().first()
                if link is None or link["record_digest"] != record:
                    raise PruneError(f"{check_id}: link {seq} changed while pruning: nothing pruned for it")
                for start in range(0, len(run_ids), BATCH):
                    chunk = run_ids[start:start + BATCH]
                    conn.execute(findings_t.delete().where(findings_t.c.run_id.in_(chunk)))
                    conn.execute(runs_t.delete().where(runs_t.c.id.in_(chunk)))
                conn.execute(links_t.delete().where(links_t.c.check_id == check_id, links_t.c.seq <= seq))
                signature = key.sign(payload(check_id, seq, record, now)).hex()
                conn.execute(links_t.insert().values(check_id=check_id, seq=seq, run_id=checkpoint_run_id(check_id),
                                                     prev_digest=signature[:64], content_digest=signature[64:],
                                                     record_digest=record, linked_at=now))
        out.append(Pruned(check_id, len(run_ids), seq, through))
    return out


def _candidates(conn: Any, older_than: dt.datetime, check_ids: Sequence[str] | None
                ) -> dict[str, tuple[int, str, list[str], dt.datetime | None]]:
    """check -> (seq of the last link to prune, its record digest, run ids to remove, newest finish)."""
    stmt = (sa.select(links_t.c.check_id, links_t.c.seq, links_t.c.run_id, links_t.c.record_digest,
                      runs_t.c.finished_at)
            .select_from(links_t.outerjoin(runs_t, runs_t.c.id == links_t.c.run_id))
            .order_by(links_t.c.check_id, links_t.c.seq))
    if check_ids is not None:
        stmt = stmt.where(links_t.c.check_id.in_(list(check_ids)))
    out: dict[str, tuple[int, str, list[str], dt.datetime | None]] = {}
    stopped: set[str] = set()
    for row in conn.execute(stmt):
        if row.check_id in stopped or str(row.run_id).startswith(CHECKPOINT_PREFIX):
            continue
        finished = row.finished_at
        if finished is None or finished >= older_than:
            stopped.add(row.check_id)
            continue
        _, _, ids, _ = out.get(row.check_id, (0, "", [], None))
        ids.append(row.run_id)
        out[row.check_id] = (int(row.seq), row.record_digest, ids, finished)
    return out
