"""Load and validate the daemon configuration (`config/reversib.yaml`) and the checks (`checks/*.yaml`).

Every error of every file is collected and reported at once, each with its file and key.
Relative paths in a file are resolved against that file's folder.  Secrets are never written
in these files: a secret `X` is given as `X_file` (a path to read) or `X_env` (the name of an
environment variable), and its value never appears in messages.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from reversib.archives.options import ArchiveConfig
from reversib.manifests import FORMATS, check_format
from reversib.model import Tier
from reversib.sources.s3_options import S3Options
from reversib.sources.sftp_options import SftpOptions
from reversib.units import parse_duration, parse_size
from reversib.urls import no_password

CONFIG_VERSION = 1
ENV_CONFIG = "REVERSIB_CONFIG"
ENV_HISTORY_URL = "REVERSIB_HISTORY_URL"
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


# Source options that name a file, besides every `*_file` key: resolved against the check file's folder.
PATH_OPTIONS = frozenset({"ca_bundle", "known_hosts"})


class ConfigError(Exception):
    """The configuration is invalid; `errors` lists every problem found ("file: key: message")."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


class Seconds(float):
    """A duration as parsed, until validated: an error about its bounds then says "seconds"."""


Duration = Annotated[float, BeforeValidator(lambda v: Seconds(parse_duration(v)))]
Size = Annotated[int, BeforeValidator(parse_size)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_tz(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Europe/Paris or UTC)") from exc
    return value


SecretFreeUrl = Annotated[str, BeforeValidator(no_password)]


class SourceConfig(Strict):
    url: SecretFreeUrl = Field(description="where the export lives: a path, file://, s3://bucket/prefix, "
                               "sftp://user@host/path (never a password)")
    rate_limit: Size | None = Field(None, description="maximum bytes per second read from this source")
    max_connections: int | None = Field(None, ge=1, le=256, description="reads in flight at most on this "
                                        "source (caps fixity.parallelism and source.s3.concurrency)")
    s3: S3Options | None = Field(None, description="options of an s3:// source")
    sftp: SftpOptions | None = Field(None, description="options of an sftp:// source")

    @model_validator(mode="after")
    def _options_match_scheme(self) -> SourceConfig:
        scheme = self.url.split("://", 1)[0].lower() if "://" in self.url else "file"
        for name in ("s3", "sftp"):
            if getattr(self, name) is not None and scheme != name:
                raise ValueError(f"source.{name} options given for a {scheme}:// source")
        return self


class GenerationConfig(Strict):
    pattern: str = Field(description="strftime template (%Y-%m-%d) or glob (export-*) naming dated folders")
    keep: int = Field(1, ge=1, description="the last N generations must all be present")

    @property
    def is_date(self) -> bool:
        return "%" in self.pattern


class SignatureConfig(Strict):
    """The manifest must be signed: OpenSSH, minisign or OpenPGP, a detached signature next to it
    (docs/evidence.md)."""

    type: Literal["ssh", "minisign", "openpgp"] = Field("ssh", description="the signature tool: ssh "
                                                        "(ssh-keygen -Y), minisign, openpgp (gpg)")
    allowed_signers_file: str | None = Field(None, description="ssh: OpenSSH allowed-signers file "
                                             "(relative to the check file)")
    identity: str | None = Field(None, min_length=1, description="ssh: the signer identity the "
                                 "allowed-signers file names")
    namespace: str = Field("file", min_length=1, description="ssh: the signature namespace (ssh-keygen -Y sign -n)")
    public_key_files: list[str] = Field(default_factory=list, description="minisign, openpgp: the provider's "
                                        "public key file(s) (relative to the check file)")
    suffix: str | None = Field(None, min_length=1, description="signature file name = manifest + this "
                               "(default .sig; .minisig for minisign)")
    required: bool = Field(True, description="an unsigned manifest is an error (false: a warning)")

    @model_validator(mode="after")
    def _keys_for_type(self) -> SignatureConfig:
        if self.type == "ssh":
            if self.allowed_signers_file is None or self.identity is None:
                raise ValueError("signature type ssh needs allowed_signers_file and identity")
            if self.public_key_files:
                raise ValueError("public_key_files is for minisign and openpgp; ssh uses allowed_signers_file")
        else:
            if not self.public_key_files:
                raise ValueError(f"signature type {self.type} needs public_key_files")
            if self.allowed_signers_file is not None or self.identity is not None:
                raise ValueError(f"allowed_signers_file and identity are for type ssh, not {self.type}")
        return self

    @property
    def sig_suffix(self) -> str:
        return self.suffix or (".minisig" if self.type == "minisign" else ".sig")


class ManifestConfig(Strict):
    path: str | None = Field(None, description="manifest inside the export (relative to the export root)")
    location: SecretFreeUrl | None = Field(None, description="manifest outside the export (path relative to the "
                                           "check file, or a URL as source.url)")
    format: str = Field("auto", description="one of " + ", ".join(FORMATS))
    signature: SignatureConfig | None = Field(None, description="require a signed manifest (OpenSSH, minisign, "
                                              "OpenPGP)")
    append_only: bool = Field(False, description="files never vanish nor change between generations")

    @field_validator("format")
    @classmethod
    def _fmt(cls, v: str) -> str:
        return check_format(v)

    @field_validator("path")
    @classmethod
    def _inside(cls, v: str | None) -> str | None:
        from reversib.manifests.base import path_problem

        problem = path_problem(v.removeprefix("./")) if v is not None else None
        if problem:
            raise ValueError(f"manifest.path is inside the export (use manifest.location for one elsewhere): "
                             f"{problem}")
        return v

    @model_validator(mode="after")
    def _one_place(self) -> ManifestConfig:
        if self.path is not None and self.location is not None:
            raise ValueError("give either manifest.path (inside the export) or manifest.location, not both")
        if self.signature is not None and self.location is not None:
            raise ValueError("manifest.signature needs the manifest inside the export (manifest.path), "
                             "not manifest.location")
        return self


class ScheduleConfig(Strict):
    cron: str | None = Field(None, description="5-field cron expression, in the check's timezone")
    every: Duration | None = Field(None, description="interval between runs (90s, 6h, 1d)")

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(v, timezone="UTC")
            except ValueError as exc:
                raise ValueError(f"invalid cron expression {v!r}: {exc}") from exc
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> ScheduleConfig:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give exactly one of schedule.cron or schedule.every")
        if self.every is not None and self.every < 1:
            raise ValueError("schedule.every must be at least 1s")
        return self


class ExpectConfig(Strict):
    deadline: str | None = Field(None, description="time of day (HH:MM) by which the provider must deliver")
    max_age: Duration | None = Field(None, description="newest file must be younger than this")
    min_files: int | None = Field(None, ge=0, description="at least this many files")
    min_bytes: Size | None = Field(None, description="at least this many bytes")

    @field_validator("deadline")
    @classmethod
    def _deadline(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                dt.time.fromisoformat(v)
            except ValueError as exc:
                raise ValueError(f"deadline must be a time of day like 06:00, got {v!r}") from exc
        return v

    @property
    def deadline_time(self) -> dt.time | None:
        return dt.time.fromisoformat(self.deadline) if self.deadline else None


class FixityConfig(Strict):
    enabled: bool = Field(True, description="hash file contents (false: sizes and presence only)")
    algorithms: Literal["all", "strongest"] = Field("all", description="digests to compute")
    parallelism: int = Field(default_factory=lambda: max(1, min(8, os.cpu_count() or 1)), ge=1, le=256,
                             description="files verified at once")
    require_tier: Tier | None = Field(None, description="weakest acceptable tier for every entry")
    accept: list[Tier] = Field(default_factory=list,
                               description="tiers accepted instead of a download when the source offers them")

    @field_validator("accept")
    @classmethod
    def _accept(cls, v: list[Tier]) -> list[Tier]:
        allowed = {Tier.STORED_CHECKSUM, Tier.REMOTE_DIGEST}
        bad = [t.value for t in v if t not in allowed]
        if bad:
            raise ValueError(f"fixity.accept takes stored_checksum and/or remote_digest, not {', '.join(bad)}")
        return v


class CoverageConfig(Strict):
    """Rolling coverage (docs/coverage.md): each run verifies a budget of the export, the entries least
    recently verified first, so that every byte is verified at least once per `period`."""

    period: Duration = Field(gt=0, description="every entry's content is verified at least once this often")
    budget_bytes: Size | None = Field(None, gt=0, description="bytes verified per run, at most")
    budget_share: float | None = Field(None, gt=0, le=1, description="share of the export's bytes verified "
                                       "per run, at most (0.2: a fifth)")
    random_share: float = Field(0.1, ge=0, le=1, description="share of the budget spent on entries drawn at "
                                "random (the rest: changed, never verified, then least recently verified)")

    @model_validator(mode="after")
    def _a_budget(self) -> CoverageConfig:
        if self.budget_bytes is None and self.budget_share is None:
            raise ValueError("give coverage.budget_bytes and/or coverage.budget_share")
        return self


class ChallengeConfig(Strict):
    """Challenge reads (docs/coverage.md): block digests recorded on each full download, random blocks
    read back later and compared."""

    block_size: Size = Field(8 << 20, ge=64 << 10, le=1 << 30, description="bytes per recorded block digest")
    reads: int = Field(4, ge=0, le=10000, description="random blocks read back per run from entries not "
                       "downloaded in that run (0: only record)")


class CompletionConfig(Strict):
    marker: str | None = Field(None, description="file whose presence says the delivery is complete")
    stable_for: Duration | None = Field(None, ge=0, le=3600, description="list the export twice this far "
                                        "apart: any change in names, sizes or mtimes defers the run")


DumpKind = Literal["auto", "postgres-custom", "postgres-directory", "postgres-tar", "postgres-plain", "mysql",
                   "sqlite"]
ROW_COUNT_RE = re.compile(r"^\s*(>=)?\s*(\d+)\s*$")


class DumpRestoreConfig(Strict):
    """`dumps[].restore`: restore into a scratch database on this server (a server URL and a role)."""

    target_url_env: str | None = Field(None, description="environment variable holding the server URL")
    target_url_file: str | None = Field(None, description="file holding the server URL")
    every: Duration | None = Field(None, ge=0, description="restore at most this often (none: every run)")
    statement_timeout: Duration = Field(300.0, gt=0, description="timeout of each expectation query")
    max_restore_seconds: Duration = Field(21600.0, gt=0, description="the restore is stopped after this long")

    @model_validator(mode="after")
    def _one_target(self) -> DumpRestoreConfig:
        if (self.target_url_env is None) == (self.target_url_file is None):
            raise ValueError("give exactly one of restore.target_url_env or restore.target_url_file")
        return self


class DumpConfig(Strict):
    """One `dumps:` item: database dump file(s) inside the export, checked after verification."""

    path: str = Field(min_length=1, description="glob (relative to the export root) naming the dump file(s)")
    kind: DumpKind = Field("auto", description="dump format (auto: detected from the content)")
    compression: Literal["auto", "none", "gzip", "zstd"] = Field("auto", description="outer compression")
    expect_tables: list[str] = Field(default_factory=list, description="tables the dump must contain")
    row_counts: dict[str, int | str] = Field(default_factory=dict,
                                             description="table -> exact count, or \">= N\"")
    assertions: list[str] = Field(default_factory=list, description="SQL queries that must return true")
    restore: DumpRestoreConfig | None = Field(None, description="restore level (none: structural level only)")

    @field_validator("row_counts")
    @classmethod
    def _counts(cls, v: dict[str, int | str]) -> dict[str, int | str]:
        for table, want in v.items():
            if isinstance(want, bool) or (isinstance(want, int) and want < 0) or \
                    (isinstance(want, str) and not ROW_COUNT_RE.match(want)):
                raise ValueError(f"row_counts.{table}: a non-negative integer or \">= N\", got {want!r}")
        return v


class CheckConfig(Strict):
    """One check, as read from checks/NAME.yaml (relative paths already resolved)."""

    version: Literal[1] = Field(description="check file format version")
    id: str | None = Field(None, description="stable id keying the history (default: name)")
    name: str = Field(min_length=1, max_length=200, description="display name")
    labels: dict[str, str] = Field(default_factory=dict, description="bounded key/values carried into metrics")
    timezone: Annotated[str, BeforeValidator(_check_tz)] = Field("UTC", description="for cron, dates, deadline")
    source: SourceConfig
    generation: GenerationConfig | None = None
    manifest: ManifestConfig = Field(default_factory=lambda: ManifestConfig())
    ignore: list[str] = Field(default_factory=list, description="globs never reported as unexpected")
    allow_unexpected: bool = Field(False, description="report unexpected files as warnings only")
    completion: CompletionConfig = Field(default_factory=lambda: CompletionConfig())
    schedule: ScheduleConfig | None = None
    expect: ExpectConfig = Field(default_factory=lambda: ExpectConfig())
    fixity: FixityConfig = Field(default_factory=lambda: FixityConfig())
    dumps: list[DumpConfig] = Field(default_factory=list, description="database dumps to check (docs/dumps.md)")
    archive: ArchiveConfig | None = Field(None, description="the export is an archive file, possibly encrypted: "
                                                            "verify inside it (docs/archives.md)")
    coverage: CoverageConfig | None = Field(None, description="verify a budget per run, every entry once per "
                                            "period (none: every entry every run)")
    challenge: ChallengeConfig | None = Field(None, description="record block digests, read random blocks back")
    shards: int = Field(1, ge=1, le=1000, description="daemons split each run into this many shards that "
                        "replicas verify in parallel (docs/scale.md)")

    @field_validator("id")
    @classmethod
    def _id(cls, v: str | None) -> str | None:
        if v is not None and not ID_RE.match(v):
            raise ValueError("id: letters, digits, '.', '_', '-' only, at most 128 characters")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > 10:
            raise ValueError("at most 10 labels (they become Prometheus labels: keep them bounded)")
        for key, value in v.items():
            if not LABEL_RE.match(key) or key.startswith("__"):
                raise ValueError(f"label name {key!r} is not a valid Prometheus label name")
            if key in ("check", "check_id", "kind", "outcome", "tier", "severity"):
                raise ValueError(f"label name {key!r} is reserved by reversib")
            if len(str(value)) > 200:
                raise ValueError(f"label {key!r}: value longer than 200 characters")
        return v

    @model_validator(mode="after")
    def _deadline_needs_dates(self) -> CheckConfig:
        dated_archive = self.archive is not None and "%" in self.archive.path
        if self.expect.deadline is not None and (self.generation is None or not self.generation.is_date) \
                and not dated_archive:
            raise ValueError("expect.deadline needs generation.pattern with a date template such as %Y-%m-%d, or "
                             "archive.path with one (use expect.max_age for an export without dated folders)")
        return self

    @model_validator(mode="after")
    def _coverage_needs_fixity(self) -> CheckConfig:
        if (self.coverage is not None or self.challenge is not None) and not self.fixity.enabled:
            raise ValueError("coverage and challenge need fixity.enabled (they schedule content verification)")
        if self.archive is not None and (self.coverage is not None or self.challenge is not None):
            raise ValueError("archive cannot be combined with coverage or challenge: an archive is read whole, "
                             "as one stream, every run")
        return self

    @model_validator(mode="after")
    def _shards_alone(self) -> CheckConfig:
        if self.shards > 1:
            given = [k for k in ("coverage", "challenge", "archive") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"shards: {self.shards} cannot be combined with {', '.join(given)} (docs/scale.md); "
                                 "use shards: 1")
        return self

    @property
    def check_id(self) -> str:
        return self.id or _slug(self.name)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return s[:128] or "check"


class HistoryConfig(Strict):
    url: str | None = Field(None, description="SQLAlchemy URL without password (sqlite:///path, postgresql://...)")
    url_env: str | None = Field(None, description="environment variable holding the URL (may hold a password)")
    url_file: str | None = Field(None, description="file holding the URL (may hold a password)")

    @model_validator(mode="after")
    def _one(self) -> HistoryConfig:
        given = [k for k in ("url", "url_env", "url_file") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of history.url, url_env, url_file (got {', '.join(given)})")
        if self.url is not None and re.search(r"://[^/@]*:[^/@]*@", self.url):
            raise ValueError("history.url contains a password: put the URL in url_env or url_file instead")
        return self


class DefaultsConfig(Strict):
    fixity: dict[str, Any] = Field(default_factory=dict, description="fixity keys applied to every check")

    @field_validator("fixity")
    @classmethod
    def _valid_fixity(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Checked here, so that a mistake is blamed on this file rather than on every check file."""
        FixityConfig.model_validate(value)  # its errors carry on with the location defaults.fixity.<key>
        return value


class LogConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


# Not in Prometheus' default exporter port allocations (9100-9999 is fully allocated and the list
# goes on above 10000; 9090-9094 are Prometheus' own components): see docs/daemon.md.
DEFAULT_LISTEN = "127.0.0.1:8637"


def check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen must be HOST:PORT (such as 127.0.0.1:8637 or 0.0.0.0:8637), got {value!r}")
    return value


class RunDaemonConfig(Strict):
    """The `daemon:` block: what `reversib run` does (the rest of this file is shared with the CLI)."""

    listen: Annotated[str, BeforeValidator(check_listen)] = Field(
        DEFAULT_LISTEN, description="HOST:PORT of /metrics, health, landing page and API")
    max_concurrent_checks: int = Field(4, ge=1, le=256, description="checks running at once, at most")
    shutdown_timeout: Duration = Field(8.0, ge=0, le=60,
                                       description="on SIGTERM, how long running checks get to record interrupted")
    catch_up: bool = Field(True, description="at start, run the most recent slot missed while reversib was down")
    catch_up_window: Duration = Field(86400.0, ge=0, description="how far back a missed slot is still caught up")
    lease: Duration = Field(60.0, ge=1, le=3600, description="with several replicas: how long a run's shard stays "
                            "claimed by a replica that stopped renewing it (docs/scale.md)")
    api_token_env: str | None = Field(None, description="environment variable holding the API token")
    api_token_file: str | None = Field(None, description="file holding the API token")

    @model_validator(mode="after")
    def _one_token(self) -> RunDaemonConfig:
        if self.api_token_env is not None and self.api_token_file is not None:
            raise ValueError("give only one of daemon.api_token_env, daemon.api_token_file")
        return self

    def api_token(self) -> str | None:
        """The configured API token, None when none is configured; raises ConfigError when unreadable."""
        if self.api_token_env:
            value = os.environ.get(self.api_token_env, "").strip()
            if not value:
                raise ConfigError([f"daemon.api_token_env: environment variable {self.api_token_env} is not set"])
            return value
        if self.api_token_file:
            try:
                value = Path(self.api_token_file).read_text().strip()
            except OSError as exc:
                raise ConfigError([f"daemon.api_token_file: cannot read {self.api_token_file}: {exc.strerror}"]) \
                    from exc
            if not value:
                raise ConfigError([f"daemon.api_token_file: {self.api_token_file} is empty"])
            return value
        return None


class HeadsS3Config(Strict):
    """Signed chain heads written as Object-Locked objects (docs/evidence.md)."""

    url: str = Field(pattern=r"^s3://[^/]+(/.*)?$", description="s3://bucket/prefix (the bucket has Object Lock)")
    mode: Literal["COMPLIANCE", "GOVERNANCE"] = Field("COMPLIANCE", description="Object Lock retention mode")
    retention_days: int = Field(400, ge=1, le=36500, description="each head object is retained this many days")
    s3: dict[str, Any] = Field(default_factory=dict, description="connection options: the keys of source.s3")

    @field_validator("s3")
    @classmethod
    def _s3_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        S3Options.model_validate(v)
        return v


class EvidenceConfig(Strict):
    """Signed chain heads and signed reports (docs/evidence.md)."""

    signing_key_file: str | None = Field(None, description="Ed25519 private key file (OpenSSH or PEM), "
                                                           "signs the chain heads and reports")
    heads_path: str | None = Field(None, description="file where the signed chain heads are written after "
                                                     "each run (outside the database's reach)")
    heads_s3: HeadsS3Config | None = Field(None, description="also write each signed head as an object with "
                                           "Object Lock retention to an S3 bucket")

    @model_validator(mode="after")
    def _key_for_heads(self) -> EvidenceConfig:
        if (self.heads_path is not None or self.heads_s3 is not None) and self.signing_key_file is None:
            raise ValueError("evidence.heads_path and heads_s3 need evidence.signing_key_file (the heads are signed)")
        return self

    @property
    def anchored(self) -> bool:
        """Heads are anchored outside the database after each run (a file and/or S3)."""
        return self.heads_path is not None or self.heads_s3 is not None


class DaemonConfig(Strict):
    version: Literal[1] = Field(description="config file format version")
    evidence: EvidenceConfig = Field(default_factory=lambda: EvidenceConfig())
    history: HistoryConfig = Field(default_factory=lambda: HistoryConfig())
    checks_dir: str | None = Field(None, description="folder of check files (relative to this file)")
    defaults: DefaultsConfig = Field(default_factory=lambda: DefaultsConfig())
    log: LogConfig = Field(default_factory=lambda: LogConfig())
    daemon: RunDaemonConfig = Field(default_factory=lambda: RunDaemonConfig())


def unresolved(model: BaseModel, where: str, prefix: str = "") -> list[str]:
    """What `model` refers to and cannot be had here: each `*_env` key naming an unset (or empty)
    environment variable, each `*_file` / `*_files` key naming a file that cannot be read ("FILE: key:
    problem", never a value read)."""
    out: list[str] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = prefix + name
        if value is None:
            continue
        if isinstance(value, BaseModel):
            out += unresolved(value, where, key + ".")
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    out += unresolved(item, where, f"{key}.{i}.")
                elif name.endswith("_files") and isinstance(item, str):
                    out += _unreadable(item, where, f"{key}.{i}")
        elif name.endswith("_env") and isinstance(value, str):
            if not os.environ.get(value, "").strip():
                out.append(f"{where}: {key}: environment variable {value} is not set")
        elif name.endswith("_file") and isinstance(value, str):
            out += _unreadable(value, where, key)
    return out


def _unreadable(path: str, where: str, key: str) -> list[str]:
    try:
        with open(path, "rb"):
            return []
    except OSError as exc:
        return [f"{where}: {key}: cannot read {path}: {exc.strerror}"]


@dataclass
class Settings:
    """The loaded configuration: daemon settings plus every check, paths resolved."""

    path: Path | None
    daemon: DaemonConfig
    checks: list[CheckConfig] = field(default_factory=list)
    check_files: dict[str, Path] = field(default_factory=dict)

    def unresolved(self) -> list[str]:
        """Every environment variable and file the configuration names that is not there (`check-config`:
        the daemon and the checks would stop on them later)."""
        out = unresolved(self.daemon, str(self.path or "(built-in defaults)"))
        if os.environ.get(ENV_HISTORY_URL):  # it replaces history.url_env / url_file
            out = [p for p in out if ": history.url_" not in p]
        for check in self.checks:
            out += unresolved(check, str(self.check_files.get(check.check_id, check.check_id)))
        return out

    def history_url(self, override: str | None = None) -> str:
        if override:
            return override
        if os.environ.get(ENV_HISTORY_URL):
            return os.environ[ENV_HISTORY_URL]
        h = self.daemon.history
        if h.url_env:
            value = os.environ.get(h.url_env)
            if not value:
                raise ConfigError([f"{self.path}: history.url_env: environment variable {h.url_env} is not set"])
            return value
        if h.url_file:
            try:
                return Path(h.url_file).read_text().strip()
            except OSError as exc:
                raise ConfigError([f"{self.path}: history.url_file: cannot read {h.url_file}: {exc.strerror}"]) \
                    from exc
        if h.url:
            return h.url
        return "sqlite:///" + str(default_state_dir() / "history.db")

    def find(self, name_or_id: str) -> CheckConfig | None:
        for c in self.checks:
            if name_or_id in (c.check_id, c.name):
                return c
        return None


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "reversib"


def _fmt_loc(loc: Iterable[Any]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


_BOUNDS = frozenset({"less_than", "less_than_equal", "greater_than", "greater_than_equal"})


def _errors(path: Path, exc: ValidationError) -> list[str]:
    out = []
    for e in exc.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif isinstance(e.get("input"), Seconds) and e["type"] in _BOUNDS:
            msg = f"{msg} seconds (got {e['input']:g} seconds)"
        out.append(f"{path}: {_fmt_loc(e['loc'])}: {msg}")
    return out


def _read_yaml(path: Path, errors: list[str]) -> dict[str, Any] | None:
    import yaml  # here: `verify-now --source` without a configuration file never needs it

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        errors.append(f"{path}: cannot read: {exc.strerror}")
        return None
    except UnicodeDecodeError:
        errors.append(f"{path}: not UTF-8 text")
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        errors.append(f"{path}: {where}invalid YAML: {getattr(exc, 'problem', None) or exc}")
        return None
    if not isinstance(data, dict):
        errors.append(f"{path}: expected a mapping of keys at the top level")
        return None
    return data


def _resolve(base: Path, value: str) -> str:
    """A relative path in a file is relative to that file's folder; URLs are left alone."""
    if "://" in value and not value.startswith("file://"):
        return value
    if value.startswith("file://"):
        return value
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else (base / p).resolve())


def _merge(defaults: dict[str, Any], own: Any) -> Any:
    if isinstance(own, dict):
        return {**defaults, **own}
    return own if own is not None else dict(defaults)


def load_check(path: Path, defaults: DefaultsConfig, errors: list[str]) -> CheckConfig | None:
    data = _read_yaml(path, errors)
    if data is None:
        return None
    base = path.parent
    src = data.get("source")
    if isinstance(src, dict) and isinstance(src.get("url"), str):
        src["url"] = _resolve(base, src["url"])
    for backend in ("s3", "sftp"):  # file options (keys, CA bundles, known_hosts) are relative to this file
        opts = src.get(backend) if isinstance(src, dict) else None
        if isinstance(opts, dict):
            for key, value in opts.items():
                if isinstance(value, str) and (key.endswith("_file") or key in PATH_OPTIONS):
                    opts[key] = _resolve(base, value)
    dumps = data.get("dumps")
    for dump in dumps if isinstance(dumps, list) else []:
        restore = dump.get("restore") if isinstance(dump, dict) else None
        if isinstance(restore, dict) and isinstance(restore.get("target_url_file"), str):
            restore["target_url_file"] = _resolve(base, restore["target_url_file"])
    arc = data.get("archive")
    dec = arc.get("decrypt") if isinstance(arc, dict) else None
    if isinstance(dec, dict):  # key files are relative to this file
        for key in ("identity_file", "passphrase_file", "gnupg_home"):
            if isinstance(dec.get(key), str):
                dec[key] = _resolve(base, dec[key])
    man = data.get("manifest")
    if isinstance(man, dict) and isinstance(man.get("location"), str):
        man["location"] = _resolve(base, man["location"])
    sig = man.get("signature") if isinstance(man, dict) else None
    if isinstance(sig, dict) and isinstance(sig.get("allowed_signers_file"), str):
        sig["allowed_signers_file"] = _resolve(base, sig["allowed_signers_file"])
    if isinstance(sig, dict) and isinstance(sig.get("public_key_files"), list):
        sig["public_key_files"] = [_resolve(base, k) if isinstance(k, str) else k for k in sig["public_key_files"]]
    if defaults.fixity:
        data["fixity"] = _merge(defaults.fixity, data.get("fixity"))
    try:
        return CheckConfig.model_validate(data)
    except ValidationError as exc:
        errors.extend(_errors(path, exc))
        return None


def discover_config(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    if os.environ.get(ENV_CONFIG):
        return Path(os.environ[ENV_CONFIG])
    local = Path("config/reversib.yaml")
    return local if local.exists() else None


def load_settings(path: Path | None) -> Settings:
    """Load the daemon config and every check; raise ConfigError listing all problems."""
    errors: list[str] = []
    if path is None:
        return Settings(None, DaemonConfig(version=1))
    data = _read_yaml(path, errors)
    daemon: DaemonConfig | None = None
    if data is not None:
        h = data.get("history")
        if isinstance(h, dict):
            if isinstance(h.get("url"), str) and h["url"].startswith("sqlite:///") \
                    and not h["url"].startswith("sqlite:////") and h["url"] != "sqlite:///:memory:":
                h["url"] = "sqlite:///" + _resolve(path.parent, h["url"][len("sqlite:///"):])
            if isinstance(h.get("url_file"), str):
                h["url_file"] = _resolve(path.parent, h["url_file"])
        if isinstance(data.get("checks_dir"), str):
            data["checks_dir"] = _resolve(path.parent, data["checks_dir"])
        ev = data.get("evidence")
        if isinstance(ev, dict):
            for key in ("signing_key_file", "heads_path"):
                if isinstance(ev.get(key), str):
                    ev[key] = _resolve(path.parent, ev[key])
            opts = ev["heads_s3"].get("s3") if isinstance(ev.get("heads_s3"), dict) else None
            if isinstance(opts, dict):  # file options of the heads bucket: relative to this file
                for key, value in opts.items():
                    if isinstance(value, str) and (key.endswith("_file") or key in PATH_OPTIONS):
                        opts[key] = _resolve(path.parent, value)
        d = data.get("daemon")
        if isinstance(d, dict) and isinstance(d.get("api_token_file"), str):
            d["api_token_file"] = _resolve(path.parent, d["api_token_file"])
        try:
            daemon = DaemonConfig.model_validate(data)
        except ValidationError as exc:
            errors.extend(_errors(path, exc))
    settings = Settings(path, daemon or DaemonConfig(version=1))
    checks_dir, defaults = (daemon.checks_dir, daemon.defaults) if daemon is not None else (None, None)
    if daemon is None and data is not None and isinstance(data.get("checks_dir"), str):
        # This file is invalid; its checks are validated all the same, so that every error shows at once.
        checks_dir = data["checks_dir"]
        try:
            defaults = DefaultsConfig.model_validate(data.get("defaults") or {})
        except ValidationError:
            defaults = DefaultsConfig()  # its errors are already listed
    if checks_dir and defaults is not None:
        cdir = Path(checks_dir)
        if not cdir.is_dir():
            errors.append(f"{path}: checks_dir: not a folder: {cdir}")
        else:
            files = sorted(list(cdir.glob("*.yaml")) + list(cdir.glob("*.yml")))
            seen: dict[str, Path] = {}
            names: dict[str, Path] = {}  # `verify-now NAME` and `history NAME` must name one check
            for f in files:
                check = load_check(f, defaults, errors)
                if check is None:
                    continue
                if check.check_id in seen:
                    errors.append(f"{f}: id: check id {check.check_id!r} already used by {seen[check.check_id]}")
                    continue
                if check.name in names:
                    errors.append(f"{f}: name: check name {check.name!r} already used by {names[check.name]}")
                    continue
                seen[check.check_id] = f
                names[check.name] = f
                settings.checks.append(check)
                settings.check_files[check.check_id] = f
    if errors:
        raise ConfigError(errors)
    return settings


def adhoc_check(source: str, manifest: str | None, fmt: str = "auto", *, name: str | None = None,
                parallelism: int | None = None) -> CheckConfig:
    """A check built from `verify-now --source ... --manifest ...` (paths relative to the cwd)."""
    import hashlib

    src = _resolve(Path.cwd(), source)
    man = _resolve(Path.cwd(), manifest) if manifest else None
    digest = hashlib.sha256(f"{src}\0{man or ''}".encode("utf-8", "surrogateescape")).hexdigest()[:12]
    data: dict[str, Any] = {
        "version": 1,
        "id": f"adhoc-{digest}",
        "name": name or f"adhoc {source}",
        "source": {"url": src},
        "manifest": {"location": man, "format": fmt},
    }
    if parallelism:
        data["fixity"] = {"parallelism": parallelism}
    try:
        return CheckConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_errors(Path("(command line)"), exc)) from exc
