"""MySQL/MariaDB dumps (mysqldump / mariadb-dump plain SQL): the restore level.

The `mysql`/`mariadb` client runs with a private defaults file (0600, in a 0700 temporary folder:
the password is never on a command line), `--binary-mode` (client commands other than DELIMITER
are not parsed), `--sandbox` when the client has it, `--local-infile=0`, on the scanned dump.  The
restore user must hold no global privilege and no privilege outside the `reversib\\_restore\\_%`
databases: a dump naming another database (`other.t`) then cannot reach it.
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
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


class MysqlError(Exception):
    pass


class _Client:
    def __init__(self, target: Target, folder: Path, cancel: CancelToken):
        self.target = target
        self.cancel = cancel
        self.exe = find_tool("mariadb", "mysql")
        self.defaults = folder / "client.cnf"
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
                                "WHERE SCHEMA_NAME LIKE 'reversib\\\\_restore\\\\_%';\n")
        except MysqlError as exc:
            raise unverifiable(f"restore server {target.describe()} unreachable: {exc}",
                               "a reachable restore server") from exc
        version = next((r[2:] for r in rows if r.startswith("V|")), "")
        grants = [r for r in rows if r.upper().startswith("GRANT ")]
        beyond = [g for g in grants if not (_USAGE_ONLY.match(g) or _SCRATCH_GRANT.match(g))]
        if beyond:
            raise unverifiable(f"restore user {target.user!r} holds privileges beyond the reversib\\_restore\\_% "
                               f"databases ({len(beyond)} grants): a dump is untrusted input; grant only "
                               "ALL ON `reversib\\_restore\\_%`.* (docs/dumps.md)",
                               "a restore user limited to the scratch databases")
        for name in (r[2:] for r in rows if r.startswith("D|")):
            m = SCRATCH_RE.match(name)
            if m and run_is_dead(history, m.group(1)) and _drop(client, name):
                log.warning("removed the scratch database %s left by run %s, which is no longer alive", name,
                            m.group(1))
        name = scratch_name(run_id)
        try:
            client.query(f"CREATE DATABASE {_ident(name)};")
        except MysqlError as exc:
            raise unverifiable(f"cannot create the scratch database {name} on {target.describe()}: {exc}") from exc
        try:
            feed = _Counted(safety.filter_lines(safety.lines_of(decoded(source, path, compression)), "mysql"))
            t0 = time.monotonic()
            res = run_tool(client.argv(name, restore=True), env=clean_env({}), cancel=cancel,
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
            checked = _expectations(client, dump, cfg, name, path, version, out.findings)
            out.findings.append(restored(path, out.seconds, out.bytes, checked, "mysql"))
            return out
        finally:
            client.cancel = CancelToken()  # the cleanup is never cancelled
            _drop(client, name)


def _drop(client: _Client, name: str) -> bool:
    assert SCRATCH_RE.match(name)
    try:
        client.query(f"DROP DATABASE IF EXISTS {_ident(name)};", timeout=60)
    except MysqlError as exc:
        log.error("could not drop the scratch database %s on %s: %s", name, client.target.describe(), exc)
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
