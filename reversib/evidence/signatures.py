"""Manifest authenticity and drift (docs/evidence.md).

* **Signature**: with `manifest.signature`, the manifest must come with an OpenSSH signature
  `<manifest>.sig` (`ssh-keygen -Y sign -f key -n NAMESPACE MANIFEST`) that `ssh-keygen -Y verify`
  accepts for `identity` with the check's allowed-signers file.  The exact bytes that were parsed are
  verified (they are read again and must have the parsed manifest's digest).  No signature file:
  `manifest_unsigned` (error when `required`, else warning); a signature that does not verify (altered
  manifest, unknown key, wrong identity or namespace): `manifest_signature_invalid`.
* **Drift** (`manifest.append_only: true`): compared with what reversib verified before (the
  `entry_state` of the check), a path that is no longer in the manifest is `entry_vanished`, and a path
  whose digest (same algorithm) differs from the digest reversib computed earlier is `digest_changed`:
  a provider regenerating its manifest from corrupt or truncated data does not pass.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from reversib.model import Finding, FindingKind, RunResult, Severity

if TYPE_CHECKING:
    from reversib.config import CheckConfig, SignatureConfig
    from reversib.history import EntryRecord, History
    from reversib.manifests.base import Manifest
    from reversib.sources.base import Source

SIG_SUFFIX = ".sig"
MAX_MANIFEST_BYTES = 1 << 30
MAX_SIG_BYTES = 1 << 16


def check_manifest(check: CheckConfig, export: Source, manifest: Manifest, result: RunResult,
                   history: History | None) -> set[str]:
    """Add the signature and drift findings of `manifest` to `result`; return the export paths that belong
    to reversib's checking (the signature file: never `unexpected`)."""
    own: set[str] = set()
    sig = check.manifest.signature
    if sig is not None:
        place = (check.manifest.path or result.manifest or "").removeprefix("./")
        own.add(place + SIG_SUFFIX)
        result.findings.extend(_signature_findings(export, place, manifest.digest, sig))
    if check.manifest.append_only and history is not None:
        result.findings.extend(drift_findings(manifest, history.entry_states(check.check_id)))
    return own


def _read(export: Source, path: str, limit: int) -> bytes | None:
    """The whole file `path` of the export, None when absent."""
    if export.stat(path) is None:
        return None
    chunks, total = [], 0
    with export.open_range(path) as stream:
        while chunk := stream.read(1 << 16):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise ValueError(f"{path} is larger than {limit} bytes")
    return b"".join(chunks)


def _signature_findings(export: Source, place: str, parsed_digest: str, sig: SignatureConfig) -> list[Finding]:
    def invalid(actual: str) -> list[Finding]:
        return [Finding(FindingKind.MANIFEST_SIGNATURE_INVALID, place, expected=expected, actual=actual)]

    expected = f"a signature by {sig.identity} (namespace {sig.namespace})"
    sig_path = place + SIG_SUFFIX
    signature = _read(export, sig_path, MAX_SIG_BYTES)
    if signature is None:
        return [Finding(FindingKind.MANIFEST_UNSIGNED, place, expected=expected, actual=f"no {sig_path}",
                        severity=Severity.ERROR if sig.required else Severity.WARNING)]
    data = _read(export, place, MAX_MANIFEST_BYTES)
    if data is None or hashlib.sha256(data).hexdigest() != parsed_digest:
        return invalid("the manifest changed after it was read: its signed bytes are not the ones verified")
    ok, message = verify_ssh_signature(data, signature, sig.allowed_signers_file, sig.identity, sig.namespace)
    return [] if ok else invalid(message)


def verify_ssh_signature(data: bytes, signature: bytes, allowed_signers: str, identity: str,
                         namespace: str) -> tuple[bool, str]:
    """`ssh-keygen -Y verify`: (True, its message) when `signature` is a valid signature of `data` by a key
    that `allowed_signers` allows for `identity` and `namespace`; (False, why) otherwise."""
    tool = shutil.which("ssh-keygen")
    if tool is None:
        return False, "ssh-keygen (openssh-client) is not installed: the signature cannot be checked"
    with tempfile.TemporaryDirectory(prefix="reversib-sig-") as tmp:
        sig_file = Path(tmp) / "manifest.sig"
        sig_file.write_bytes(signature)
        proc = subprocess.run([tool, "-Y", "verify", "-f", allowed_signers, "-I", identity, "-n", namespace,
                               "-s", str(sig_file)], input=data, capture_output=True, timeout=60)
    text = " ".join((proc.stdout + proc.stderr).decode("utf-8", "replace").split())
    return proc.returncode == 0, text.replace(str(sig_file), "signature")[:500]


def drift_findings(manifest: Manifest, known: Iterable[EntryRecord]) -> list[Finding]:
    """Vanished paths and changed digests of an append-only dataset, against what reversib verified before.
    Both streams are in code point order: one merge pass, nothing held but the current entries."""
    out: list[Finding] = []
    entries = sorted(manifest.entries, key=lambda e: e.path)
    i = 0
    for rec in known:
        while i < len(entries) and entries[i].path < rec.path:
            i += 1
        if i >= len(entries) or entries[i].path != rec.path:
            out.append(Finding(FindingKind.ENTRY_VANISHED, rec.path, expected="still listed (append-only dataset)",
                               actual="no longer in the manifest"))
            continue
        declared = entries[i].digests
        for algorithm, before in sorted(rec.digests.items()):
            now = declared.get(algorithm)
            if now is not None and now.lower() != before.lower():
                out.append(Finding(FindingKind.DIGEST_CHANGED, rec.path, expected=f"{algorithm}:{before}",
                                   actual=f"{algorithm}:{now} (append-only dataset)"))
                break
    return out
