"""Alembic environment of the history database (see `reversib.history.History.ensure_schema`)."""
