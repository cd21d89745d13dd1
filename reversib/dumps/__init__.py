"""Database dump checks (issue 5): structural level every run, restore level as scheduled.  See docs/dumps.md."""

from reversib.dumps.check import check_dumps, with_restore_level

__all__ = ["check_dumps", "with_restore_level"]
