"""The daemon: skipped schedule slots, and an index for the metrics queries.

Revision ID: 0002
Revises: 0001
Create Date: 2025-12-05

Written by hand, frozen: it must not import the models (they will move on).

* `skipped_slots`: a schedule slot that came due while the previous run of the check was still
  going is recorded here (reason `overlap`), never doubled and never silently lost.  Keyed by
  (check_id, scheduled_for) like the runs' slot claim.
* `run_counts`: completed runs per (check_id, outcome), kept by the transaction that completes a
  run, so that each /metrics scrape reads 4 rows per check instead of counting a year of runs.
  Filled here from the existing runs.
* `ix_runs_check_outcome_started` (check_id, outcome, started_at): the last success of every check
  is one index seek.
* `ix_runs_state` (state): the few `running` runs are found without reading the others.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "skipped_slots",
        sa.Column("check_id", sa.String(), primary_key=True),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
    )
    op.create_table(
        "run_counts",
        sa.Column("check_id", sa.String(), primary_key=True),
        sa.Column("outcome", sa.String(16), primary_key=True),
        sa.Column("runs", sa.BigInteger(), nullable=False),
    )
    op.execute(
        "INSERT INTO run_counts (check_id, outcome, runs) "
        "SELECT check_id, outcome, count(*) FROM runs WHERE outcome IS NOT NULL GROUP BY check_id, outcome"
    )
    op.create_index("ix_runs_check_outcome_started", "runs", ["check_id", "outcome", "started_at"])
    op.create_index("ix_runs_state", "runs", ["state"])


def downgrade() -> None:
    op.drop_index("ix_runs_state", table_name="runs")
    op.drop_index("ix_runs_check_outcome_started", table_name="runs")
    op.drop_table("run_counts")
    op.drop_table("skipped_slots")
