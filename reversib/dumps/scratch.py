"""Scratch databases: the restore target (a server URL and a role, never a database), the scratch
database's life (created by reversib, dropped on success, failure or interruption), and the removal
at start of scratch databases left by runs that are no longer alive.

A scratch database is named `reversib_restore_<run id>`.  One is removed at start only when its run
is known to the history and is not running, or is `running` on this host in a process that no
longer exists (the rule of `History.reap_dead_runs`).  A run of another host, a live process, or a
run unknown to this history keeps its database.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from reversib.config import DumpRestoreConfig
from reversib.dumps.base import clean_env, find_tool, run_tool, unverifiable
from reversib.sources.base import Cancelled, CancelToken

if TYPE_CHECKING:
    from reversib.history import History

log = logging.getLogger("reversib.dumps")

PREFIX = "reversib_restore_"
SCRATCH_RE = re.compile(r"^reversib_restore_([0-9a-f]{32})$")
PG_MAINTENANCE = ("", "postgres", "template1")


@dataclass(frozen=True)
class Target:
    family: str  # "postgres" or "mysql"
    host: str
    port: int
    user: str
    password: str | None
    params: dict[str, str]

    def describe(self) -> str:
        return f"{self.family}://{self.user}@{self.host}:{self.port}"

    def pg_env(self, database: str, options: str = "") -> dict[str, str]:
        env = {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user, "PGDATABASE": database,
               "PGAPPNAME": "reversib", "PGCONNECT_TIMEOUT": "15"}
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        for key in ("sslmode", "sslrootcert", "sslcert", "sslkey"):
            if key in self.params:
                env["PG" + key.upper()] = self.params[key]
        if options:
            env["PGOPTIONS"] = options
        return clean_env(env)


def read_target(cfg: DumpRestoreConfig) -> str:
    if cfg.target_url_env:
        value = os.environ.get(cfg.target_url_env, "").strip()
        if not value:
            raise unverifiable(f"restore.target_url_env: environment variable {cfg.target_url_env} is not set")
        return value
    assert cfg.target_url_file is not None
    try:
        value = Path(cfg.target_url_file).read_text().strip()
    except OSError as exc:
        raise unverifiable(f"restore.target_url_file: cannot read {cfg.target_url_file}: {exc.strerror}") from exc
    if not value:
        raise unverifiable(f"restore.target_url_file: {cfg.target_url_file} is empty")
    return value


def parse_target(url: str) -> Target:
    """A server URL and role.  A URL naming a database other than the maintenance one is refused.
    Messages never contain the password."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0].lower()
    family = {"postgres": "postgres", "postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}.get(scheme)
    shown = f"{scheme}://{parts.hostname or ''}"
    if family is None:
        raise unverifiable(f"restore target {shown}: the scheme must be postgresql:// or mysql://")
    if not parts.username:
        raise unverifiable(f"restore target {shown}: the URL must name a role (postgresql://ROLE@HOST:PORT/)")
    database = unquote(parts.path.lstrip("/"))
    allowed = PG_MAINTENANCE if family == "postgres" else ("",)
    if database not in allowed:
        raise unverifiable(f"restore target {shown}: the URL names the database {database!r}; give a server and a "
                           "role only: reversib restores into a scratch database it creates")
    params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    default_port = 5432 if family == "postgres" else 3306
    return Target(family, parts.hostname or "127.0.0.1", parts.port or default_port, unquote(parts.username),
                  unquote(parts.password) if parts.password is not None else None, params)


def scratch_name(run_id: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{32}", run_id):
        raise ValueError(f"not a run id: {run_id!r}")
    return PREFIX + run_id


def run_is_dead(history: History, run_id: str) -> bool:
    """True when the scratch database of `run_id` can be removed (see the module docstring)."""
    from reversib import history as hist

    run = history.get_run(run_id)
    if run is None:
        return False  # not ours to judge: another history, another reversib
    if run.state != "running":
        return True
    if run.host != hist.storable(history.host):
        return False
    if run.pid == os.getpid():
        return run_id not in hist._RUNS_OF_THIS_PROCESS
    return not hist._pid_alive(run.pid)


# ------------------------------------------------------------------------------------- PostgreSQL


def psql(target: Target, sql: str, cancel: CancelToken, *, database: str = "postgres", options: str = "",
         timeout: float = 120) -> list[str]:
    """Run `sql` (from stdin, never argv) with psql; the result rows (unaligned, tuples only)."""
    res = run_tool([find_tool("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"],
                   env=target.pg_env(database, options), cancel=cancel, timeout=timeout,
                   stdin=[sql.encode()])
    if res.returncode != 0 or res.timed_out:
        raise PsqlError(res.error_lines())
    return res.stdout.decode("utf-8", "replace").splitlines()


class PsqlError(Exception):
    pass


def pg_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/5803): sent in place of the
    password in `CREATE ROLE ... PASSWORD`, so that neither the wire nor a server log sees the cleartext.
    `password` is ASCII (no SASLprep needed)."""
    assert password.isascii()
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return (f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
            f"${b64(stored_key).decode()}:{b64(server_key).decode()}")


@dataclass
class PgServer:
    """What one query learnt about the restore server before a restore."""

    scratch: list[str]  # reversib_restore_* databases on the server
    data_directory: str | None  # when the role may read it
    roles: list[str] = field(default_factory=list)  # reversib_restore_<run id> roles on the server
    restorer: Target | None = None  # with `create`: who restores into it (the per-run role, or the target's)


_PREFLIGHT = """SELECT 'R|' || rolsuper || '|' || rolcreatedb || '|'
  || pg_has_role(current_user, 'pg_execute_server_program', 'MEMBER') || '|'
  || pg_has_role(current_user, 'pg_write_server_files', 'MEMBER') || '|'
  || pg_has_role(current_user, 'pg_read_server_files', 'MEMBER') || '|'
  || (rolcreaterole AND rolinherit) FROM pg_roles WHERE rolname = current_user;
SELECT 'D|' || datname FROM pg_database WHERE datname LIKE 'reversib\\_restore\\_%' ORDER BY datname;
SELECT 'U|' || rolname FROM pg_roles WHERE rolname LIKE 'reversib\\_restore\\_%' ORDER BY rolname;
SELECT 'S|' || setting FROM pg_settings WHERE name = 'data_directory';
"""

_PREFLIGHT_GATE = """SELECT NOT (rolsuper OR pg_has_role(current_user, 'pg_execute_server_program', 'MEMBER')
  OR pg_has_role(current_user, 'pg_write_server_files', 'MEMBER')
  OR pg_has_role(current_user, 'pg_read_server_files', 'MEMBER')) AND rolcreatedb AS reversib_may_create,
  rolcreaterole AND rolinherit AS reversib_isolate
  FROM pg_roles WHERE rolname = current_user \\gset
"""

# The per-run role: it may log in (with a password drawn for this run, sent as a SCRAM verifier), and
# nothing else; it owns its scratch database only.  It is a member of no role but the implicit
# pg_database_owner of that database: INHERIT, so that it may create in its `public` schema (PG 15+).
# The target role becomes a member of it (needed to create a database OWNER it, and to drop that
# database).  Every scratch database is closed to PUBLIC:
# another run's role cannot connect to it.
_CREATE = """\\if :reversib_may_create
\\if :reversib_isolate
CREATE ROLE {ident} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT NOREPLICATION NOBYPASSRLS
  CONNECTION LIMIT {limit} PASSWORD '{verifier}';
GRANT {ident} TO CURRENT_USER;
CREATE DATABASE {ident} OWNER {ident} TEMPLATE template0;
SELECT 'I|' || 1;
\\else
CREATE DATABASE {ident} TEMPLATE template0;
\\endif
REVOKE ALL ON DATABASE {ident} FROM PUBLIC;
SELECT 'C|' || 1;
\\endif
"""
CONNECTION_LIMIT = 8  # the restore tool and up to 4 row counts at once


def pg_preflight(target: Target, cancel: CancelToken, create: str | None = None) -> PgServer:
    """One round trip: the restore role must not be a superuser nor able to run programs or touch
    server files, and needs CREATEDB; also the scratch databases and per-run roles present and the data
    directory.  With `create`, the same psql session then creates that scratch database -- only when the
    role passed (psql's `\\if` on the role's attributes; checked again here) -- and, when the role also
    has CREATEROLE (and INHERIT), a per-run role of the same name that owns it and restores into it (the
    server's `restorer`).  Without CREATEROLE the target role restores itself, with a warning."""
    sql = _PREFLIGHT
    password = verifier = None
    if create is not None:
        assert SCRATCH_RE.match(create)
        password = secrets.token_urlsafe(32)
        verifier = scram_verifier(password)
        sql = _PREFLIGHT_GATE + _PREFLIGHT + _CREATE.format(ident=pg_ident(create), limit=CONNECTION_LIMIT,
                                                            verifier=verifier)
    try:
        rows = psql(target, sql, cancel)
    except Cancelled:
        # the run was cancelled mid-way: the database may exist (or still be being created: then the
        # removal at the next start drops it, its run being interrupted)
        if create is not None:
            pg_drop(target, create)
        raise
    except PsqlError as exc:
        if create is not None:  # a creation that failed half-way (the role created, not the database)
            pg_drop(target, create, quiet=True)
        message = str(exc).replace(verifier, "[verifier]") if verifier else str(exc)
        raise unverifiable(f"restore server {target.describe()} unreachable or refusing: {message}",
                           "a reachable restore server") from None
    created = create is not None and "C|1" in rows
    try:
        server = _judge(target, rows)
    except BaseException:
        if created:
            assert create is not None
            pg_drop(target, create)
        raise
    if create is not None and not created:
        raise unverifiable(f"cannot create the scratch database {create} on {target.describe()}")
    if create is not None:
        assert password is not None
        if "I|1" in rows:
            server.restorer = replace(target, user=create, password=password)
        else:
            log.warning("restore role %r lacks CREATEROLE (or INHERIT): the dump is restored as that role, which "
                        "reaches every scratch database on the server; give it CREATEROLE to restore as a "
                        "per-run role (docs/dumps.md)", target.user)
            server.restorer = target
    return server


def _judge(target: Target, rows: list[str]) -> PgServer:
    role = [r.split("|")[1:] for r in rows if r.startswith("R|")]
    if len(role) != 1 or len(role[0]) != 6:
        raise unverifiable(f"restore server {target.describe()}: cannot read the role's attributes")
    superuser, createdb, program, write, read, _isolate = (f == "true" for f in role[0])
    if superuser or program or write or read:
        why = "a superuser" if superuser else "a member of pg_execute_server_program/pg_*_server_files"
        raise unverifiable(f"restore role {target.user!r} is {why}: a dump is untrusted input; restore as a "
                           "role with only LOGIN, CREATEDB and CREATEROLE (docs/dumps.md)",
                           "a restore role that is not a superuser")
    if not createdb:
        raise unverifiable(f"restore role {target.user!r} lacks CREATEDB: reversib creates its scratch database",
                           "a restore role with CREATEDB")
    data_dir = [r[2:] for r in rows if r.startswith("S|")]
    return PgServer([r[2:] for r in rows if r.startswith("D|")], data_dir[0] if data_dir else None,
                    [r[2:] for r in rows if r.startswith("U|")])


# The target role takes back its membership of the per-run role first: on a server where a role still
# administers itself (releases before 16; recent minor releases refuse it), the per-run role could
# revoke that membership, which the drop of its database needs.  The role can no longer log in from
# then on, and the database is no template any more: its owner (the dump) may have made it one, which
# PostgreSQL refuses to drop.
_DROP = """SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{name}') AS reversib_role,
  EXISTS (SELECT 1 FROM pg_database WHERE datname = '{name}') AS reversib_db \\gset
\\if :reversib_role
GRANT {ident} TO CURRENT_USER;
ALTER ROLE {ident} NOLOGIN;
\\endif
\\if :reversib_db
ALTER DATABASE {ident} IS_TEMPLATE false;
\\endif
DROP DATABASE IF EXISTS {ident} WITH (FORCE);
\\if :reversib_role
DROP ROLE {ident};
\\endif
"""


def pg_drop(target: Target, name: str, quiet: bool = False) -> bool:
    """Drop a scratch database, then its per-run role when there is one (never cancelled: this is the
    cleanup).  False when it failed (logged as an error, unless `quiet`)."""
    assert SCRATCH_RE.match(name)
    try:
        psql(target, _DROP.format(name=name, ident=pg_ident(name)), CancelToken(), timeout=60)
    except PsqlError as exc:
        (log.debug if quiet else log.error)("could not drop the scratch database %s (or its role) on %s: %s",
                                            name, target.describe(), exc)
        return False
    return True


def pg_remove_dead(target: Target, history: History, names: Iterable[str]) -> list[str]:
    """Drop the scratch databases and per-run roles (named in `names`) whose run is no longer alive;
    their names."""
    removed = []
    for name in sorted({n.strip() for n in names}):
        m = SCRATCH_RE.match(name)
        if m and run_is_dead(history, m.group(1)) and pg_drop(target, name):
            log.warning("removed the scratch database %s (and its role) left by run %s, which is no longer alive",
                        name, m.group(1))
            removed.append(name)
    return removed


def host_is_local(host: str) -> bool:
    if host.startswith("/") or host in ("localhost", "127.0.0.1", "::1"):
        return True
    try:
        return socket.gethostbyname(host) in ("127.0.0.1", "127.0.1.1")
    except OSError:
        return False
