"""Leases on the shards of a run (docs/scale.md): the table `run_shards` and its atomic transitions.

A sharded run has rows 0..N-1 (its shards) and -1 (its merge).  A process *claims* a row that is
`pending`, or `running` with a lease that has passed (its owner died or hangs): one UPDATE with that
condition, so two processes never both get it.  The owner renews the lease while it works and
completes the row only while it still owns it.  The merge row can be claimed only once every shard
is `done`; whoever completes the last shard claims it (or, if that process dies, another one once
its lease has passed), so the merge runs once per run.

Lease times come from the history's clock: replicas' clocks must agree to well within the lease
(NTP).  This module is imported at the end of `reversib.history` (its table shares the metadata).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from reversib.history import Base, HistoryError, JSONType, UTCDateTime

if TYPE_CHECKING:
    from reversib.history import EntryRecord, History

MERGE = -1
SEED = "seed"  # the key of the run's random seed in the merge row's `result` while the run is open
PENDING, RUNNING, DONE = "pending", "running", "done"

shards_t = sa.Table(
    "run_shards",
    Base.metadata,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("shard", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("shards", sa.Integer(), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("owner", sa.String(), nullable=True),
    sa.Column("lease_until", UTCDateTime(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("result", JSONType(), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    # The rows not yet done: what the replicas' pollers look for (migration 0006).
    sa.Index("ix_run_shards_open", "state", "lease_until", postgresql_where=sa.text("state <> 'done'"),
             sqlite_where=sa.text("state <> 'done'")),
)


def close_rows(conn: sa.Connection, run_id: str, now: Any, result: dict[str, Any]) -> None:
    """Mark every row of `run_id` not yet done as done, with `result`: called by `History.finish_run` and
    `History.mark_interrupted` in the transaction that ends the run, so an ended run never keeps a live
    lease (a process killed between the two steps would leave its merge row `running` for ever)."""
    c = shards_t.c
    conn.execute(shards_t.update().where(c.run_id == run_id, c.state != DONE)
                 .values(state=DONE, lease_until=None, result=result, updated_at=now))


class _Changed(Exception):
    """Rows changed under a multi-row transition: roll it back."""


class Leases:
    """The shard rows of the runs in one history, seen by one owner (`host:pid`)."""

    def __init__(self, history: History, ttl: float, owner: str | None = None) -> None:
        self.history = history
        self.ttl = ttl
        self.owner = owner or f"{history.host}:{history.pid}"

    def ensure(self, run_id: str, shards: int) -> None:
        """Create the rows of a run of `shards` shards (and its merge) unless they exist; refuse another
        number of shards for the same run.  The merge row's `result` carries the run's random seed until
        the merge completes (`seed`): drawn here, by whoever creates the rows."""
        now = self.history._now()
        with self.history._read() as conn:
            found = conn.execute(sa.select(shards_t.c.shards).where(shards_t.c.run_id == run_id).limit(1)).scalar()
        if found is None:  # insert, unless another process does at the same moment
            seed = secrets.token_hex(16)
            with self.history._write() as conn:
                insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(shards_t)
                conn.execute(insert.on_conflict_do_nothing(), [
                    {"run_id": run_id, "shard": k, "shards": shards, "state": PENDING, "owner": None,
                     "lease_until": None, "attempts": 0, "result": {SEED: seed} if k == MERGE else None,
                     "updated_at": now}
                    for k in [*range(shards), MERGE]])
                found = conn.execute(sa.select(shards_t.c.shards).where(shards_t.c.run_id == run_id).limit(1)).scalar()
        if found != shards:
            raise HistoryError(f"run {run_id} has {found} shards, not {shards}: give the same --shard K/N to "
                               "every shard of a run")

    def seed(self, run_id: str) -> str | None:
        """The run's random seed (drawn by `ensure`), the same for all its shards: what draws the random part
        of rolling coverage and the challenge reads -- never derived from the run id, which a provider may
        predict (a scheduled run's id comes from its check id and slot).  None for rows created before it
        was kept, or once the merge completed."""
        with self.history._read() as conn:
            result = conn.execute(sa.select(shards_t.c.result).where(shards_t.c.run_id == run_id,
                                                                     shards_t.c.shard == MERGE)).scalar()
        seed = result.get(SEED) if isinstance(result, dict) else None
        return seed if isinstance(seed, str) and seed else None

    def claim(self, run_id: str, shard: int) -> bool:
        """Take `shard` (pending, or running with its lease passed).  The merge only once all shards are done."""
        now = self.history._now()
        c = shards_t.c
        cond = sa.and_(c.run_id == run_id, c.shard == shard,
                       sa.or_(c.state == PENDING, sa.and_(c.state == RUNNING, c.lease_until < now)))
        if shard == MERGE:
            other = shards_t.alias("s")
            cond = sa.and_(cond, ~sa.exists().where(other.c.run_id == run_id, other.c.shard >= 0,
                                                    other.c.state != DONE))
        with self.history._write() as conn:
            done = conn.execute(shards_t.update().where(cond).values(
                state=RUNNING, owner=self.owner, lease_until=now + timedelta(seconds=self.ttl),
                attempts=c.attempts + 1, updated_at=now))
        return done.rowcount == 1

    def renew(self, run_id: str, shard: int) -> bool:
        """Extend our lease; False when the row is no longer ours (taken over after our lease passed)."""
        now = self.history._now()
        c = shards_t.c
        with self.history._write() as conn:
            done = conn.execute(shards_t.update().where(
                c.run_id == run_id, c.shard == shard, c.state == RUNNING, c.owner == self.owner,
            ).values(lease_until=now + timedelta(seconds=self.ttl), updated_at=now))
        return done.rowcount == 1

    def release(self, run_id: str, shard: int) -> None:
        """Give a row back at once (a clean stop): another process may claim it without waiting."""
        c = shards_t.c
        with self.history._write() as conn:
            conn.execute(shards_t.update().where(c.run_id == run_id, c.shard == shard, c.state == RUNNING,
                                                 c.owner == self.owner)
                         .values(state=PENDING, owner=None, lease_until=None, updated_at=self.history._now()))

    def complete(self, run_id: str, shard: int, result: dict[str, Any], check_id: str | None = None,
                 entries: Iterable[EntryRecord] = ()) -> bool:
        """Record what the row found, and the entry states it verified, in one transaction -- only while we
        still own it (False otherwise: our work is discarded, the new owner's counts)."""
        c = shards_t.c
        with self.history._write() as conn:
            done = conn.execute(shards_t.update().where(
                c.run_id == run_id, c.shard == shard, c.state == RUNNING, c.owner == self.owner,
            ).values(state=DONE, result=json.loads(json.dumps(result)), lease_until=None,
                     updated_at=self.history._now()))
            if done.rowcount != 1:
                return False
            if check_id is not None:
                self.history._upsert_entries(conn, check_id, run_id, entries)
        return True

    def rows(self, run_id: str) -> dict[int, dict[str, Any]]:
        """Every row of a run by shard number (-1: the merge)."""
        with self.history._read() as conn:
            return {int(r["shard"]): dict(r) for r in
                    conn.execute(sa.select(shards_t).where(shards_t.c.run_id == run_id)).mappings()}

    def open_work(self) -> list[tuple[str, str, int]]:
        """(run id, check id, shards) of the running runs with work another process may take now: a shard
        pending or whose lease has passed, or a merge that is claimable (every shard done).  What a
        daemon's poller looks for (docs/scale.md); served by the partial index on the open rows."""
        from reversib.history import runs_t

        now = self.history._now()
        s, other = shards_t.alias("s"), shards_t.alias("o")
        claimable = sa.or_(s.c.state == PENDING, sa.and_(s.c.state == RUNNING, s.c.lease_until < now))
        all_done = ~sa.exists().where(other.c.run_id == s.c.run_id, other.c.shard >= 0, other.c.state != DONE)
        stmt = (sa.select(s.c.run_id, runs_t.c.check_id, s.c.shards).distinct()
                .join(runs_t, runs_t.c.id == s.c.run_id)
                .where(s.c.state != DONE, claimable, runs_t.c.state == "running",
                       sa.or_(s.c.shard >= 0, all_done)))
        with self.history._read() as conn:
            return [(r.run_id, r.check_id, int(r.shards)) for r in conn.execute(stmt)]

    def abandon(self, run_id: str) -> list[int] | None:
        """Take every row of a run not yet done, but only when none changed within the last lease (no
        process holds or gave back a shard lately): the shards (and merge, -1) now ours, sorted; None when
        some row is still live (nothing is kept).  For a run no process will finish, e.g. of a check
        removed from the configuration (`Replicas.abandon`)."""
        now = self.history._now()
        c = shards_t.c
        quiet = now - timedelta(seconds=self.ttl)
        try:
            with self.history._write() as conn:
                rows = conn.execute(sa.select(c.shard, c.state, c.updated_at, c.lease_until)
                                    .where(c.run_id == run_id, c.state != DONE)).all()
                if any(r.updated_at > quiet or (r.state == RUNNING and r.lease_until is not None
                                                 and r.lease_until >= now) for r in rows):
                    return None
                taken = conn.execute(shards_t.update().where(
                    c.run_id == run_id, c.state != DONE, c.updated_at <= quiet,
                    sa.or_(c.state == PENDING, sa.and_(c.state == RUNNING, c.lease_until < now)),
                ).values(state=RUNNING, owner=self.owner, lease_until=now + timedelta(seconds=self.ttl),
                         attempts=c.attempts + 1, updated_at=now))
                if taken.rowcount != len(rows):  # changed between the two statements: the next poll retries
                    raise _Changed
        except _Changed:  # rolled back
            return None
        return sorted(int(r.shard) for r in rows)

    def slot_has_run(self, check_id: str, slot: float) -> bool:
        """Whether some process recorded a run of `check_id` for the schedule slot `slot`."""
        from reversib.history import runs_t, to_datetime

        stmt = sa.select(runs_t.c.id).where(runs_t.c.check_id == check_id, runs_t.c.scheduled_for == to_datetime(slot))
        with self.history._read() as conn:
            return conn.execute(stmt).first() is not None
