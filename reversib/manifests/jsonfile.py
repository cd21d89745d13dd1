"""reversib's own JSON manifest (`reversib_manifest: 1`), see schemas/manifest.schema.json.

Validation is done by hand here (no jsonschema at run time) and kept consistent with the schema;
a test checks both agree on sample documents.  A document that is not JSON or not version 1 is a
ManifestError; an entry that breaks a rule is a `manifest_invalid` finding naming its index.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from reversib.manifests.base import Manifest, ManifestEntry, ManifestError, finalize, strip_dot_slash
from reversib.manifests.sumfile import digest_hex_length
from reversib.model import Finding, FindingKind
from reversib.sources.base import Source

VERSION = 1
TOP_KEYS = frozenset({"$schema", "reversib_manifest", "created", "generator", "entries", "expect"})
ENTRY_KEYS = frozenset({"path", "size", "digests", "mtime"})
_DATETIME = re.compile(
    r"([0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9]|60)"
    r"(?:\.([0-9]+))?(?:([Zz])|([+-])([01][0-9]|2[0-3]):([0-5][0-9]))")
_LOWER_HEX = re.compile(r"[0-9a-f]+")


def parse_rfc3339(text: str) -> float:
    """An RFC 3339 date-time (time zone required) -> epoch seconds.  Raises ValueError."""
    m = _DATETIME.fullmatch(text)
    if not m:
        raise ValueError(f"not an RFC 3339 date-time: {text!r}")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    leap = second == 60
    micro = int((m.group(7) or "0")[:6].ljust(6, "0"))
    tz = timezone.utc
    if not m.group(8):
        offset = timedelta(hours=int(m.group(10)), minutes=int(m.group(11)))
        tz = timezone(offset if m.group(9) == "+" else -offset)
    moment = datetime(year, month, day, hour, minute, 59 if leap else second, micro, tzinfo=tz)
    return moment.timestamp() + (1 if leap else 0)


def format_rfc3339(epoch: float) -> str:
    """Epoch seconds -> RFC 3339 in UTC with microseconds (`2024-01-02T03:04:05.000006Z`)."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_COUNT = re.compile(r"^\s*(>=)?\s*(\d+)\s*$")


def dumps_problem(value: Any) -> str | None:
    """Why `expect.dumps` is malformed, or None.  Shape: {dump path: {"tables": [names],
    "row_counts": {table: N | ">= N"}}} -- the dump checks' expectations carried by the manifest."""
    if not isinstance(value, dict):
        return "must be an object keyed by dump path"
    for path, spec in value.items():
        if not isinstance(spec, dict) or set(spec) - {"tables", "row_counts"}:
            return f"{path!r}: an object with \"tables\" and/or \"row_counts\""
        tables = spec.get("tables", [])
        if not isinstance(tables, list) or not all(isinstance(t, str) and t for t in tables):
            return f"{path!r}.tables: a list of table names"
        counts = spec.get("row_counts", {})
        if not isinstance(counts, dict):
            return f"{path!r}.row_counts: an object of table -> count"
        for table, want in counts.items():
            if isinstance(want, bool) or not ((_is_int(want) and want >= 0)
                                              or (isinstance(want, str) and _COUNT.match(want))):
                return f"{path!r}.row_counts.{table}: a non-negative integer or \">= N\", got {want!r}"
    return None


def _is_int(value: Any) -> bool:
    """JSON Schema's "integer": a number with no fractional part (booleans are not numbers)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _datetime_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be an RFC 3339 date-time string"
    try:
        parse_rfc3339(value)
    except (ValueError, OverflowError) as exc:
        return str(exc)
    return None


def digest_problems(digests: Any) -> list[str]:
    """Why a `digests` object breaks the rules (empty when it is fine)."""
    if not isinstance(digests, dict):
        return ["digests must be an object"]
    if not digests:
        return ["digests must name at least one algorithm"]
    problems = []
    for alg, value in digests.items():
        length = digest_hex_length(alg) if isinstance(alg, str) else None
        if length is None:
            problems.append(f"unknown digest algorithm {alg!r}")
        elif not isinstance(value, str) or not _LOWER_HEX.fullmatch(value):
            problems.append(f"{alg} digest must be lowercase hex")
        elif len(value) != length:
            problems.append(f"{alg} digest must have {length} hex digits, not {len(value)}")
    return problems


def entry_problems(item: Any) -> list[str]:
    """Why one element of `entries` breaks the rules (empty when it is fine)."""
    if not isinstance(item, dict):
        return ["entry must be an object"]
    problems = [f"unknown key {k!r}" for k in item if k not in ENTRY_KEYS]
    problems += [f"{k} is required" for k in ("path", "size", "digests") if k not in item]
    if "path" in item and (not isinstance(item["path"], str) or not item["path"]):
        problems.append("path must be a non-empty string")
    if "size" in item and not (_is_int(item["size"]) and item["size"] >= 0):
        problems.append("size must be a non-negative integer")
    if "digests" in item:
        problems += digest_problems(item["digests"])
    if "mtime" in item:
        problem = _datetime_problem(item["mtime"])
        if problem:
            problems.append(f"mtime: {problem}")
    return problems


class _Duplicates:
    """object_pairs_hook that remembers keys given twice in one object."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                self.keys.append(key)
            obj[key] = value
        return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_document(data: bytes, location: str) -> tuple[dict[str, Any], list[str]]:
    """Bytes -> (the top-level object, keys repeated somewhere).  Raises ManifestError."""
    duplicates = _Duplicates()
    try:
        text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
        doc = json.loads(text, object_pairs_hook=duplicates, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"{location} is not a JSON document: {exc}") from None
    except RecursionError:
        raise ManifestError(f"{location}: arrays or objects nested too deeply to be a manifest") from None
    if not isinstance(doc, dict) or "reversib_manifest" not in doc:
        raise ManifestError(f"{location} is not a reversib manifest (no 'reversib_manifest' key)")
    version = doc["reversib_manifest"]
    if not (_is_int(version) and version == VERSION):
        raise ManifestError(f"{location}: unsupported reversib_manifest version {version!r} (supported: {VERSION})")
    entries = doc.get("entries")
    if not isinstance(entries, list):
        raise ManifestError(f"{location}: 'entries' must be an array")
    if not entries:
        raise ManifestError(f"manifest is empty: {location} lists no file")
    return doc, duplicates.keys


def parse_json(source: Source, path: str) -> Manifest:
    """Parse reversib's JSON manifest at `path` inside `source`.  I/O errors (OSError) propagate."""
    with source.open_range(path) as stream:
        data = stream.read()
    doc, duplicated = load_document(data, path)
    findings: list[Finding] = []

    def invalid(actual: str, entry_path: str | None = None, detail: str | None = None) -> None:
        findings.append(Finding(FindingKind.MANIFEST_INVALID, entry_path, expected="a valid reversib manifest",
                                actual=actual, detail=detail))

    for key in sorted(set(duplicated)):
        invalid(f"key {key!r} given twice in one object")
    for key in doc:
        if key not in TOP_KEYS:
            invalid(f"unknown top-level key {key!r}")
    for key in ("created",):
        if key in doc and (problem := _datetime_problem(doc[key])):
            invalid(f"{key}: {problem}")
    for key in ("generator", "$schema"):
        if key in doc and not isinstance(doc[key], str):
            invalid(f"{key} must be a string")

    expect: dict[str, Any] = {}
    raw_expect = doc.get("expect", {})
    if not isinstance(raw_expect, dict):
        invalid("expect must be an object")
    else:
        for key, value in raw_expect.items():
            if key in ("min_files", "min_bytes") and not (_is_int(value) and value >= 0):
                invalid(f"expect.{key} must be a non-negative integer")
                continue
            if key == "dumps" and (problem := dumps_problem(value)):
                invalid(f"expect.dumps: {problem}")
                continue
            expect[key] = int(value) if key in ("min_files", "min_bytes") else value

    raw: list[ManifestEntry] = []
    bad_paths: set[str] = set()  # entries rejected whose path is readable: never `unexpected`
    unattributed = 0  # entries rejected without a path
    for index, item in enumerate(doc["entries"]):
        problems = entry_problems(item)
        entry_path = item.get("path") if isinstance(item, dict) and isinstance(item.get("path"), str) else None
        if problems:
            invalid("; ".join(problems), entry_path, f"entry {index}")
            if entry_path is not None:
                bad_paths.add(strip_dot_slash(entry_path))
            else:
                unattributed += 1
            continue
        assert entry_path is not None
        mtime = parse_rfc3339(item["mtime"]) if "mtime" in item else None
        raw.append(ManifestEntry(strip_dot_slash(entry_path), int(item["size"]), dict(item["digests"]), mtime))
    return finalize("json", path, raw, findings, own_paths={strip_dot_slash(path)},
                        digest=hashlib.sha256(data).hexdigest(), expect=expect,
                    rejected=bad_paths, unattributed=unattributed)
