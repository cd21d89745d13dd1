"""MySQL/MariaDB dumps (mysqldump / mariadb-dump plain SQL): the restore level.

The `mysql`/`mariadb` client runs with a private defaults file (0600, in a 0700 temporary folder:
the password is never on a command line), `--binary-mode` (client commands other than DELIMITER
are not parsed), `--sandbox` when the client has it, `--local-infile=0`, on the scanned dump.  The
restore user must hold no global privilege but CREATE USER and no privilege outside the
`reversib\\_restore\\_%` databases.  With CREATE USER and GRANT OPTION there, it creates for each run
a user `reversib_<first 23 hex digits of the run id>` (32 characters: MySQL's limit) with a random
password, granted the run's scratch database only, which restores and counts: a dump naming another
database (`other.t`, another run's scratch database) cannot reach it.  Without them the restore user
restores itself, with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from reversib.config import DumpConfig, DumpRestoreConfig
from reversib.dumps import safety
from reversib.dumps.base import Structure, clean_env, find_tool, private_dir, run_tool, unverifiable
from reversib.dumps.detect import decoded
from reversib.dumps.expectations import (
    Checked,
    QueryError,
    check_expectations,
    restore_timed_out,
    restored,
    shown_rows,
)
from reversib.dumps.postgres import RestoreReport, _Counted
from reversib.dumps.scratch import SCRATCH_RE, Target, run_is_dead, scratch_name
from reversib.model import Finding, FindingKind
from reversib.sources.base import CancelToken, Source

if TYPE_CHECKING:
    from reversib.history import History

log = logging.getLogger("reversib.dumps")

_SCRATCH_GRANT = re.compile(r"^GRANT .* ON `reversib\\*_restore\\*_[^`]*`\.\* TO ", re.I)
_USAGE_ONLY = re.compile(r"^GRANT USAGE ON \*\.\* TO ", re.I)
_CREATE_USER_ONLY = re.compile(r"^GRANT CREATE USER ON \*\.\* TO ", re.I)
MAX_USER_CONNECTIONS = 8


class MysqlError(Exception):
    pass


class _Client:
    def __init__(self, target: Target, folder: Path, cancel: CancelToken, file: str = "client.cnf"):
        self.target = target
        self.cancel = cancel
        self.exe = find_tool("mariadb", "mysql")
        self.defaults = folder / file
        lines = ["[client]", f"host={target.host}", f"port={target.port}", f"user={target.user}",
                 "protocol=TCP", "connect-timeout=15"]
        if target.password is not None:
            lines.append(f"password={target.password}")
        self.defaults.touch(0o600)
        self.defaults.write_text("\n".join(lines) + "\n")
        helptext = subprocess.run([self.exe, "--no-defaults", "--help"], capture_output=True, text=True,
                                  env=clean_env({})).stdout
        self.sandbox = "--sandbox" in helptext

    def argv(self, database: str | None, restore: bool = False) -> list[str]:
        argv = [self.exe, f"--defaults-file={self.defaults}", "--batch", "--skip-column-names", "--local-infile=0"]
        if restore:
            argv.append("--binary-mode")
        if self.sandbox:
            argv.append("--sandbox")
        if database:
            argv.append(f"--database={database}")
        return argv

    def query(self, sql: str, database: str | None = None, timeout: float = 120) -> list[str]:
        res = run_tool(self.argv(database), env=clean_env({}), cancel=self.cancel, timeout=timeout,
                       stdin=[sql.encode()])
        if res.returncode != 0 or res.timed_out:
            raise MysqlError(res.error_lines())
        return res.stdout.decode("utf-8", "replace").splitlines()


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def run_user(run_id: str) -> str:
    """The per-run user of `run_id`: 32 characters (MySQL 8's limit on user names)."""
    return "reversib_" + scratch_name(run_id)[len("reversib_restore_"):][:23]


def _grant_name(name: str) -> str:
    """A database name in a GRANT, where `_` and `%` are wildcards: escaped, so that it names this one only."""
    return _ident(name.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%"))


def native_hash(password: str) -> str:
    """The mysql_native_password hash of `password` (`*` + SHA1(SHA1(password)) in upper-case hex)."""
    return "*" + hashlib.sha1(hashlib.sha1(password.encode()).digest()).hexdigest().upper()


def _create_run_user(client: _Client, name: str, account: str, folder: Path, cancel: CancelToken,
                     user: str, version: str = "") -> _Client:
    """A user for this run only, granted its scratch database `name` only; a client logged in as it.  On
    MariaDB the password is sent as its hash (MariaDB's general log, unlike MySQL 8's, shows a `CREATE USER
    ... IDENTIFIED BY` in clear)."""
    password = secrets.token_urlsafe(32)
    secret = (f"PASSWORD {_literal(native_hash(password))}" if "MariaDB" in version else _literal(password))
    try:
        client.query(f"DROP USER IF EXISTS {account};\nCREATE USER {account} IDENTIFIED BY {secret} "
                     f"WITH MAX_USER_CONNECTIONS {MAX_USER_CONNECTIONS};\n"
                     f"GRANT ALL PRIVILEGES ON {_grant_name(name)}.* TO {account};\n")
    except MysqlError as exc:
        said = str(exc).replace(password, "[password]").replace(native_hash(password), "[hash]")
        raise unverifiable(f"cannot create the restore user of this run on {client.target.describe()}: "
                           f"{said}") from None
    return _Client(replace(client.target, user=user, password=password), folder, cancel, file="run.cnf")


def restore(source: Source, path: str, compression: str, dump: DumpConfig, target: Target, structure: Structure,
            run_id: str, history: History, cancel: CancelToken) -> RestoreReport:
    cfg = dump.restore
    assert cfg is not None
    out = RestoreReport()
    with private_dir() as folder:
        client = _Client(target, folder, cancel)
        try:
            rows = client.query("SELECT CONCAT('V|', VERSION());\nSHOW GRANTS;\n"
                                "SELECT CONCAT('D|', SCHEMA_NAME) FROM information_schema.SCHEMATA "
                                "WHERE SCHEMA_NAME LIKE 'reversib\\\\_restore\\\\_%';\n"
                                "SELECT CONCAT('H|', SUBSTRING_INDEX(CURRENT_USER(), '@', -1));\n")
        except MysqlError as exc:
            raise unverifiable(f"restore server {target.describe()} unreachable: {exc}",
                               "a reachable restore server") from exc
        version = next((r[2:] for r in rows if r.startswith("V|")), "")
        grants = [r for r in rows if r.upper().startswith("GRANT ")]
        beyond = [g for g in grants
                  if not (_USAGE_ONLY.match(g) or _CREATE_USER_ONLY.match(g) or _SCRATCH_GRANT.match(g))]
        if beyond:
            raise unverifiable(f"restore user {target.user!r} holds privileges beyond the reversib\\_restore\\_% "
                               f"databases ({len(beyond)} grants): a dump is untrusted input; grant only "
                               "CREATE USER and ALL ON `reversib\\_restore\\_%`.* WITH GRANT OPTION (docs/dumps.md)",
                               "a restore user limited to the scratch databases")
        isolate = (any(_CREATE_USER_ONLY.match(g) for g in grants)
                   and any(_SCRATCH_GRANT.match(g) and g.upper().endswith(" WITH GRANT OPTION") for g in grants))
        host = next((r[2:] for r in rows if r.startswith("H|")), "%")

        def account(of_run: str) -> str:
            return f"{_literal(run_user(of_run))}@{_literal(host)}"

        for name in (r[2:] for r in rows if r.startswith("D|")):
            m = SCRATCH_RE.match(name)
            if m and run_is_dead(history, m.group(1)) and _drop(client, name, account(m.group(1)) if isolate else None):
                log.warning("removed the scratch database %s (and its user) left by run %s, which is no longer alive",
                            name, m.group(1))
        name = scratch_name(run_id)
        try:
            client.query(f"CREATE DATABASE {_ident(name)};")
        except MysqlError as exc:
            raise unverifiable(f"cannot create the scratch database {name} on {target.describe()}: {exc}") from exc
        try:
            if isolate:
                restorer = _create_run_user(client, name, account(run_id), folder, cancel, run_user(run_id), version)
            else:
                log.warning("restore user %r lacks CREATE USER (or GRANT OPTION on the scratch databases): the dump "
                            "is restored as that user, which reaches every scratch database on the server "
                            "(docs/dumps.md)", target.user)
                restorer = client
            feed = _Counted(safety.filter_lines(safety.lines_of(decoded(source, path, compression)), "mysql"))
            t0 = time.monotonic()
            res = run_tool(restorer.argv(name, restore=True), env=clean_env({}), cancel=cancel,
                           timeout=cfg.max_restore_seconds, stdin=feed, keep_stdout=False)
            out.seconds = time.monotonic() - t0
            out.bytes = feed.n
            if res.timed_out:
                out.findings.append(restore_timed_out(path, cfg.max_restore_seconds, out.seconds))
                return out
            if res.returncode != 0:
                msg = res.error_lines()
                if "MariaDB" in version and ("0900" in msg or "Unknown collation" in msg):
                    msg += (f" -- a MySQL 8 dump restored into {version}: a dialect difference "
                            "(collation utf8mb4_0900_*), not necessarily a broken dump")
                elif "MariaDB" not in version and "M!" in msg:
                    msg += f" -- a MariaDB dump restored into MySQL {version}: a dialect difference"
                out.findings.append(Finding(FindingKind.RESTORE_FAILED, path, expected="a restore without error",
                                            actual=msg[:1000]))
                return out
            checked = _expectations(restorer, dump, cfg, name, path, version, out.findings)
            out.findings.append(restored(path, out.seconds, out.bytes, checked, "mysql"))
            return out
        finally:
            client.cancel = CancelToken()  # the cleanup is never cancelled
            _drop(client, name, account(run_id) if isolate else None)


def _drop(client: _Client, name: str, account: str | None) -> bool:
    """Drop the run's user (`account`, when there is one), then its scratch database: a database left by a
    failure is what the removal at the next start finds, and with it the user's name."""
    assert SCRATCH_RE.match(name)
    try:
        if account is not None:
            client.query(f"DROP USER IF EXISTS {account};", timeout=60)
        client.query(f"DROP DATABASE IF EXISTS {_ident(name)};", timeout=60)
    except MysqlError as exc:
        log.error("could not drop the scratch database %s (or its user) on %s: %s", name, client.target.describe(),
                  exc)
        return False
    return True


def _expectations(client: _Client, dump: DumpConfig, cfg: DumpRestoreConfig, name: str, path: str, version: str,
                  findings: list[Finding]) -> Checked:
    seconds = max(1, int(cfg.statement_timeout))
    limit = (f"SET SESSION max_statement_time = {seconds};" if "MariaDB" in version
             else f"SET SESSION max_execution_time = {seconds * 1000};")
    prefix = f"{limit}\nSET SESSION TRANSACTION READ ONLY;\nSTART TRANSACTION READ ONLY;\n"

    def query(sql: str) -> list[str]:
        try:
            return client.query(f"{prefix}{sql};\nROLLBACK;\n", name, timeout=cfg.statement_timeout + 30)
        except MysqlError as exc:
            raise QueryError(str(exc), missing_table="doesn't exist" in str(exc)) from exc

    def count_rows(table: str) -> int:
        return int(query(f"SELECT COUNT(*) FROM {_ident(table.rsplit('.', 1)[-1])}")[0])

    def assertion(sql: str) -> tuple[bool, str]:
        rows = query(sql.strip().rstrip(";"))
        return rows == ["1"], shown_rows(rows)

    return check_expectations(dump, path, findings, count_rows=count_rows, assertion=assertion, dialect="mysql")
