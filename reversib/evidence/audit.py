"""`reversib audit verify`: walk every chain and name the first record altered, removed or inserted.

Inside the database (docs/evidence.md):

* **altered**: a run's stored fields or findings no longer match its link's content digest, or a
  link's own fields no longer match its record digest;
* **removed**: a link points to a run that is gone, or links are missing (a gap in `seq`, or a
  link whose `prev_digest` is not the previous link's record digest);
* **inserted**: a completed run that is in no chain;
* **reordered**: two links whose runs were swapped (each one's content matches the other's run);
* **head**: the `chain_heads` row disagrees with the last link;
* **checkpoint**: the chain starts at a checkpoint (its older links were pruned, docs/evidence.md)
  whose Ed25519 signature does not verify, or a checkpoint sits elsewhere than at the start.

A chain starting at a checkpoint whose signature verifies is accepted; without the public key the
checkpoint cannot be verified, which is reported apart (`could_not_verify`): never a pass.

Against signed heads (`--against`): every anchored head (the heads file's, or every head object of
a bucket) must still be a link of the database's chain, with the same record digest; otherwise the
newest runs were deleted or the chain rewritten.  The first such head is named, with how many later
ones fail too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from reversib.evidence.chain import (
    CHAIN_FIELDS,
    CHAIN_FIELDS_BY_VERSION,
    FINDING_FIELDS,
    Head,
    content_digest,
    heads_t,
    links_t,
    record_digest,
)
from reversib.evidence.prune import is_checkpoint, verify_checkpoint
from reversib.history import History, findings_t, runs_t
from reversib.model import RunState


@dataclass(frozen=True)
class Problem:
    check_id: str
    kind: str  # altered | removed | inserted | reordered | head | anchor | checkpoint
    seq: int | None
    run_id: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"check_id": self.check_id, "kind": self.kind, "seq": self.seq, "run_id": self.run_id,
                "message": self.message}


@dataclass
class AuditReport:
    checks: dict[str, Head | None] = field(default_factory=dict)  # check -> head of its verified chain
    links: int = 0
    problems: list[Problem] = field(default_factory=list)
    anchored: int = 0  # heads checked against a signed heads file
    checkpoints: int = 0  # chains starting at a verified checkpoint
    could_not_verify: list[str] = field(default_factory=list)  # checkpoints without a key to check them

    @property
    def ok(self) -> bool:
        return not self.problems and not self.could_not_verify

    def first_problems(self) -> list[Problem]:
        """The first problem of each check (the first record altered, removed or inserted)."""
        seen: set[str] = set()
        out = []
        for p in self.problems:
            if p.check_id not in seen:
                seen.add(p.check_id)
                out.append(p)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"schema": 1, "ok": self.ok, "links": self.links, "anchored": self.anchored,
                "checkpoints": self.checkpoints, "could_not_verify": self.could_not_verify,
                "checks": {c: (h.to_dict() if h else None) for c, h in sorted(self.checks.items())},
                "first_problems": [p.to_dict() for p in self.first_problems()],
                "problems": [p.to_dict() for p in self.problems]}


def verify_chains(history: History, against: Mapping[str, Head | Sequence[Head]] | None = None,
                  key: Ed25519PublicKey | None = None) -> AuditReport:
    """Walk every chain of `history` (every check with a run or a link); `key` verifies checkpoints;
    `against` gives per check one anchored head or several (every head object of a bucket)."""
    report = AuditReport()
    with history.engine.connect() as conn:
        runs: dict[str, dict[str, Any]] = {}
        by_check: dict[str, list[str]] = defaultdict(list)
        stmt = (sa.select(*[runs_t.c[n] for n in CHAIN_FIELDS])
                .where(runs_t.c.state != RunState.RUNNING.value)
                .order_by(runs_t.c.check_id, runs_t.c.finished_at, runs_t.c.id))
        for row in conn.execute(stmt).mappings():
            runs[row["id"]] = dict(row)
            by_check[row["check_id"]].append(row["id"])
        findings: dict[str, list[dict[str, Any]]] = defaultdict(list)
        fstmt = sa.select(findings_t.c.run_id, *[findings_t.c[n] for n in FINDING_FIELDS])
        for frow in conn.execute(fstmt).mappings():
            findings[frow["run_id"]].append(dict(frow))
        links: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for link in conn.execute(sa.select(links_t).order_by(links_t.c.check_id, links_t.c.seq)).mappings():
            links[link["check_id"]].append(dict(link))
        heads = {h.check_id: h for h in conn.execute(sa.select(heads_t).where(heads_t.c.seq > 0))}
    cache: dict[tuple[str, int], str] = {}

    def contents(run_id: str, version: int) -> str:
        """The content digest of a run's rows as chain `version` covers them."""
        if (run_id, version) not in cache:
            cache[run_id, version] = content_digest(runs[run_id], findings.get(run_id, []), version)
        return cache[run_id, version]

    anchored = {c: [h] if isinstance(h, Head) else list(h) for c, h in (against or {}).items()}
    for check_id in sorted(set(by_check) | set(links) | set(heads) | set(anchored)):
        _verify_check(report, check_id, links.get(check_id, []), by_check.get(check_id, []), runs, contents,
                      heads.get(check_id), anchored.get(check_id, []), key)
    return report


def _verify_check(report: AuditReport, check_id: str, links: list[Mapping[str, Any]], run_ids: list[str],
                  runs: Mapping[str, Mapping[str, Any]], contents: Callable[[str, int], str], head: Any,
                  anchored: Sequence[Head] = (), key: Ed25519PublicKey | None = None) -> None:
    problems: list[Problem] = []

    def problem(kind: str, seq: int | None, run_id: str | None, message: str) -> None:
        problems.append(Problem(check_id, kind, seq, run_id, message))

    linked: set[str] = set()
    prev: str | None = None
    expected_seq = 1
    by_seq: dict[int, Mapping[str, Any]] = {}
    checkpoint = 0  # the seq of the verified checkpoint the chain starts at
    for i, link in enumerate(links):
        seq, run_id = int(link["seq"]), str(link["run_id"])
        by_seq[seq] = link
        if is_checkpoint(link):
            if i > 0:
                problem("checkpoint", seq, None, f"link {seq} is a checkpoint in the middle of the chain: "
                        "a checkpoint only replaces the pruned start of a chain")
            elif key is None:
                report.could_not_verify.append(f"{check_id}: the chain starts at a checkpoint (link {seq}, links "
                                               f"1..{seq} pruned): give the public key to verify it")
            elif (why := verify_checkpoint(link, key)) is not None:
                problem("checkpoint", seq, None, f"the checkpoint replacing links 1..{seq} is not valid: {why}")
            else:
                report.checkpoints += 1
                checkpoint = seq
            prev, expected_seq = str(link["record_digest"]), seq + 1
            continue
        linked.add(run_id)
        report.links += 1
        if seq != expected_seq:
            problem("removed", expected_seq, None,
                    f"link {expected_seq}{'' if seq == expected_seq + 1 else f'..{seq - 1}'} of the chain is gone "
                    f"(the next link is {seq}, run {run_id}): runs were removed from the chain"
                    + (" and no signed checkpoint replaces them" if i == 0 else ""))
        elif link["prev_digest"] != prev:
            problem("removed" if prev is not None else "altered", seq, run_id,
                    f"link {seq} (run {run_id}) does not follow link {seq - 1}: a link was removed or replaced")
        version = int(link["version"])
        if version not in CHAIN_FIELDS_BY_VERSION:
            problem("altered", seq, run_id, f"link {seq} (run {run_id}) names chain version {version}, which "
                    "this reversib does not know: it was altered, or made by a newer reversib")
            prev, expected_seq = link["record_digest"], seq + 1
            continue
        swapped = None
        if run_id in runs and contents(run_id, version) != link["content_digest"]:
            nxt = links[i + 1] if i + 1 < len(links) else None
            prv = links[i - 1] if i > 0 else None
            swapped = next((o for o in (prv, nxt) if o is not None and o["run_id"] in runs
                            and contents(o["run_id"], version) == link["content_digest"]
                            and contents(run_id, int(o["version"])) == o["content_digest"]), None)
        if swapped is not None:
            problem("reordered", seq, run_id, f"run {run_id} (link {seq}) and run {swapped['run_id']} "
                    f"(link {swapped['seq']}) were swapped: each link now points to the other's run")
        elif record_digest(check_id, seq, run_id, link["prev_digest"], link["content_digest"],
                           version) != link["record_digest"]:
            problem("altered", seq, run_id, f"link {seq} (run {run_id}) was altered: its record digest does not match")
        elif run_id not in runs:
            problem("removed", seq, run_id, f"run {run_id} (link {seq}) was removed from the history")
        elif contents(run_id, version) != link["content_digest"]:
            problem("altered", seq, run_id, f"run {run_id} (link {seq}) was altered after it was recorded: "
                    "its fields or findings no longer match the chain")
        prev = link["record_digest"]
        expected_seq = seq + 1
    for run_id in run_ids:
        if run_id not in linked:
            run = runs[run_id]
            problem("inserted", None, run_id, f"run {run_id} (finished {run['finished_at']}, outcome "
                    f"{run['outcome']}) is in no chain: it was inserted outside reversib")
    last = links[-1] if links else None
    if last is not None and (head is None or head.seq != last["seq"] or head.record_digest != last["record_digest"]):
        problem("head", int(last["seq"]), str(last["run_id"]),
                f"the chain head row (link {head.seq if head else 'none'}) does not match the last link "
                f"{last['seq']}: links were removed or the head was altered")
    elif last is None and head is not None:
        problem("removed", None, head.run_id, f"the head says link {head.seq} but the chain has no links")
    broken = []  # the anchored heads the chain no longer holds
    for signed in sorted(anchored, key=lambda h: h.seq):
        report.anchored += 1
        at = by_seq.get(signed.seq)
        if signed.seq < checkpoint:
            continue  # pruned, covered by the verified checkpoint (it signs link `checkpoint`'s digest)
        if at is None or at["record_digest"] != signed.record_digest:
            broken.append((signed, at))
    if broken:
        signed, at = broken[0]
        what = ("is gone: the newest runs were deleted" if at is None and signed.seq > (links[-1]["seq"] if links
                                                                                         else 0)
                else "is gone: runs were removed from the chain" if at is None
                else "has another digest: the chain was rewritten")
        more = f" (and {len(broken) - 1} later signed heads)" if len(broken) > 1 else ""
        problem("anchor", signed.seq, signed.run_id,
                f"the signed head (link {signed.seq}, run {signed.run_id}) {what}{more}")
    report.problems.extend(sorted(problems, key=lambda p: (p.seq is None, p.seq or 0)))
    report.checks[check_id] = (None if last is None else
                               Head(check_id, int(last["seq"]), str(last["run_id"]), str(last["record_digest"])))
