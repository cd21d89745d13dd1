"""Run history: the evidence store (SQLite by default, PostgreSQL for teams).

Every run is recorded as `running` before any work starts and completed in one transaction by
`finish_run`, so a crash leaves a `running` row that `reap_dead_runs` later marks `interrupted`:
a run that never finished is never reported as passed.

The schema is managed by Alembic (`reversib/migrations/`), but Alembic is imported only when an
existing database is behind `SCHEMA_REVISION`: the common start-up costs one query, and a new (empty)
database is created at the head straight from the table definitions and stamped, as Alembic's cookbook
describes ("building an up to date database from scratch"); a test holds both routes to the same schema.

Timestamps come from the clock passed in (epoch seconds) and are stored as tz-aware UTC.
Messages never show the database password: they use `describe()`.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import itertools
import logging
import math
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii as _jstr
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Dialect, Engine

from reversib.model import Finding, FindingKind, Outcome, RunResult, RunState, Severity, Trigger, canonical_json

__all__ = [
    "SCHEMA_REVISION",
    "CheckSummary",
    "EntryRecord",
    "History",
    "HistoryError",
    "RunNotRunning",
    "RunRow",
    "SlotTaken",
    "UnknownRun",
    "compute_summary_digest",
    "create_history_engine",
    "storable",
    "summary_document",
]

# The Alembic head this code expects; tests assert it equals the migration scripts' head.
SCHEMA_REVISION = "0007"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
BATCH_SIZE = 5000
_PG_SCHEMA_LOCK = 0x7265766572736962  # "reversib": pg_advisory_xact_lock key for schema upgrades
_ALEMBIC_LOCK = threading.Lock()  # alembic's `context` proxy is process-global
# Runs started by this very process and not yet completed.  A `running` row carrying our host and pid
# but absent from here was left by an earlier process that had the same pid (a container restart).
_RUNS_OF_THIS_PROCESS: set[str] = set()
UTC = timezone.utc


class HistoryError(Exception):
    """The history database could not be used.  Messages name it with the password masked."""


class NotRecorded(HistoryError):
    """A run was done but its result could not be written (the database stayed locked, went away...):
    `result` holds the verdict, so that it can still be shown.  The run stays `running` in the history
    until a later start records it interrupted."""

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


class HistoryMissing(HistoryError):
    """A SQLite history file that is not there, opened by a command that only reads."""


class SlotTaken(HistoryError):
    """A run of this check for this schedule slot already exists (another process or replica took it)."""


class UnknownRun(HistoryError):
    """No run with this id."""


class RunNotRunning(HistoryError):
    """The run is no longer `running` (finished, or marked interrupted): its record is not overwritten."""


# --------------------------------------------------------------------------------------------- text


def _escape_surrogate(err: UnicodeError) -> tuple[bytes, int]:
    if not isinstance(err, UnicodeEncodeError):
        raise err
    out = bytearray()
    for ch in err.object[err.start:err.end]:
        cp = ord(ch)
        if 0xDC80 <= cp <= 0xDCFF:  # surrogateescape of an undecodable byte: back to that byte
            out.append(cp - 0xDC00)
        else:  # any other lone surrogate: spell it
            out += f"\\u{cp:04x}".encode("ascii")
    return bytes(out), err.end


codecs.register_error("reversib.storable", _escape_surrogate)


def storable(text: str) -> str:
    """`text` as valid UTF-8 without NUL, storable in any database.

    Undecodable bytes kept by `surrogateescape` become `\\xNN`, other lone surrogates `\\uDXXX`,
    NUL `\\x00`.  Text that is already clean is returned unchanged.
    """
    if text.isascii():
        return text.replace("\x00", "\\x00") if "\x00" in text else text
    raw = text.encode("utf-8", "reversib.storable")
    return raw.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


def _opt(text: str | None) -> str | None:
    return None if text is None else storable(text)


def _labels(labels: Mapping[str, str]) -> dict[str, str]:
    return {storable(str(k)): storable(str(v)) for k, v in sorted(labels.items())}


# ----------------------------------------------------------------------------------------- schema


def to_datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def iso(dt: datetime | None) -> str | None:
    """ISO 8601 UTC with microseconds, fixed width: `2024-05-01T02:00:00.000000Z`."""
    return None if dt is None else dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Tz-aware UTC in, tz-aware UTC out, on every backend (SQLite keeps naive UTC text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a tz-aware one")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JSONType(sa.types.TypeDecorator[Any]):
    """JSON; JSONB on PostgreSQL.  Its dialect is imported only there (50 ms saved on every SQLite start)."""

    impl = sa.JSON()
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(sa.JSON())


# Paths compare and sort by code point (= UTF-8 byte order) on both backends.
PathText = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")


# The schema, as SQLAlchemy Core tables (the ORM is not needed, and importing it costs ~60 ms per start).
# `Base.metadata` is the MetaData every table of the history joins (leases, evidence chain, migrations).
class Base:
    metadata = sa.MetaData()


def _col(name: str, type_: Any, *args: Any, nullable: bool = False, **kwargs: Any) -> sa.Column[Any]:
    """A column NOT NULL unless said otherwise (the ORM's `Mapped[X]` vs `Mapped[X | None]`)."""
    return sa.Column(name, type_, *args, nullable=nullable, **kwargs)


runs_t = sa.Table(
    "runs", Base.metadata,
    _col("id", sa.String(32), primary_key=True),
    _col("check_id", sa.String()),
    _col("check_name", sa.String()),
    _col("trigger", sa.String(16)),
    _col("scheduled_for", UTCDateTime(), nullable=True),
    _col("state", sa.String(16)),
    _col("outcome", sa.String(16), nullable=True),
    _col("started_at", UTCDateTime()),
    _col("finished_at", UTCDateTime(), nullable=True),
    _col("duration_seconds", sa.Float(), nullable=True),
    _col("host", sa.String()),
    _col("pid", sa.Integer()),
    _col("labels", JSONType()),
    _col("source", sa.Text(), nullable=True),
    _col("manifest", sa.Text(), nullable=True),
    _col("manifest_digest", sa.String(), nullable=True),
    _col("generation", sa.String(), nullable=True),
    _col("error", sa.Text(), nullable=True),
    _col("counts", JSONType()),
    _col("severities", JSONType()),
    _col("tiers", JSONType()),
    _col("bytes_verified", sa.BigInteger()),
    _col("files_verified", sa.BigInteger()),
    _col("files_listed", sa.BigInteger()),
    _col("bytes_listed", sa.BigInteger()),
    _col("manifest_entries", sa.BigInteger()),
    _col("newest_mtime", UTCDateTime(), nullable=True),
    _col("summary_digest", sa.String(64), nullable=True),
    _col("coverage", JSONType(), nullable=True),  # 0004: rolling coverage figures
    _col("bytes_downloaded", sa.BigInteger(), nullable=True),  # 0004: bytes read from the source
    sa.UniqueConstraint("check_id", "scheduled_for", name="uq_runs_check_slot"),
    sa.Index("ix_runs_check_started", "check_id", "started_at"),
    sa.Index("ix_runs_check_outcome_started", "check_id", "outcome", "started_at"),
    sa.Index("ix_runs_state", "state"),
)

findings_t = sa.Table(
    "findings", Base.metadata,
    _col("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    _col("seq", sa.Integer(), primary_key=True),
    _col("kind", sa.String(32)),
    _col("severity", sa.String(16)),
    _col("path", sa.Text(), nullable=True),
    _col("expected", sa.Text(), nullable=True),
    _col("actual", sa.Text(), nullable=True),
    _col("detail", sa.Text(), nullable=True),
)

# The last verification of each manifest path of each check.  `run_id` is deliberately not a foreign key:
# pruning old runs must not erase what is known about the entries they verified.
entries_t = sa.Table(
    "entry_state", Base.metadata,
    _col("check_id", sa.String(), primary_key=True),
    _col("path", PathText, primary_key=True),
    _col("size", sa.BigInteger(), nullable=True),
    _col("digests", JSONType()),
    _col("tier", sa.String(32)),
    _col("verified_at", UTCDateTime()),
    _col("run_id", sa.String(32)),
    # 0004: block digests of the last full download that matched the manifest (reversib.challenge)
    _col("blocks", sa.Text(), nullable=True),
    sqlite_with_rowid=False,
)

# A schedule slot that was not run: `overlap` (the previous run of the check was still going).
skipped_t = sa.Table(
    "skipped_slots", Base.metadata,
    _col("check_id", sa.String(), primary_key=True),
    _col("scheduled_for", UTCDateTime(), primary_key=True),
    _col("reason", sa.String(16)),
    _col("recorded_at", UTCDateTime()),
    _col("host", sa.String()),
    _col("pid", sa.Integer()),
)

# Completed runs per (check, outcome), bumped in the transaction that completes each run.
counts_t = sa.Table(
    "run_counts", Base.metadata,
    _col("check_id", sa.String(), primary_key=True),
    _col("outcome", sa.String(16), primary_key=True),
    _col("runs", sa.BigInteger()),
)


# check_summaries' statements (constant: compiled once).  The checks with a completed run come from the small
# run_counts table; for each, the id of its newest completed run and when it last passed (index seeks).
_wanted = sa.select(counts_t.c.check_id).where(counts_t.c.check_id.in_(sa.bindparam("ids", expanding=True))) \
    .distinct().subquery("wanted")
_r = runs_t.alias("r")
_PICKS = sa.select(
    _wanted.c.check_id,
    sa.select(_r.c.id).where(_r.c.check_id == _wanted.c.check_id, _r.c.outcome.is_not(None))
    .order_by(_r.c.started_at.desc(), _r.c.id.desc()).limit(1).correlate(_wanted).scalar_subquery(),
)
# The last success of checks whose newest completed run did not pass (else it is that run).
_SUCCESSES = sa.select(
    _wanted.c.check_id,
    *[sa.select(col).where(_r.c.check_id == _wanted.c.check_id, _r.c.outcome == Outcome.PASSED.value)
      .order_by(_r.c.started_at.desc(), _r.c.id.desc()).limit(1).correlate(_wanted).scalar_subquery()
      for col in (_r.c.id, _r.c.finished_at)],
)
_COUNTS = sa.select(counts_t.c.check_id, counts_t.c.outcome, counts_t.c.runs)
_RUNNING = (sa.select(runs_t.c.check_id, sa.func.count()).where(runs_t.c.state == RunState.RUNNING.value)
            .group_by(runs_t.c.check_id))
_SKIPPED = sa.select(skipped_t.c.check_id, sa.func.count()).group_by(skipped_t.c.check_id)
_MARKER = sa.select(
    sa.select(sa.func.count()).select_from(counts_t).scalar_subquery(),
    sa.select(sa.func.coalesce(sa.func.sum(counts_t.c.runs), 0)).scalar_subquery(),
    sa.select(sa.func.count()).select_from(runs_t).where(runs_t.c.state == RunState.RUNNING.value).scalar_subquery(),
    sa.select(sa.func.count()).select_from(skipped_t).scalar_subquery(),
)
# How many of the given run ids exist: one constant statement and one parameter (no SQL to build per call).
_EXISTING = {"sqlite": "SELECT count(*) FROM runs WHERE id IN (SELECT value FROM json_each(?))",
             "postgresql": "SELECT count(*) FROM runs WHERE id = ANY(%s)"}


# ------------------------------------------------------------------------------------------ data


class EntryRecord(NamedTuple):
    """One entry's last verification: digests computed by reversib (algorithm -> hex).

    A named tuple, immutable like a frozen dataclass but made 4x faster: a run writes one per entry."""

    path: str
    size: int | None
    digests: Mapping[str, str]
    tier: str
    verified_at: float
    blocks: str | None = None  # compact JSON (reversib.challenge); None keeps the recorded ones


@dataclass(frozen=True)
class RunRow:
    """One stored run.  Timestamps are tz-aware UTC; `outcome` is None while the run is `running`."""

    id: str
    check_id: str
    check_name: str
    trigger: str
    scheduled_for: datetime | None
    state: str
    outcome: str | None
    started_at: datetime
    finished_at: datetime | None
    duration_seconds: float | None
    host: str
    pid: int
    labels: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    manifest: str | None = None
    manifest_digest: str | None = None
    generation: str | None = None
    error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    severities: dict[str, int] = field(default_factory=dict)
    tiers: dict[str, int] = field(default_factory=dict)
    bytes_verified: int = 0
    files_verified: int = 0
    files_listed: int = 0
    bytes_listed: int = 0
    manifest_entries: int = 0
    newest_mtime: datetime | None = None
    summary_digest: str | None = None
    coverage: dict[str, Any] | None = None
    bytes_downloaded: int | None = None

    @classmethod
    def from_mapping(cls, row: Mapping[Any, Any]) -> RunRow:
        return cls(**{name: row[name] for name in _RUN_FIELDS})

    @property
    def passed(self) -> bool:
        return self.state == RunState.FINISHED.value and self.outcome == Outcome.PASSED.value

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: timestamps as ISO 8601 UTC strings."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = iso(value)
        return data


_RUN_FIELDS = [c.name for c in runs_t.columns]
# Run fields added after the first summary digests were recorded: covered by the digest only when set.
LATER_RUN_FIELDS = ("coverage", "bytes_downloaded")


@dataclass(frozen=True)
class CheckSummary:
    """What the metrics and the daemon's API show of one check, read in a few queries for all checks.

    `latest` is the newest completed run (finished or interrupted); `outcomes` counts completed runs
    per outcome; `running` counts runs still `running`; `skipped` counts skipped schedule slots."""

    check_id: str
    latest: RunRow | None = None
    last_success_at: datetime | None = None
    outcomes: dict[str, int] = field(default_factory=dict)
    running: int = 0
    skipped: int = 0

    @property
    def runs_total(self) -> int:
        return sum(self.outcomes.values())


def summary_document(run: RunRow, findings: Sequence[Finding]) -> dict[str, Any]:
    """What `summary_digest` covers: every stored field of the run but the digest, and the findings."""
    data = run.to_dict()
    del data["summary_digest"]
    for name in LATER_RUN_FIELDS:  # absent from the runs recorded before them: their digests still verify
        if data.get(name) is None:
            data.pop(name, None)
    return {"run": data, "findings": [f.to_dict() for f in findings]}


def compute_summary_digest(run: RunRow, findings: Sequence[Finding]) -> str:
    """sha256 of the canonical JSON of `summary_document`: recomputable from the stored rows."""
    return hashlib.sha256(canonical_json(summary_document(run, findings)).encode("ascii")).hexdigest()


# ----------------------------------------------------------------------------------------- engine


def _sqlite_file(url: sa.URL) -> Path | None:
    db = url.database
    if not db or db == ":memory:" or db.startswith("file:") or url.query.get("mode") == "memory":
        return None
    return Path(db)


T = TypeVar("T")


def _retry_locked(fn: Callable[[], T], seconds: float = 30.0) -> T:
    """`fn()`, tried again while SQLite says "database is locked" for up to `seconds`.  SQLite's busy handler
    does not cover every case: a journal-mode change or a schema creation racing another process's can fail at
    once (seen under load when several processes create a new history together)."""
    deadline = time.monotonic() + seconds
    delay = 0.01
    while True:
        try:
            return fn()
        except (sqlite3.OperationalError, sa.exc.OperationalError, HistoryError) as exc:
            # HistoryError: what History._guard makes of the driver's error inside a transaction
            if "database is locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def create_history_engine(url: str, *, create: bool = True) -> Engine:
    """An engine set up for the history: SQLite in WAL mode with a 30 s busy timeout, write transactions
    started with BEGIN IMMEDIATE; PostgreSQL through psycopg 3 with pre-ping and a connect timeout.
    A bare path means SQLite; `postgresql://` means `postgresql+psycopg://`.  Without `create`, a SQLite
    file that does not exist is an error (commands that only read never make an empty history)."""
    if "://" not in url:
        url = f"sqlite:///{Path(url).absolute()}"
    parsed = sa.make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
        masked = parsed.render_as_string(hide_password=True)
        raise HistoryError(f"unsupported history database {masked}: use sqlite:///PATH or postgresql+psycopg://...")
    if parsed.get_backend_name() == "sqlite":
        path = _sqlite_file(parsed)
        if path is not None and not create and not path.exists():
            raise HistoryMissing(f"no history database at {path}: nothing was recorded there (a mistyped "
                                 "--history or history.url?)")
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise HistoryError(f"history database {path}: cannot create its folder {path.parent}: "
                                   f"{exc.strerror}") from None
        engine = sa.create_engine(parsed, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _on_begin)
            cur = dbapi_conn.cursor()
            try:
                cur.execute("PRAGMA busy_timeout = 30000")
                _retry_locked(lambda: cur.execute("PRAGMA journal_mode = WAL"))
                cur.execute("PRAGMA synchronous = NORMAL")
                cur.execute("PRAGMA foreign_keys = ON")
            finally:
                cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get("reversib_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = 10
    if "application_name" not in parsed.query:
        connect_args["application_name"] = "reversib"
    return sa.create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)


# Alembic's version table, as Alembic itself defines it (alembic.ddl.impl.DefaultImpl.version_table_impl).
_alembic_version_t = sa.Table(
    "alembic_version", sa.MetaData(),
    sa.Column("version_num", sa.String(32), nullable=False),
    sa.PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)


_REVISION = sa.text("SELECT version_num FROM alembic_version")  # the stamped revision (no table: none yet)


def create_at_head(conn: Connection) -> None:
    """Create every history table of an empty database at SCHEMA_REVISION, stamped as Alembic would.

    `Base.metadata` is the head: tests compare it with what the migrations build, table by table.
    """
    Base.metadata.create_all(conn, checkfirst=False)
    _alembic_version_t.create(conn, checkfirst=False)
    conn.execute(_alembic_version_t.insert().values(version_num=SCHEMA_REVISION))


def alembic_config() -> Any:
    """A programmatic Alembic config (no alembic.ini needed).  Imports alembic."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _count_run(conn: Connection, check_id: str, outcome: str) -> None:
    """One more completed run of `check_id` with `outcome` in `run_counts` (inside the caller's transaction)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Any = pg_insert(counts_t)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(counts_t)
    stmt = stmt.values(check_id=check_id, outcome=outcome, runs=1)
    conn.execute(stmt.on_conflict_do_update(index_elements=[counts_t.c.check_id, counts_t.c.outcome],
                                            set_={"runs": counts_t.c.runs + 1}))


def _as_utc(value: Any, dialect: Dialect) -> datetime:
    """A timestamp read through an untyped aggregate (SQLite returns text there) as tz-aware UTC."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    result = _UTC_DATETIME.process_result_value(value, dialect)
    assert result is not None
    return result


_UTC_DATETIME = UTCDateTime()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def _json_compact(data: Mapping[str, str]) -> str:
    """Compact JSON of a str -> str mapping, sorted; 4x faster than json.dumps for the usual one digest."""
    if len(data) == 1:
        for k, v in data.items():
            return "{" + _jstr(k) + ":" + _jstr(v) + "}"
    return "{" + ",".join(_jstr(k) + ":" + _jstr(v) for k, v in sorted(data.items())) + "}"


def _sqlite_timestamps(values: Iterable[float]) -> list[str]:
    """Epoch seconds as SQLAlchemy's SQLite DATETIME stores them (naive UTC, `YYYY-MM-DD HH:MM:SS.ffffff`),
    rounded as `datetime.fromtimestamp` rounds; dates are formatted once per day (5x faster)."""
    seconds: dict[int, str] = {}  # whole second -> "YYYY-MM-DD HH:MM:SS": a run's entries share a few
    out = []
    for ts in values:
        frac, whole = math.modf(ts)
        us = round(frac * 1e6)
        if us >= 1_000_000:
            whole, us = whole + 1, us - 1_000_000
        elif us < 0:
            whole, us = whole - 1, us + 1_000_000
        second = int(whole)
        text = seconds.get(second)
        if text is None:
            day, rest = divmod(second, 86400)
            hour, rest = divmod(rest, 3600)
            minute, rest = divmod(rest, 60)
            date = datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%d")
            text = seconds[second] = f"{date} {hour:02d}:{minute:02d}:{rest:02d}"
        out.append(f"{text}.{us:06d}")
    return out


# Block digests (challenge reads) are kept until a new full download records others.
_UPSERT_SET = (
    "ON CONFLICT (check_id, path) DO UPDATE SET size = excluded.size, digests = excluded.digests, "
    "tier = excluded.tier, verified_at = excluded.verified_at, run_id = excluded.run_id, "
    "blocks = COALESCE(excluded.blocks, entry_state.blocks)"
)
# verified_at is written as SQLAlchemy's SQLite DATETIME writes it (naive UTC, microseconds).
_UPSERT_SQLITE = (
    "INSERT INTO entry_state (check_id, path, size, digests, tier, verified_at, run_id, blocks) "
    f"VALUES (?, ?, ?, ?, ?, ?, ?, ?) {_UPSERT_SET}"
)
_UPSERT_PG = (
    "INSERT INTO entry_state (check_id, run_id, path, size, digests, tier, verified_at, blocks) "
    "SELECT %s, %s, e.path, e.size, e.digests::jsonb, e.tier, e.verified_at, e.blocks "
    "FROM unnest(%b::text[], %b::bigint[], %b::text[], %b::text[], %b::timestamptz[], %b::text[]) "
    f"AS e(path, size, digests, tier, verified_at, blocks) {_UPSERT_SET}"
)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


# ---------------------------------------------------------------------------------------- History


class History:
    """The run history.  Pass the clock, host and pid in; tests need no patching."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        host: str | None = None,
        pid: int | None = None,
        create: bool = True,
    ) -> None:
        self.clock = clock
        self.host = host if host is not None else socket.gethostname()
        self.pid = pid if pid is not None else os.getpid()
        self.migrations_run = 0  # how many times ensure_schema had to create or upgrade the schema
        # Called with the check id after each completed run is committed (evidence: anchoring the chain
        # heads); an exception there is logged, never raised: the run is already recorded.
        self.after_finish: list[Callable[[str], None]] = []
        # What check_summaries last read (it reads again only what changed since: see there).  Shared by the
        # daemon's HTTP threads, hence the lock.
        self._summaries_lock = threading.Lock()
        self._marker: tuple[Any, ...] | None = None
        self._outcomes: dict[str, dict[str, int]] = {}  # run_counts: check id -> outcome -> completed runs
        self._running: dict[str, int] = {}
        self._skipped: dict[str, int] = {}
        # check id -> (its counts when picked, its newest completed run, when it last passed, that run's id)
        self._picked: dict[str, tuple[dict[str, int], RunRow | None, datetime | None, str | None]] = {}
        self._shown: list[str] = []  # the ids of those runs (pruning may delete them)
        self._summaries: dict[str, CheckSummary] = {}
        self._engine = create_history_engine(url, create=create)
        self._password = self._engine.url.password

    @classmethod
    def open(
        cls,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        host: str | None = None,
        pid: int | None = None,
        create: bool = True,
    ) -> History:
        """The history at `url`, its schema brought to this version.  `create=False`: a SQLite file that
        does not exist is a HistoryError (for commands that only read)."""
        history = cls(url, clock=clock, host=host, pid=pid, create=create)
        try:
            history.ensure_schema()
        except BaseException:
            history.close()
            raise
        return history

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def engine(self) -> Engine:
        return self._engine

    def describe(self) -> str:
        """The database URL with its password masked."""
        return self._engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self._engine.dispose()

    # -------------------------------------------------------------------------------- plumbing

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Driver and connection errors as HistoryError naming the masked URL (never the password)."""
        try:
            yield
        except sa.exc.IntegrityError:
            raise  # a constraint: the caller's to decide (a slot already taken...)
        except (sa.exc.DatabaseError, sa.exc.InterfaceError) as exc:  # not a database, corrupt, locked...
            raise HistoryError(f"history database {self.describe()}: {_scrub(str(exc.orig), self._password)}") from None

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._guard(), self._engine.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """One transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE, waits up to 30 s)."""
        with self._guard(), self._engine.connect() as conn:
            conn.execution_options(reversib_write=True)
            with conn.begin():
                yield conn

    def _now(self) -> datetime:
        return to_datetime(self.clock())

    # ---------------------------------------------------------------------------------- schema

    def current_revision(self) -> str | None:
        """The revision in `alembic_version`, None when there is no schema yet.  One query."""
        with self._read() as conn:
            try:
                return conn.execute(_REVISION).scalar()
            except (sa.exc.OperationalError, sa.exc.ProgrammingError):
                return None  # no such table

    def ensure_schema(self) -> bool:
        """Bring the schema to SCHEMA_REVISION; True when it had to be created or upgraded.

        Fast path: one query, no Alembic import.  Concurrent callers are serialized by the
        database (PostgreSQL advisory lock, SQLite write lock) and re-check under the lock.
        """
        if self.current_revision() == SCHEMA_REVISION:
            return False
        return _retry_locked(self._upgrade)

    def _upgrade(self) -> bool:
        with _ALEMBIC_LOCK, self._write() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_SCHEMA_LOCK)))
            tables = sa.inspect(conn).get_table_names()
            if not tables:
                create_at_head(conn)
                changed = True
            elif "alembic_version" in tables and conn.execute(_REVISION).scalar() == SCHEMA_REVISION:
                changed = False  # another process made it while we waited for the lock
            else:
                changed = self._migrate(conn)
        self.migrations_run += changed
        return changed

    def _migrate(self, conn: Connection) -> bool:
        """Alembic's upgrade to the head, in the caller's locked transaction."""
        from alembic import command
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory
        from alembic.util import CommandError

        config = alembic_config()
        known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
        current = MigrationContext.configure(conn).get_current_revision()
        if current == SCHEMA_REVISION:
            return False  # another process did it while we waited
        if current is not None and current not in known:
            raise HistoryError(
                f"history database {self.describe()} is at schema revision {current!r}, unknown to this "
                f"reversib (expects {SCHEMA_REVISION!r}): upgrade reversib"
            )
        config.attributes["connection"] = conn
        try:
            command.upgrade(config, SCHEMA_REVISION)
        except CommandError as exc:
            raise HistoryError(f"history database {self.describe()}: schema upgrade failed: {exc}") from None
        return True

    # ------------------------------------------------------------------------------------ runs

    def start_run(
        self,
        *,
        check_id: str,
        check_name: str,
        trigger: Trigger | str,
        scheduled_for: datetime | float | None = None,
        labels: Mapping[str, str] | None = None,
        source: str | None = None,
        manifest: str | None = None,
        run_id: str | None = None,
    ) -> str:
        """Record a run as `running`, committed before any work; return its id (a uuid4 hex).

        Raises SlotTaken when this check already has a run for `scheduled_for`.
        """
        if isinstance(scheduled_for, int | float):
            scheduled_for = to_datetime(scheduled_for)
        run_id = run_id or uuid.uuid4().hex
        values = {
            "id": run_id,
            "check_id": check_id,
            "check_name": storable(check_name),
            "trigger": Trigger(trigger).value,
            "scheduled_for": scheduled_for,
            "state": RunState.RUNNING.value,
            "outcome": None,
            "started_at": self._now(),
            "host": storable(self.host),
            "pid": self.pid,
            "labels": _labels(labels or {}),
            "source": _opt(source),
            "manifest": _opt(manifest),
            "counts": {},
            "severities": {},
            "tiers": {},
            **dict.fromkeys(("bytes_verified", "files_verified", "files_listed", "bytes_listed"), 0),
            "manifest_entries": 0,
        }
        try:
            with self._write() as conn:
                conn.execute(runs_t.insert(), values)
        except sa.exc.IntegrityError:
            if scheduled_for is not None and self._slot_taken(check_id, scheduled_for):
                raise SlotTaken(f"check {check_id!r} already has a run for the slot {iso(scheduled_for)}") from None
            raise
        _RUNS_OF_THIS_PROCESS.add(run_id)
        return run_id

    def _slot_taken(self, check_id: str, slot: datetime) -> bool:
        stmt = sa.select(runs_t.c.id).where(runs_t.c.check_id == check_id, runs_t.c.scheduled_for == slot)
        with self._read() as conn:
            return conn.execute(stmt).first() is not None

    def finish_run(self, result: RunResult, entries: Iterable[EntryRecord] = ()) -> str:
        """Complete the run `result.run_id` in one transaction: the run row, its findings, and the
        entry states (upserted in batches; `entries` may be an iterator).  Returns the summary digest.

        An interrupted run is never stored as passed (its outcome becomes `error`).
        """
        state = RunState(result.state)
        if state is RunState.RUNNING:
            raise ValueError("finish_run needs a finished or interrupted result, not a running one")
        outcome = Outcome(result.outcome)
        if state is not RunState.FINISHED and outcome is Outcome.PASSED:
            outcome = Outcome.ERROR
        findings = [
            Finding(f.kind, _opt(f.path), _opt(f.expected), _opt(f.actual), f.severity, _opt(f.detail))
            for f in result.findings
        ]
        with self._write() as conn:
            row = conn.execute(sa.select(runs_t).where(runs_t.c.id == result.run_id)).mappings().first()
            if row is None:
                raise UnknownRun(f"no run {result.run_id!r} in {self.describe()}")
            if row["state"] != RunState.RUNNING.value:
                raise RunNotRunning(f"run {result.run_id!r} is {row['state']}, not running: not overwritten")
            finished_at = to_datetime(result.finished_at) if result.finished_at else self._now()
            started = RunRow.from_mapping(row)
            run = replace(
                started,
                state=state.value,
                outcome=outcome.value,
                finished_at=finished_at,
                duration_seconds=float(result.duration_seconds),
                labels=_labels(result.labels) if result.labels else started.labels,
                source=_opt(result.source) if result.source is not None else started.source,
                manifest=_opt(result.manifest) if result.manifest is not None else started.manifest,
                manifest_digest=result.manifest_digest,
                generation=_opt(result.generation),
                error=_opt(result.error),
                counts=result.counts,
                severities=result.severity_counts,
                tiers=dict(sorted((str(k), int(v)) for k, v in result.tiers.items())),
                bytes_verified=result.bytes_verified,
                files_verified=result.files_verified,
                files_listed=result.files_listed,
                bytes_listed=result.bytes_listed,
                manifest_entries=result.manifest_entries,
                newest_mtime=None if result.newest_mtime is None else to_datetime(result.newest_mtime),
                summary_digest=None,
                coverage=result.coverage,
                bytes_downloaded=result.bytes_downloaded,
            )
            digest = compute_summary_digest(run, findings)
            values = {k: v for k, v in asdict(run).items() if k not in ("id", "started_at")}
            values["summary_digest"] = digest
            conn.execute(runs_t.update().where(runs_t.c.id == run.id).values(values))
            _count_run(conn, run.check_id, outcome.value)
            if findings:
                conn.execute(
                    findings_t.insert(),
                    [
                        {"run_id": run.id, "seq": seq, "kind": f.kind.value, "severity": f.sev.value, "path": f.path,
                         "expected": f.expected, "actual": f.actual, "detail": f.detail}
                        for seq, f in enumerate(findings)
                    ],
                )
            self._upsert_entries(conn, run.check_id, run.id, entries)
            # A sharded run's merge row (the only row left open by then) ends with the run, atomically.
            _leases.close_rows(conn, run.id, self._now(), {"ended": state.value})
            _chain.link_run(conn, run.id, finished_at)  # the check's hash chain, same transaction (evidence)
        _RUNS_OF_THIS_PROCESS.discard(run.id)
        self._after_finish(run.check_id)
        return digest

    def _after_finish(self, check_id: str) -> None:
        for callback in self.after_finish:
            try:
                callback(check_id)
            except Exception:
                logging.getLogger("reversib.history").exception("after-finish hook failed for %s", check_id)

    def _upsert_entries(self, conn: Connection, check_id: str, run_id: str, entries: Iterable[EntryRecord]) -> None:
        """Bulk upsert, one statement per batch of BATCH_SIZE.  Values are encoded here (not by SQLAlchemy's
        per-row type processors, which cost more than the database): SQLite gets an executemany of tuples
        in SQLAlchemy's own storage formats, PostgreSQL one INSERT ... SELECT FROM unnest(arrays)."""
        pg = conn.dialect.name == "postgresql"
        sql = _UPSERT_PG if pg else _UPSERT_SQLITE
        for chunk in _chunks(entries, BATCH_SIZE):
            # The last record of a path wins: PostgreSQL refuses to update one row twice in a statement.
            rows: dict[str, EntryRecord] = {}
            for e in chunk:
                rows[storable(e.path)] = e
            if pg:
                conn.exec_driver_sql(sql, (
                    check_id,
                    run_id,
                    list(rows),
                    [e.size for e in rows.values()],
                    [_json_compact(e.digests) for e in rows.values()],
                    [getattr(e.tier, "value", e.tier) for e in rows.values()],
                    [to_datetime(e.verified_at) for e in rows.values()],
                    [e.blocks for e in rows.values()],
                ))
            else:
                stamps = _sqlite_timestamps([e.verified_at for e in rows.values()])
                conn.exec_driver_sql(sql, [
                    (check_id, path, e.size, _json_compact(e.digests), getattr(e.tier, "value", e.tier), ts, run_id,
                     e.blocks)
                    for (path, e), ts in zip(rows.items(), stamps, strict=True)
                ])

    def mark_interrupted(self, run_id: str, reason: str) -> bool:
        """Mark a still-running run interrupted (outcome `error`).  False when it was not running."""
        now = self._now()
        with self._write() as conn:
            started = conn.execute(
                sa.select(runs_t.c.started_at).where(runs_t.c.id == run_id, runs_t.c.state == RunState.RUNNING.value)
            ).scalar()
            if started is None:
                return False
            conn.execute(
                runs_t.update()
                .where(runs_t.c.id == run_id, runs_t.c.state == RunState.RUNNING.value)
                .values(
                    state=RunState.INTERRUPTED.value,
                    outcome=Outcome.ERROR.value,
                    error=storable(reason),
                    finished_at=now,
                    duration_seconds=max(0.0, (now - started).total_seconds()),
                )
            )
            check_id = conn.execute(sa.select(runs_t.c.check_id).where(runs_t.c.id == run_id)).scalar_one()
            _count_run(conn, check_id, Outcome.ERROR.value)
            _leases.close_rows(conn, run_id, now, {"ended": RunState.INTERRUPTED.value, "reason": storable(reason)})
            _chain.link_run(conn, run_id, now)  # the check's hash chain, same transaction (evidence)
        _RUNS_OF_THIS_PROCESS.discard(run_id)
        self._after_finish(check_id)
        return True

    def reap_dead_runs(self) -> list[str]:
        """Mark interrupted the runs left `running` on this host by processes that no longer exist.
        Runs of other hosts and of live processes are never touched.  Returns their ids.

        A run carrying this process's own pid counts as alive only if this process started it: after a
        container restart the new process often has the pid of the one that died.  (A pid reused by an
        unrelated live process keeps its run `running`: the safe side.)"""
        stmt = sa.select(runs_t.c.id, runs_t.c.pid).where(
            runs_t.c.state == RunState.RUNNING.value, runs_t.c.host == storable(self.host),
            ~sa.exists().where(_leases.shards_t.c.run_id == runs_t.c.id),  # sharded: leases tell (docs/scale.md)
        )
        with self._read() as conn:
            candidates = [(row.id, row.pid) for row in conn.execute(stmt)]
        reaped = []
        for run_id, pid in candidates:
            alive = run_id in _RUNS_OF_THIS_PROCESS if pid == os.getpid() else _pid_alive(pid)
            if alive:
                continue
            if self.mark_interrupted(run_id, f"process {pid} on {self.host} ended without finishing the run"):
                reaped.append(run_id)
        return reaped

    # ---------------------------------------------------------------------------------- queries

    def _runs(self, stmt: sa.Select[Any]) -> list[RunRow]:
        with self._read() as conn:
            return [RunRow.from_mapping(row) for row in conn.execute(stmt).mappings()]

    def latest_runs(self) -> list[RunRow]:
        """The latest run (any state) of every check, ordered by check id."""
        ids = sa.select(runs_t.c.check_id).distinct().subquery("c")
        other = runs_t.alias("r2")
        latest = (
            sa.select(other.c.id)
            .where(other.c.check_id == ids.c.check_id)
            .order_by(other.c.started_at.desc(), other.c.id.desc())
            .limit(1)
            .correlate(ids)
            .scalar_subquery()
        )
        return self._runs(sa.select(runs_t).select_from(ids).join(runs_t, runs_t.c.id == latest)
                          .order_by(runs_t.c.check_id))

    def runs(self, check_id: str, limit: int = 50) -> list[RunRow]:
        """The runs of one check, newest first."""
        return self._runs(
            sa.select(runs_t).where(runs_t.c.check_id == check_id)
            .order_by(runs_t.c.started_at.desc(), runs_t.c.id.desc()).limit(limit)
        )

    def get_run(self, run_id: str) -> RunRow | None:
        found = self._runs(sa.select(runs_t).where(runs_t.c.id == run_id))
        return found[0] if found else None

    def last_success(self, check_id: str) -> RunRow | None:
        """The newest finished, passed run of a check."""
        found = self._runs(
            sa.select(runs_t)
            .where(runs_t.c.check_id == check_id, runs_t.c.state == RunState.FINISHED.value,
                   runs_t.c.outcome == Outcome.PASSED.value)
            .order_by(runs_t.c.started_at.desc(), runs_t.c.id.desc()).limit(1)
        )
        return found[0] if found else None

    def check_summaries(self, check_ids: Sequence[str]) -> dict[str, CheckSummary]:
        """A `CheckSummary` for each of `check_ids`, read incrementally from the database on each call.

        First one row of aggregates that changes whenever a summary may have changed, whichever process
        wrote: the row count and total of `run_counts` (each completed run bumps its check's count), the
        `running` runs (by index) and the skipped slots (never deleted); and how many of the runs shown last
        time (newest completed runs, last successes) still exist (by primary key): pruning deletes runs
        without changing any count.  When nothing changed, the previous summaries are returned (the same
        objects).  Otherwise the counts, running runs and skipped slots are read again, and the newest
        completed run and last success (index seeks) only of the checks whose counts changed (of every check
        after a deletion); a completed run's row never changes, so it is read once.  A summary whose content
        did not change is the same object as the previous call's (the metrics reuse what they rendered)."""
        if not check_ids:
            return {}
        with self._summaries_lock, self._read() as conn:
            # Read before what they guard: a write committed in between shows at the next call.
            marker = tuple(conn.execute(_MARKER).one())
            shown = self._shown
            existing = 0
            if shown:
                ids: Any = shown if conn.dialect.name == "postgresql" else "[" + ",".join(map(_jstr, shown)) + "]"
                existing = conn.exec_driver_sql(_EXISTING[conn.dialect.name], (ids,)).scalar_one()
            if existing != len(shown):  # pruned: every newest run and last success again
                self._picked.clear()
                self._shown = []
            old = self._marker
            if marker != old:
                if old is None or marker[:2] != old[:2]:
                    outcomes: dict[str, dict[str, int]] = {}
                    for check_id, outcome, n in conn.execute(_COUNTS):
                        outcomes.setdefault(check_id, {})[outcome] = n
                    self._outcomes = outcomes
                self._running = {check_id: n for check_id, n in conn.execute(_RUNNING)}
                if old is None or marker[3] != old[3]:
                    self._skipped = {check_id: n for check_id, n in conn.execute(_SKIPPED)}
                self._marker = marker
            stale = [check_id for check_id in dict.fromkeys(check_ids) if (n := self._outcomes.get(check_id))
                     and ((p := self._picked.get(check_id)) is None or p[0] != n)]
            if stale:
                self._pick(conn, stale)
            out: dict[str, CheckSummary] = {}
            for check_id in check_ids:
                counts = self._outcomes.get(check_id, {})
                picked = self._picked.get(check_id) if counts else None
                latest, success = (picked[1], picked[2]) if picked is not None else (None, None)
                running, skipped = self._running.get(check_id, 0), self._skipped.get(check_id, 0)
                prev = self._summaries.get(check_id)
                if (prev is None or prev.latest is not latest or prev.last_success_at != success
                        or prev.outcomes != counts or prev.running != running or prev.skipped != skipped):
                    prev = self._summaries[check_id] = CheckSummary(check_id, latest, success, counts, running,
                                                                    skipped)
                out[check_id] = prev
        return out

    def _pick(self, conn: Connection, check_ids: list[str]) -> None:
        """The newest completed run and the last success of `check_ids` (checks with completed runs), into
        `_picked`; the full rows only of runs not read before."""
        known = {p[1].id: p[1] for p in self._picked.values() if p[1] is not None}
        picks: list[tuple[str, str | None]] = []
        for chunk in _chunks(check_ids, 500):
            picks.extend((c, i) for c, i in conn.execute(_PICKS, {"ids": chunk}))
        unread = [run_id for _, run_id in picks if run_id is not None and run_id not in known]
        for chunk in _chunks(unread, 500):
            for mapping in conn.execute(sa.select(runs_t).where(runs_t.c.id.in_(chunk))).mappings():
                known[mapping["id"]] = RunRow.from_mapping(mapping)
        latest = {check_id: known.get(run_id) if run_id else None for check_id, run_id in picks}
        successes: dict[str, tuple[str | None, datetime | None]] = {
            check_id: (row.id, row.finished_at) for check_id, row in latest.items() if row is not None and row.passed}
        for chunk in _chunks([check_id for check_id in latest if check_id not in successes], 500):
            for check_id, success_id, success in conn.execute(_SUCCESSES, {"ids": chunk}):
                # SQLite returns the scalar subquery's value as text
                successes[check_id] = (success_id, _as_utc(success, conn.dialect) if success is not None else None)
        for check_id, row in latest.items():
            success_id, success = successes.get(check_id, (None, None))
            self._picked[check_id] = (self._outcomes.get(check_id, {}), row, success, success_id)
        self._shown = list({i: None for p in self._picked.values()
                            for i in (p[1].id if p[1] is not None else None, p[3]) if i is not None})

    def record_skipped(self, check_id: str, scheduled_for: datetime | float, reason: str) -> bool:
        """Record a schedule slot that was not run (`overlap`).  False when that slot is already recorded
        (skipped before, by this or another process)."""
        if isinstance(scheduled_for, int | float):
            scheduled_for = to_datetime(scheduled_for)
        values = {"check_id": check_id, "scheduled_for": scheduled_for, "reason": reason,
                  "recorded_at": self._now(), "host": storable(self.host), "pid": self.pid}
        try:
            with self._write() as conn:
                conn.execute(skipped_t.insert(), values)
        except sa.exc.IntegrityError:
            return False
        return True

    def skipped_slots(self, check_id: str, limit: int = 50) -> list[tuple[datetime, str]]:
        """The skipped slots of a check, newest first: (slot, reason)."""
        stmt = (sa.select(skipped_t.c.scheduled_for, skipped_t.c.reason).where(skipped_t.c.check_id == check_id)
                .order_by(skipped_t.c.scheduled_for.desc()).limit(limit))
        with self._read() as conn:
            return [(slot, reason) for slot, reason in conn.execute(stmt)]

    def last_slot(self, check_id: str) -> datetime | None:
        """The newest schedule slot of a check that was run or skipped (by any process), None if none."""
        ran = sa.select(sa.func.max(runs_t.c.scheduled_for)).where(runs_t.c.check_id == check_id).scalar_subquery()
        skip = sa.select(sa.func.max(skipped_t.c.scheduled_for)).where(
            skipped_t.c.check_id == check_id).scalar_subquery()
        with self._read() as conn:
            found = conn.execute(sa.select(ran, skip)).one()
        stamps = [_as_utc(v, conn.dialect) for v in found if v is not None]
        return max(stamps) if stamps else None

    def rebuild_run_counts(self) -> None:
        """Recount `run_counts` from the runs (after rows were written outside `finish_run`, as a
        benchmark's pre-filled history is)."""
        with self._write() as conn:
            conn.execute(counts_t.delete())
            conn.execute(counts_t.insert().from_select(
                ["check_id", "outcome", "runs"],
                sa.select(runs_t.c.check_id, runs_t.c.outcome, sa.func.count())
                .where(runs_t.c.outcome.is_not(None)).group_by(runs_t.c.check_id, runs_t.c.outcome)))

    def ping(self) -> None:
        """One trivial query: raises HistoryError when the database cannot be reached."""
        with self._read() as conn:
            conn.execute(sa.text("SELECT 1"))

    def check_ids(self) -> list[str]:
        with self._read() as conn:
            return list(conn.execute(sa.select(runs_t.c.check_id).distinct().order_by(runs_t.c.check_id)).scalars())

    def findings(self, run_id: str) -> list[Finding]:
        """The findings of a run, in the order the run reported them."""
        stmt = sa.select(findings_t).where(findings_t.c.run_id == run_id).order_by(findings_t.c.seq)
        with self._read() as conn:
            return [
                Finding(FindingKind(r.kind), r.path, r.expected, r.actual, Severity(r.severity), r.detail)
                for r in conn.execute(stmt)
            ]

    def block_digests(self, check_id: str, paths: Iterable[str]) -> dict[str, str]:
        """The recorded block digests (compact JSON, reversib.challenge) of some entries of a check; entries
        without any are left out.  For the few entries a run challenges: one query per 500 paths."""
        e = entries_t.c
        out: dict[str, str] = {}
        for chunk in _chunks((storable(p) for p in paths), 500):
            stmt = sa.select(e.path, e.blocks).where(e.check_id == check_id, e.path.in_(chunk), e.blocks.is_not(None))
            with self._read() as conn:
                out.update({path: blocks for path, blocks in conn.execute(stmt)})
        return out

    def entry_states(self, check_id: str) -> Iterator[EntryRecord]:
        """The entry states of a check in path order (code point order), read in pages: no connection
        or read transaction is held between pages."""
        e = entries_t.c
        after: str | None = None
        while True:
            stmt = sa.select(e.path, e.size, e.digests, e.tier, e.verified_at).where(e.check_id == check_id)
            if after is not None:
                stmt = stmt.where(e.path > after)
            with self._read() as conn:
                page = conn.execute(stmt.order_by(e.path).limit(BATCH_SIZE)).all()
            for path, size, digests, tier, verified_at in page:
                yield EntryRecord(path, size, digests, tier, verified_at.timestamp())
            if len(page) < BATCH_SIZE:
                return
            after = page[-1][0]


# The evidence chain's tables share this metadata; imported last (it imports this module).
from reversib import leases as _leases  # noqa: E402  (run_shards: several replicas, docs/scale.md)
from reversib.evidence import chain as _chain  # noqa: E402
