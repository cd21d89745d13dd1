"""Scale: rolling coverage, challenge reads, bytes downloaded.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10

Written by hand, frozen: it must not import the models (they will move on).

* `runs.coverage` (JSON, null when the check has no `coverage:` block): the run's coverage figures
  (budget, entries selected and not sampled, share of the export's bytes verified within the period).
* `runs.bytes_downloaded` (null for runs recorded before this revision): every byte read from the
  source by the run (manifest, downloads, rechecks, challenge reads): the egress the run cost.
* `entry_state.blocks` (text, null): the block digests of the entry's last full download that matched
  the manifest (compact JSON), for challenge reads.

Both run columns are nullable, and a run's summary digest covers them only when they are set, so
the summary digests and the hash chain links of earlier runs stay verifiable.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("runs", sa.Column("coverage", JSON, nullable=True))
    op.add_column("runs", sa.Column("bytes_downloaded", sa.BigInteger(), nullable=True))
    op.add_column("entry_state", sa.Column("blocks", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("entry_state") as batch:
        batch.drop_column("blocks")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("bytes_downloaded")
        batch.drop_column("coverage")
