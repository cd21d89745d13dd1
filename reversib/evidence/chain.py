"""The hash chain of runs, one chain per check (docs/evidence.md).

Every completed run is linked, in the transaction that completes it, as the next link of its check's
chain: link `seq` carries the `content_digest` of the run (a fixed, versioned list of the run's stored
fields and its findings, recomputable from the rows) and a `record_digest` over (check, seq, run id,
previous record digest, content digest).  Appending is serialized per check: `SELECT ... FOR UPDATE`
on the check's row in `chain_heads` on PostgreSQL; SQLite writers are already serialized by
`BEGIN IMMEDIATE`.  So two processes finishing runs of one check at the same moment never fork it.

This module is imported at the end of `reversib.history` (its tables belong to the same metadata);
it must stay light: no cryptography, no alembic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from reversib.history import Base, UTCDateTime, findings_t, iso, runs_t
from reversib.model import RunState, canonical_json

CHAIN_VERSION = 2
# The run fields a link covers, per chain version.  A version is frozen once released: a column added
# later is covered from a new version on, and each link records the version it was made with, so that
# old links stay verifiable.  Version 2 adds the rolling coverage figures and the bytes downloaded.
CHAIN_FIELDS_BY_VERSION: dict[int, tuple[str, ...]] = {1: (
    "id", "check_id", "check_name", "trigger", "scheduled_for", "state", "outcome", "started_at",
    "finished_at", "duration_seconds", "host", "pid", "labels", "source", "manifest", "manifest_digest",
    "generation", "error", "counts", "severities", "tiers", "bytes_verified", "files_verified", "files_listed",
    "bytes_listed", "manifest_entries", "newest_mtime", "summary_digest",
)}
CHAIN_FIELDS_BY_VERSION[2] = (*CHAIN_FIELDS_BY_VERSION[1], "coverage", "bytes_downloaded")
CHAIN_FIELDS: tuple[str, ...] = CHAIN_FIELDS_BY_VERSION[CHAIN_VERSION]  # what the newest version covers
FINDING_FIELDS: tuple[str, ...] = ("seq", "kind", "severity", "path", "expected", "actual", "detail")

links_t = sa.Table(
    "chain_links",
    Base.metadata,
    sa.Column("check_id", sa.String(), primary_key=True),
    sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("run_id", sa.String(32), nullable=False),
    sa.Column("prev_digest", sa.String(64), nullable=True),
    sa.Column("content_digest", sa.String(64), nullable=False),
    sa.Column("record_digest", sa.String(64), nullable=False),
    sa.Column("linked_at", UTCDateTime(), nullable=False),
    sa.Column("version", sa.SmallInteger(), nullable=False, server_default="1"),  # 0007: the chain version
    sa.UniqueConstraint("run_id", name="uq_chain_links_run"),
)
heads_t = sa.Table(
    "chain_heads",
    Base.metadata,
    sa.Column("check_id", sa.String(), primary_key=True),
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("run_id", sa.String(32), nullable=False),
    sa.Column("record_digest", sa.String(64), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)


@dataclass(frozen=True, slots=True)
class Head:
    """The newest link of a check's chain."""

    check_id: str
    seq: int
    run_id: str
    record_digest: str

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "run_id": self.run_id, "record_digest": self.record_digest}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    return value


def content_document(run: Mapping[str, Any], findings: Iterable[Mapping[str, Any]],
                     version: int = CHAIN_VERSION) -> dict[str, Any]:
    """What a link's content digest covers: the fields of `version` of the run row, and its findings rows."""
    return {
        "v": version,
        "run": {name: _plain(run[name]) for name in CHAIN_FIELDS_BY_VERSION[version]},
        "findings": [{name: f[name] for name in FINDING_FIELDS} for f in sorted(findings, key=lambda f: f["seq"])],
    }


def content_digest(run: Mapping[str, Any], findings: Iterable[Mapping[str, Any]], version: int = CHAIN_VERSION) -> str:
    return _sha256(canonical_json(content_document(run, findings, version)))


def record_digest(check_id: str, seq: int, run_id: str, prev: str | None, content: str,
                  version: int = CHAIN_VERSION) -> str:
    return _sha256(canonical_json({"v": version, "check_id": check_id, "seq": seq, "run_id": run_id,
                                   "prev": prev, "content": content}))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def read_run(conn: Connection, run_id: str,
             fields: Sequence[str] = CHAIN_FIELDS) -> tuple[Mapping[str, Any], list[Mapping[str, Any]]] | None:
    """The stored run row and its findings rows, typed as SQLAlchemy reads them on every backend."""
    row = conn.execute(sa.select(*[runs_t.c[n] for n in fields]).where(runs_t.c.id == run_id)).mappings().first()
    if row is None:
        return None
    found = conn.execute(sa.select(*[findings_t.c[n] for n in FINDING_FIELDS]).where(findings_t.c.run_id == run_id)
                         .order_by(findings_t.c.seq)).mappings().all()
    return dict(row), [dict(f) for f in found]


def _lock_head(conn: Connection, check_id: str) -> Mapping[str, Any] | None:
    """The check's head row, locked until the end of the transaction (PostgreSQL: created empty first
    when absent, so that the first two links of a new chain are serialized too)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        conn.execute(pg_insert(heads_t).values(check_id=check_id, seq=0, run_id="", record_digest="",
                                               updated_at=sa.func.now())
                     .on_conflict_do_nothing(index_elements=[heads_t.c.check_id]))
        row = conn.execute(sa.select(heads_t).where(heads_t.c.check_id == check_id).with_for_update()).mappings().one()
        return dict(row) if row["seq"] > 0 else None
    found = conn.execute(sa.select(heads_t).where(heads_t.c.check_id == check_id)).mappings().first()
    return None if found is None else dict(found)


def link_run(conn: Connection, run_id: str, now: datetime, version: int = CHAIN_VERSION) -> Head:
    """Append the completed run `run_id` to its check's chain, inside the caller's write transaction
    (`version` 1 only for migration 0003, whose tables predate the later columns)."""
    stored = read_run(conn, run_id, CHAIN_FIELDS_BY_VERSION[version])
    if stored is None:
        raise LookupError(f"no run {run_id!r}")
    run, findings = stored
    if run["state"] == RunState.RUNNING.value:
        raise ValueError(f"run {run_id!r} is still running: only completed runs are chained")
    check_id = run["check_id"]
    head = _lock_head(conn, check_id)
    seq = 1 if head is None else int(head["seq"]) + 1
    prev = None if head is None else str(head["record_digest"])
    content = content_digest(run, findings, version)
    record = record_digest(check_id, seq, run_id, prev, content, version)
    link = {"check_id": check_id, "seq": seq, "run_id": run_id, "prev_digest": prev, "content_digest": content,
            "record_digest": record, "linked_at": now}
    conn.execute(links_t.insert().values(**link, **({"version": version} if version != 1 else {})))
    values = {"seq": seq, "run_id": run_id, "record_digest": record, "updated_at": now}
    if head is None and conn.dialect.name != "postgresql":
        conn.execute(heads_t.insert().values(check_id=check_id, **values))
    else:
        conn.execute(heads_t.update().where(heads_t.c.check_id == check_id).values(values))
    return Head(check_id, seq, run_id, record)


def backfill(conn: Connection, now: datetime, version: int = CHAIN_VERSION) -> int:
    """Link every completed run that is not linked yet, per check in order of completion (migration 0003
    links the runs recorded before the chain existed, with `version` 1).  Returns how many were linked."""
    linked = sa.select(links_t.c.run_id)
    stmt = (sa.select(runs_t.c.id).where(runs_t.c.state != RunState.RUNNING.value, runs_t.c.id.not_in(linked))
            .order_by(runs_t.c.check_id, runs_t.c.finished_at, runs_t.c.started_at, runs_t.c.id))
    ids = list(conn.execute(stmt).scalars())
    for run_id in ids:
        link_run(conn, run_id, now, version)
    return len(ids)


def read_heads(conn: Connection, check_ids: Sequence[str] | None = None) -> dict[str, Head]:
    stmt = sa.select(heads_t).where(heads_t.c.seq > 0).order_by(heads_t.c.check_id)
    if check_ids is not None:
        stmt = stmt.where(heads_t.c.check_id.in_(list(check_ids)))
    return {r.check_id: Head(r.check_id, int(r.seq), r.run_id, r.record_digest) for r in conn.execute(stmt)}


def still_linked(conn: Connection, head: Head,
                 checkpoint_ok: Callable[[Mapping[str, Any]], bool] | None = None) -> bool:
    """Whether the database's chain still holds `head` (an anchored head): its link `seq` has the same
    record digest, or that link was pruned and the chain now starts after it at a checkpoint that
    `checkpoint_ok` accepts (a signed one: the caller holds the key; without it, never)."""
    found = conn.execute(sa.select(links_t.c.record_digest)
                         .where(links_t.c.check_id == head.check_id, links_t.c.seq == head.seq)).scalar()
    if found is not None:
        return bool(found == head.record_digest)
    first = conn.execute(sa.select(links_t).where(links_t.c.check_id == head.check_id)
                         .order_by(links_t.c.seq).limit(1)).mappings().first()
    return (first is not None and int(first["seq"]) > head.seq and checkpoint_ok is not None
            and checkpoint_ok(dict(first)))
