"""The data reversib speaks in: outcomes, findings, tiers, run results.

Everything here is plain data (frozen dataclasses and string enums) so that it can be
serialized canonically, stored in the history and compared in tests.  Nothing here does I/O.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Outcome(str, enum.Enum):
    """The verdict of one run.  `error` means reversib could not verify: it is never a pass."""

    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    DEFERRED = "deferred"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self]


class RunState(str, enum.Enum):
    """Lifecycle of a run, kept apart from its outcome."""

    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"


class Trigger(str, enum.Enum):
    SCHEDULE = "schedule"
    CLI = "cli"
    API = "api"


class Tier(str, enum.Enum):
    """How an entry was verified, strongest first."""

    DOWNLOADED = "downloaded"
    CHALLENGE = "challenge"
    REMOTE_DIGEST = "remote_digest"
    STORED_CHECKSUM = "stored_checksum"
    SIZE_ONLY = "size_only"

    @property
    def rank(self) -> int:
        """Higher is stronger."""
        return len(TIER_ORDER) - TIER_ORDER.index(self)


TIER_ORDER = list(Tier)

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_ERROR = 2
EXIT_DEFERRED = 3
EXIT_USAGE = 64
EXIT_CONFIG = 78
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: stdout closed by its reader before the output was written

EXIT_CODES = {
    Outcome.PASSED: EXIT_PASSED,
    Outcome.FAILED: EXIT_FAILED,
    Outcome.ERROR: EXIT_ERROR,
    Outcome.DEFERRED: EXIT_DEFERRED,
}

# With several runs, the overall outcome is the first of these that any run has.
OUTCOME_PRIORITY = [Outcome.FAILED, Outcome.ERROR, Outcome.DEFERRED, Outcome.PASSED]


def combine_outcomes(outcomes: list[Outcome]) -> Outcome:
    """The overall outcome of several runs: failed > error > deferred > passed.

    No runs at all cannot be a pass: reversib verified nothing.
    """
    if not outcomes:
        return Outcome.ERROR
    return min(outcomes, key=OUTCOME_PRIORITY.index)


@dataclass(frozen=True)
class KindInfo:
    severity: Severity
    summary: str
    # True when a finding of this kind means reversib could not verify (outcome `error`).
    unverifiable: bool = False


class FindingKind(str, enum.Enum):
    MISSING = "missing"
    UNEXPECTED = "unexpected"
    SIZE_MISMATCH = "size_mismatch"
    DIGEST_MISMATCH = "digest_mismatch"
    UNREADABLE = "unreadable"
    UNSAFE_PATH = "unsafe_path"
    DUPLICATE_ENTRY = "duplicate_entry"
    NAME_NORMALIZATION = "name_normalization"
    STALE = "stale"
    TOO_SMALL = "too_small"
    GENERATION_MISSING = "generation_missing"
    GENERATION_FUTURE = "generation_future"
    INCOMPLETE_DELIVERY = "incomplete_delivery"
    MANIFEST_MISSING = "manifest_missing"
    MANIFEST_INVALID = "manifest_invalid"
    OXUM_MISMATCH = "oxum_mismatch"
    FETCH_REFERENCE = "fetch_reference"
    TIER_INSUFFICIENT = "tier_insufficient"
    SOURCE_ERROR = "source_error"
    MANIFEST_UNSIGNED = "manifest_unsigned"
    MANIFEST_SIGNATURE_INVALID = "manifest_signature_invalid"
    SIGNATURE_UNVERIFIABLE = "signature_unverifiable"
    ENTRY_VANISHED = "entry_vanished"
    DIGEST_CHANGED = "digest_changed"
    DUMP_TRUNCATED = "dump_truncated"
    DUMP_UNREADABLE = "dump_unreadable"
    DUMP_REFUSED = "dump_refused"
    DUMP_UNVERIFIABLE = "dump_unverifiable"
    TABLE_MISSING = "table_missing"
    ROW_COUNT_MISMATCH = "row_count_mismatch"
    ASSERTION_FAILED = "assertion_failed"
    RESTORE_FAILED = "restore_failed"
    RESTORED = "restored"
    DECRYPT_FAILED = "decrypt_failed"
    CIPHERTEXT_CORRUPT = "ciphertext_corrupt"
    ARCHIVE_CORRUPT = "archive_corrupt"
    ARCHIVE_LIMIT = "archive_limit"

    @property
    def info(self) -> KindInfo:
        return KIND_INFO[self]


KIND_INFO: dict[FindingKind, KindInfo] = {
    FindingKind.MISSING: KindInfo(Severity.ERROR, "listed in the manifest, absent from the export"),
    FindingKind.UNEXPECTED: KindInfo(
        Severity.ERROR, "present in the export, not listed in the manifest (warning with allow_unexpected)"
    ),
    FindingKind.SIZE_MISMATCH: KindInfo(Severity.ERROR, "size differs from the manifest; its digest is not computed"),
    FindingKind.DIGEST_MISMATCH: KindInfo(Severity.ERROR, "content digest differs from the manifest"),
    FindingKind.UNREADABLE: KindInfo(Severity.ERROR, "the entry exists but could not be read to the end"),
    FindingKind.UNSAFE_PATH: KindInfo(
        Severity.ERROR,
        "absolute path, '..', NUL or control character, or a symlink leaving the export: never read",
    ),
    FindingKind.DUPLICATE_ENTRY: KindInfo(
        Severity.ERROR, "the manifest lists the same path more than once, or an archive holds two members of one name"
    ),
    FindingKind.NAME_NORMALIZATION: KindInfo(
        Severity.ERROR, "a name matches the manifest only after Unicode normalization or case folding"
    ),
    FindingKind.STALE: KindInfo(Severity.ERROR, "the newest file of the export is older than expect.max_age"),
    FindingKind.TOO_SMALL: KindInfo(Severity.ERROR, "fewer files or bytes than expect.min_files / expect.min_bytes"),
    FindingKind.GENERATION_MISSING: KindInfo(
        Severity.ERROR, "the generation due by the deadline, or one of the last `keep`, is absent"
    ),
    FindingKind.GENERATION_FUTURE: KindInfo(
        Severity.WARNING, "a generation folder is dated after today (check's time zone): not verified, so that it "
        "never hides the newest real export"
    ),
    FindingKind.INCOMPLETE_DELIVERY: KindInfo(
        Severity.ERROR,
        "the delivery is still in progress (completion marker or manifest absent): info while the run is "
        "deferred, error once the deadline has passed",
    ),
    FindingKind.MANIFEST_MISSING: KindInfo(Severity.ERROR, "no manifest was found where the check says"),
    FindingKind.MANIFEST_INVALID: KindInfo(
        Severity.ERROR, "a manifest line or file could not be parsed: what it lists cannot be verified", True
    ),
    FindingKind.OXUM_MISMATCH: KindInfo(Severity.ERROR, "BagIt Payload-Oxum (bytes.files) differs from the payload"),
    FindingKind.FETCH_REFERENCE: KindInfo(
        Severity.WARNING, "a BagIt fetch.txt entry: the file is to be fetched from elsewhere"
    ),
    FindingKind.TIER_INSUFFICIENT: KindInfo(
        Severity.ERROR, "the entry was verified by a weaker tier than fixity.require_tier", True
    ),
    FindingKind.SOURCE_ERROR: KindInfo(
        Severity.ERROR, "the source could not be listed or reached: nothing can be concluded", True
    ),
    FindingKind.MANIFEST_UNSIGNED: KindInfo(
        Severity.ERROR, "the check requires a signed manifest and no signature file was delivered"
    ),
    FindingKind.MANIFEST_SIGNATURE_INVALID: KindInfo(
        Severity.ERROR, "the manifest's signature does not verify (altered manifest, unknown key, wrong identity)"
    ),
    FindingKind.SIGNATURE_UNVERIFIABLE: KindInfo(
        Severity.ERROR, "the manifest's signature could not be checked here (verification tool missing, key file "
        "unreadable): nothing is concluded about it", True
    ),
    FindingKind.ENTRY_VANISHED: KindInfo(
        Severity.ERROR, "append-only dataset: a file verified before is no longer listed in the manifest"
    ),
    FindingKind.DIGEST_CHANGED: KindInfo(
        Severity.ERROR, "append-only dataset: a file's digest differs from the one reversib verified before"
    ),
    FindingKind.DUMP_TRUNCATED: KindInfo(Severity.ERROR, "a database dump ends before its end (no footer, cut stream)"),
    FindingKind.DUMP_UNREADABLE: KindInfo(Severity.ERROR, "a database dump cannot be decoded or parsed"),
    FindingKind.DUMP_REFUSED: KindInfo(
        Severity.ERROR, "a plain dump holds client commands or statements leaving the scratch database: not run"
    ),
    FindingKind.DUMP_UNVERIFIABLE: KindInfo(
        Severity.ERROR, "a dump could not be checked (client tool missing or too old, restore server refused)", True
    ),
    FindingKind.TABLE_MISSING: KindInfo(Severity.ERROR, "an expected table is not in the dump"),
    FindingKind.ROW_COUNT_MISMATCH: KindInfo(Severity.ERROR, "a restored table has a wrong number of rows"),
    FindingKind.ASSERTION_FAILED: KindInfo(Severity.ERROR, "an SQL assertion on the restored data is not true"),
    FindingKind.RESTORE_FAILED: KindInfo(Severity.ERROR, "restoring the dump into a scratch database failed"),
    FindingKind.RESTORED: KindInfo(Severity.INFO, "the dump was restored and checked (duration and volume)"),
    FindingKind.DECRYPT_FAILED: KindInfo(
        Severity.ERROR, "an encrypted archive does not open with the customer's key (encrypted to another key)"
    ),
    FindingKind.CIPHERTEXT_CORRUPT: KindInfo(
        Severity.ERROR, "an encrypted archive fails its integrity check (altered, truncated or damaged ciphertext)"
    ),
    FindingKind.ARCHIVE_CORRUPT: KindInfo(
        Severity.ERROR, "an archive member or its compressed stream cannot be read to the end"
    ),
    FindingKind.ARCHIVE_LIMIT: KindInfo(
        Severity.ERROR, "an archive exceeds archive.limits (expansion ratio, total size, members, overlapping "
        "zip members): a decompression bomb is not read further"
    ),
}


@dataclass(frozen=True)
class Finding:
    """One discrepancy.  `expected` and `actual` are short human-readable strings (or None)."""

    kind: FindingKind
    path: str | None
    expected: str | None = None
    actual: str | None = None
    severity: Severity | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
        if self.severity is None:
            object.__setattr__(self, "severity", self.kind.info.severity)

    @property
    def sev(self) -> Severity:
        assert self.severity is not None
        return self.severity

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": self.kind.value,
            "severity": self.sev.value,
            "path": self.path,
            "expected": self.expected,
            "actual": self.actual,
        }
        if self.detail is not None:
            data["detail"] = self.detail
        return data

    def sort_key(self) -> tuple[str, str, str]:
        return (self.path or "", self.kind.value, self.actual or "")


def canonical_json(data: Any) -> str:
    """Canonical serialization used for anything that may be hashed: sorted keys, no spaces,
    integers as integers, floats rounded to microseconds and written with a fixed format."""

    def norm(value: Any) -> Any:
        if isinstance(value, float):
            return float(f"{value:.6f}")
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, dict):
            return {str(k): norm(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [norm(v) for v in value]
        return value

    return json.dumps(norm(data), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@dataclass
class RunResult:
    """The result of one run of one check, as returned by the runner and printed by the CLI."""

    check_id: str
    check_name: str
    run_id: str
    outcome: Outcome
    state: RunState = RunState.FINISHED
    findings: list[Finding] = field(default_factory=list)
    tiers: dict[str, int] = field(default_factory=dict)
    bytes_verified: int = 0
    files_verified: int = 0
    files_listed: int = 0
    bytes_listed: int = 0
    manifest_entries: int = 0
    duration_seconds: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    error: str | None = None
    generation: str | None = None
    source: str | None = None
    manifest: str | None = None
    manifest_digest: str | None = None
    newest_mtime: float | None = None
    labels: dict[str, str] = field(default_factory=dict)
    restore_seconds: float | None = None  # database dumps restored in this run: total wall time
    restore_bytes: int | None = None  # and the dump bytes fed to the restore tools
    bytes_downloaded: int | None = None  # every byte read from the source (egress), docs/coverage.md
    coverage: dict[str, Any] | None = None  # rolling coverage figures (checks with `coverage:`)

    @property
    def counts(self) -> dict[str, int]:
        """Findings per kind (only kinds that occur) plus per severity totals."""
        counts: dict[str, int] = {}
        for f in self.findings:
            counts[f.kind.value] = counts.get(f.kind.value, 0) + 1
        return dict(sorted(counts.items()))

    @property
    def severity_counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in Severity}
        for f in self.findings:
            counts[f.sev.value] += 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check_name,
            "check_id": self.check_id,
            "run_id": self.run_id,
            "outcome": self.outcome.value,
            "state": self.state.value,
            "error": self.error,
            "labels": dict(sorted(self.labels.items())),
            "source": self.source,
            "manifest": self.manifest,
            "manifest_digest": self.manifest_digest,
            "generation": self.generation,
            "counts": self.counts,
            "severities": self.severity_counts,
            "tiers": dict(sorted(self.tiers.items())),
            "bytes_verified": self.bytes_verified,
            "files_verified": self.files_verified,
            "files_listed": self.files_listed,
            "bytes_listed": self.bytes_listed,
            "manifest_entries": self.manifest_entries,
            "newest_mtime": self.newest_mtime,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_seconds": round(self.duration_seconds, 6),
            "restore_seconds": None if self.restore_seconds is None else round(self.restore_seconds, 6),
            "restore_bytes": self.restore_bytes,
            "bytes_downloaded": self.bytes_downloaded,
            "coverage": self.coverage,
            "findings": [f.to_dict() for f in self.findings],
        }


def decide_outcome(findings: list[Finding], *, error: str | None = None, deferred: bool = False) -> Outcome:
    """The one rule that turns findings into a verdict.

    * reversib could not verify (an error, or a finding of an unverifiable kind): `error`
      -- unless an error-severity finding of a verifiable kind already proves a failure;
    * the export is still being delivered: `deferred`;
    * any error-severity finding: `failed`;
    * else `passed`.
    """
    proven_failure = any(f.sev is Severity.ERROR and not f.kind.info.unverifiable for f in findings)
    unverifiable = error is not None or any(f.kind.info.unverifiable and f.sev is Severity.ERROR for f in findings)
    if proven_failure:
        return Outcome.FAILED
    if unverifiable:
        return Outcome.ERROR
    if deferred:
        return Outcome.DEFERRED
    return Outcome.PASSED


SCHEMA_VERSION = 1


def report_document(results: list[RunResult]) -> dict[str, Any]:
    """The `--json` document: the same shape for one check or many."""
    return {
        "schema": SCHEMA_VERSION,
        "outcome": combine_outcomes([r.outcome for r in results]).value,
        "runs": [r.to_dict() for r in results],
    }
