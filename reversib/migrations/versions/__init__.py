"""Migration scripts, written by hand; `reversib.history.SCHEMA_REVISION` names the head."""
