"""Evidence for a contract dispute: the per-check hash chain of runs, signed chain heads anchored
outside the database, the chain audit, reversibility indicators and the report.  See docs/evidence.md."""
