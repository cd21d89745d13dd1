"""Database dump checks (issue 5): structural level every run, restore level as scheduled.  See docs/dumps.md."""

from reversib.dumps.check import check_dumps

__all__ = ["check_dumps"]
