"""The plain-SQL scanner: a dump is untrusted input that gets executed by `psql` or `mysql`.

It follows the client's lexical state (quotes, dollar quotes, comments, COPY data blocks) line by
line and refuses, naming the line:

* any client meta-command: PostgreSQL `\\!`, `\\connect`, `\\copy`, `\\o`, `\\set`, `\\i`... (only the
  `\\restrict`/`\\unrestrict` pair that pg_dump writes itself is allowed); MySQL `\\!`, `system`,
  `source`, `use`, `connect`, `tee`, `pager`... (only `DELIMITER`, which mysqldump writes, is allowed);
* statements that leave the scratch database: `CREATE`/`DROP`/`ALTER DATABASE`, `USE`, `COPY ...
  PROGRAM` and server-side-file `COPY`.

`filter_lines` is the same pass used while restoring: it also drops ownership and privilege statements
(`ALTER ... OWNER TO`, `GRANT`, `REVOKE`, `SET SESSION AUTHORIZATION`), which is what `pg_restore
--no-owner --no-privileges` does for the archive formats.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

_PG_SPECIAL = re.compile(r"--|/\*|'|\"|\$|\\|;")
_MY_SPECIAL = re.compile(r"--[ \t\r\n]|#|/\*|'|\"|`|\\|;")
_DOLLAR = re.compile(r"\$([A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*)?\$")
_PG_ALLOWED_META = re.compile(r"^\\(?:restrict|unrestrict) [A-Za-z0-9]+\s*$")
_MY_COMMANDS = {"system", "use", "source", "connect", "tee", "notee", "pager", "nopager", "edit", "print", "go",
                "ego", "rehash", "status", "warnings", "nowarning", "prompt", "charset", "quit", "exit", "help",
                "clear", "resetconnection", "query_attributes", "ssl_session_data_print", "sandbox"}
_CREATE_TABLE = re.compile(
    r"^CREATE\s+(?:(?:GLOBAL\s+|LOCAL\s+)?(?:TEMP|TEMPORARY|UNLOGGED)\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"((?:\"[^\"]*\"|`[^`]*`|[^\s(\"`]+)(?:\.(?:\"[^\"]*\"|`[^`]*`|[^\s(\"`.]+))?)", re.I)
_LEAVES = re.compile(r"^(?:CREATE|DROP|ALTER)\s+(?:DATABASE|SCHEMA\s+IF\s+NOT\s+EXISTS\s+`)|^USE\b", re.I)
_ROLE = re.compile(r"^(?:(?:CREATE|ALTER|DROP|RENAME)\s+(?:ROLE|USER|GROUP)\b|SET\s+PASSWORD\b)", re.I)
_SCS_OFF = re.compile(r"^SET\s+(?:SESSION\s+|LOCAL\s+)?standard_conforming_strings\s*(?:=|TO)\s*'?(?:off|false|no|0)\b",
                      re.I)
_QUOTED_NAME = re.compile(r'"(?:[^"]|"")*"')


def _ident(c: str) -> bool:
    """A character of a name as psql lexes it (bytes >= 0x80 -- read here as Latin-1 -- and `$` included)."""
    return c.isalnum() or c in "_$" or c >= "\x80"


_COMMENTS = {"postgres": re.compile(r"/\*.*?\*/", re.S), "mysql": re.compile(r"/\*(?![!M]).*?\*/", re.S)}
_DROPPED = re.compile(r"^(?:ALTER\s.*\sOWNER\s+TO\s|GRANT\s|REVOKE\s|SET\s+SESSION\s+AUTHORIZATION\b|"
                      r"ALTER\s+DEFAULT\s+PRIVILEGES\b)", re.I | re.S)
STMT_KEEP = 4096
_MARIADB_SANDBOX = "/*M!999999\\- enable the sandbox mode */"
_QUOTE_END = {
    ("'", True): re.compile(r"(?:[^'\\]|\\.|'')*+'", re.S),
    ("'", False): re.compile(r"(?:[^']|'')*+'", re.S),
    ('"', True): re.compile(r'(?:[^"\\]|\\.|"")*+"', re.S),
    ('"', False): re.compile(r'(?:[^"]|"")*+"', re.S),
    ("`", False): re.compile(r"(?:[^`]|``)*+`", re.S),
}


@dataclass
class Refusal:
    line: int
    reason: str
    text: str


@dataclass
class ScanResult:
    refusal: Refusal | None = None
    tables: set[str] = field(default_factory=set)
    header: bool = False  # the tool's header comment was seen
    footer: bool = False  # ... and its completion footer
    copy_blocks: int = 0
    lines: int = 0
    open_statement: bool = False  # the dump ended inside a statement, quote or COPY block


def table_name(raw: str, dialect: str) -> str:
    parts = re.findall(r"\"((?:[^\"]|\"\")*)\"|`([^`]*)`|([^.\"`]+)", raw)
    names = [a.replace('""', '"') if a else b if b else c if dialect == "mysql" else c.lower()
             for a, b, c in parts]
    return ".".join(names)


class _Lexer:
    def __init__(self, dialect: str):
        self.dialect = dialect
        self.special = _PG_SPECIAL if dialect == "postgres" else _MY_SPECIAL
        self.quote: str | None = None  # ', ", ` or a $tag$
        self.escapes = dialect == "mysql"  # backslash escapes in the current '...' literal
        self.block = 0  # nested /* */ depth
        self.parens = 0  # ( ) depth of the statement: psql ends a statement at a `;` outside them only
        self.executable = False  # inside a MySQL /*! ... */ (its content runs)
        self.copy = False  # inside a COPY ... FROM stdin data block
        self.stmt: list[str] = []
        self.stmt_len = 0
        self.words = False  # the statement text holds more than white space
        self.stmts_this_group: list[str] = []
        self.delimiter = ";"
        self.result = ScanResult()

    def _code(self, text: str) -> None:
        """Text outside quotes and comments: counted for parentheses, kept for the statement's checks."""
        if text:
            self.parens = max(0, self.parens + text.count("(") - text.count(")"))
            self._add(text)

    def _add(self, text: str) -> None:
        if not self.words and text and not text.isspace():
            self.words = True  # the statement has begun (blank lines alone do not make one pending)
        if self.stmt_len < STMT_KEEP:
            self.stmt.append(text)
            self.stmt_len += len(text)

    @property
    def pending(self) -> bool:
        return self.words or self.quote is not None or self.block > 0

    def refuse(self, reason: str, line: str) -> None:
        if self.result.refusal is None:
            self.result.refusal = Refusal(self.result.lines, reason, line.strip()[:200])

    def line(self, line: str) -> None:
        self.result.lines += 1
        if "\x00" in line:  # psql ignores the rest of a line after a NUL: it would not read what is scanned here
            self.refuse("a NUL byte (the client would not read this line as scanned)", line)
            return
        if self.dialect == "mysql" and self.result.lines == 1 and line.strip() == _MARIADB_SANDBOX:
            return  # mariadb-dump's first line: switches a MariaDB client into its sandbox mode
        if self.copy:
            if line.rstrip("\r\n") == "\\.":
                self.copy = False
            return
        if not self.pending:
            stripped = line.strip()
            if self.dialect == "postgres":
                if stripped.startswith("-- PostgreSQL database dump"):
                    self.result.header = True
                    if stripped == "-- PostgreSQL database dump complete":
                        self.result.footer = True
            else:
                if stripped.startswith(("-- MySQL dump", "-- MariaDB dump")):
                    self.result.header = True
                elif stripped.startswith("-- Dump completed"):
                    self.result.footer = True
                word = stripped.split(None, 1)[0].lower() if stripped else ""
                if word == "delimiter":
                    parts = stripped.split()
                    if len(parts) == 2:
                        self.delimiter = parts[1]
                        return
                    self.refuse("a malformed DELIMITER command", line)
                    return
                if word.rstrip(";") in _MY_COMMANDS:
                    self.refuse(f"the mysql client command {word.rstrip(';')!r}", line)
                    return
        if self.dialect == "mysql" and self.delimiter != ";":
            self._mysql_custom_delimiter(line)
            return
        self._lex(line)

    def _mysql_custom_delimiter(self, line: str) -> None:
        # Routines and triggers between `DELIMITER ;;` and `DELIMITER ;`: a backslash outside a
        # literal is refused, the statement ends at the delimiter.
        self._lex(line.replace(self.delimiter, ";"))

    def _lex(self, line: str) -> None:
        i, n = 0, len(line)
        while i < n:
            if self.block:
                j = line.find("*/", i)
                k = line.find("/*", i) if self.dialect == "postgres" else -1
                if k != -1 and (j == -1 or k < j):
                    self.block += 1
                    i = k + 2
                    continue
                if j == -1:
                    return
                self.block -= 1
                i = j + 2
                continue
            if self.quote is not None:
                i = self._in_quote(line, i)
                continue
            m = self.special.search(line, i)
            if m is None:
                self._code(line[i:])
                return
            self._code(line[i:m.start()])
            tok = m.group()
            i = m.end()
            if tok.startswith("--") or tok == "#":
                self._add(" ")  # a comment separates words as a space does
                return  # a comment to the end of the line
            if tok == "/*":
                self._add(" ")
                if self.dialect == "mysql" and line.startswith(("!", "M!"), i):
                    self.executable = True  # /*!40101 ... */ runs: lex its content
                    i += 1 if line[i] == "!" else 2
                    while i < n and line[i].isdigit():
                        i += 1
                    continue
                self.block = 1
                continue
            if tok == "\\":
                self._meta(line, i - 1)
                return
            if tok == ";":
                if self.dialect == "postgres" and self.parens > 0:
                    self._add(";")  # inside parentheses: psql does not end the statement here
                    continue
                self._end_statement(line)
                continue
            if tok == "$":
                dm = _DOLLAR.match(line, i - 1)
                prev = line[i - 2] if i >= 2 else " "
                if dm and not _ident(prev):
                    self.quote = dm.group()
                    self._add("$?$")
                    i = dm.end()
                else:
                    self._add("$")
                continue
            # a quote
            if tok == "'":
                prev = line[i - 2] if i >= 2 else " "
                before = line[i - 3] if i >= 3 else " "
                self.escapes = self.dialect == "mysql" or (prev in "eE" and not _ident(before))
                self._add("'?'")
            self.quote = tok
            if tok in ('"', "`"):
                self._add(tok)
        if self.executable and "*/" in line:
            self.executable = False

    def _in_quote(self, line: str, i: int) -> int:
        q = self.quote
        assert q is not None
        if q.startswith("$"):
            j = line.find(q, i)
            if j == -1:
                return len(line)
            self.quote = None
            return j + len(q)
        m = _QUOTE_END[(q, self.escapes and q != "`")].match(line, i)
        if m is None:
            if q in ('"', "`"):
                self._add(line[i:])
            return len(line)
        if q in ('"', "`"):
            self._add(line[i:m.end()])
        self.quote = None
        return m.end()

    def _meta(self, line: str, at: int) -> None:
        if self.dialect == "postgres" and at == 0 and not self.pending and _PG_ALLOWED_META.match(line):
            return
        m = re.match(r"\\([A-Za-z]+|.?)", line[at:])
        name = m.group(1) if m else ""
        self.refuse(f"the client meta-command \\{name}", line)

    def _end_statement(self, line: str) -> None:
        text = " ".join("".join(self.stmt).split())
        self.stmt, self.stmt_len, self.parens, self.words = [], 0, 0, False
        if not text:
            return
        self.stmts_this_group.append(text)
        # Keywords are matched with the comments between them taken out (`CREATE/**/DATABASE`); MySQL's
        # `/*! ... */` and MariaDB's `/*M! ... */` are executed by the server: they stay.
        bare = " ".join(_COMMENTS[self.dialect].sub(" ", text).split())
        upper = bare.upper()
        if _LEAVES.match(bare) or (self.dialect == "mysql" and re.match(r"^CREATE\s+SCHEMA\b", upper)):
            self.refuse("a statement that leaves the scratch database", line)
        elif _ROLE.match(bare):
            self.refuse("a statement that changes a role or user (the restore's own, for later runs too)", line)
        elif self.dialect == "postgres" and _SCS_OFF.match(bare):
            self.refuse("standard_conforming_strings = off (changes how the client reads the lines that follow)",
                        line)
        elif self.dialect == "mysql" and re.match(r"^(?:PREPARE|EXECUTE|XA)\b", upper):
            self.refuse("dynamic SQL or an XA transaction (mysqldump writes neither)", line)
        elif self.dialect == "mysql" and "NO_BACKSLASH_ESCAPES" in upper:
            self.refuse("sql_mode NO_BACKSLASH_ESCAPES (changes how the client reads the lines that follow)", line)
        elif upper.startswith("COPY "):
            upper = _QUOTED_NAME.sub('"?"', upper)  # a quoted name is never a keyword ("FROM STDIN")
            if re.search(r"\bPROGRAM\b", upper):
                self.refuse("COPY ... PROGRAM (runs a shell command on the server)", line)
            elif re.search(r"\bFROM\s+STDIN\b", upper):
                self.copy = True
                self.result.copy_blocks += 1
            elif not re.search(r"\bTO\s+STDOUT\b", upper):
                self.refuse("COPY to or from a server-side file", line)
        elif self.dialect == "postgres" and re.match(r"^(?:LOAD|ALTER\s+SYSTEM)\b", upper):
            self.refuse("a statement that changes the server", line)
        elif self.dialect == "mysql" and re.search(r"\bINTO\s+(?:OUT|DUMP)FILE\b|\bLOAD\s+DATA\b|\bLOAD_FILE\s*\(",
                                                   upper):
            self.refuse("a statement that reads or writes a server-side file", line)
        m = _CREATE_TABLE.match(text)
        if m:
            self.result.tables.add(table_name(m.group(1), self.dialect))


def scan(lines: Iterable[bytes], dialect: str) -> ScanResult:
    """Scan a whole plain dump (an iterable of lines); stops at the first refusal."""
    lx = _Lexer(dialect)
    for raw in lines:
        lx.line(raw.decode("latin-1"))
        lx.stmts_this_group.clear()
        if lx.result.refusal is not None:
            break
    lx.result.open_statement = lx.pending or lx.copy
    return lx.result


def filter_lines(lines: Iterable[bytes], dialect: str) -> Iterator[bytes]:
    """The dump's lines to execute: ownership and privilege statements dropped (the scan passed)."""
    lx = _Lexer(dialect)
    group: list[bytes] = []
    for raw in lines:
        if lx.copy:
            lx.line(raw.decode("latin-1"))
            yield raw
            continue
        text = raw.decode("latin-1")
        if dialect == "postgres" and not group and _PG_ALLOWED_META.match(text):
            lx.result.lines += 1  # pg_dump's own \restrict / \unrestrict: reversib restricts psql itself
            continue
        lx.line(text)
        if lx.result.refusal is not None:  # the scan said otherwise: never execute past this
            raise RuntimeError(f"refused at line {lx.result.refusal.line} while restoring")
        group.append(raw)
        if lx.pending:
            continue
        stmts = lx.stmts_this_group
        if not (stmts and all(_DROPPED.match(s) for s in stmts)):
            yield from group
        group.clear()
        stmts.clear()
    yield from group


def lines_of(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Split a byte stream into lines (each keeps its newline)."""
    rest = b""
    for chunk in chunks:
        data = rest + chunk
        parts = data.split(b"\n")
        rest = parts.pop()
        for p in parts:
            yield p + b"\n"
    if rest:
        yield rest
