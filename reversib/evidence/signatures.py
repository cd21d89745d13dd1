"""Manifest authenticity and drift (docs/evidence.md).

* **Signature**: with `manifest.signature`, the manifest must come with a detached signature next to
  it, checked by the real tool of its `type`:
  - `ssh`: `<manifest>.sig` (`ssh-keygen -Y sign -f key -n NAMESPACE MANIFEST`) that `ssh-keygen -Y
    verify` accepts for `identity` with the check's allowed-signers file;
  - `minisign`: `<manifest>.minisig` that `minisign -V -p KEY` accepts for one of `public_key_files`;
  - `openpgp`: `<manifest>.sig` (binary or armored) that `gpg --verify` accepts with a temporary
    keyring holding only `public_key_files` (never the user's keyring).
  The exact bytes that were parsed are verified (they are read again and must have the parsed
  manifest's digest).  No signature file: `manifest_unsigned` (error when `required`, else warning); a
  signature that does not verify (altered manifest, unknown key, wrong identity or namespace):
  `manifest_signature_invalid`.  A signature that cannot be checked here (the tool is not installed, a
  key file cannot be read or imported): `signature_unverifiable`, outcome `error` -- never a failure
  blamed on the provider.
* **Drift** (`manifest.append_only: true`): compared with what reversib verified before (the
  `entry_state` of the check), a path that is no longer in the manifest is `entry_vanished`, and a path
  whose digest (same algorithm) differs from the digest reversib computed earlier is `digest_changed`:
  a provider regenerating its manifest from corrupt or truncated data does not pass.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from reversib.model import Finding, FindingKind, RunResult, Severity

if TYPE_CHECKING:
    from reversib.config import CheckConfig, SignatureConfig
    from reversib.history import EntryRecord, History
    from reversib.manifests.base import Manifest
    from reversib.sources.base import Source

MAX_MANIFEST_BYTES = 1 << 30
MAX_SIG_BYTES = 1 << 16


class CannotCheck(Exception):
    """The signature cannot be checked on this machine (tool missing, key file unreadable or unusable):
    reversib's side, not the provider's -- `signature_unverifiable` (outcome `error`), never a failure."""


def _readable(paths: Iterable[str]) -> None:
    for path in paths:
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise CannotCheck(f"cannot read the key file {path}: {exc.strerror}") from None


def check_manifest(check: CheckConfig, export: Source, manifest: Manifest, result: RunResult,
                   history: History | None) -> set[str]:
    """Add the signature and drift findings of `manifest` to `result`; return the export paths that belong
    to reversib's checking (the signature file: never `unexpected`)."""
    own: set[str] = set()
    sig = check.manifest.signature
    if sig is not None:
        place = (check.manifest.path or result.manifest or "").removeprefix("./")
        own.add(place + sig.sig_suffix)
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

    expected = (f"an OpenSSH signature by {sig.identity} (namespace {sig.namespace})" if sig.type == "ssh"
                else f"a {_TOOL_NAMES[sig.type]} signature by a key of {', '.join(sig.public_key_files)}")
    sig_path = place + sig.sig_suffix
    signature = _read(export, sig_path, MAX_SIG_BYTES)
    if signature is None:
        return [Finding(FindingKind.MANIFEST_UNSIGNED, place, expected=expected, actual=f"no {sig_path}",
                        severity=Severity.ERROR if sig.required else Severity.WARNING)]
    data = _read(export, place, MAX_MANIFEST_BYTES)
    if data is None or hashlib.sha256(data).hexdigest() != parsed_digest:
        return invalid("the manifest changed after it was read: its signed bytes are not the ones verified")
    try:
        if sig.type == "ssh":
            assert sig.allowed_signers_file is not None and sig.identity is not None  # the config validator
            ok, message = verify_ssh_signature(data, signature, sig.allowed_signers_file, sig.identity,
                                               sig.namespace)
        elif sig.type == "minisign":
            ok, message = verify_minisign_signature(data, signature, sig.public_key_files)
        else:
            ok, message = verify_openpgp_signature(data, signature, sig.public_key_files)
    except CannotCheck as exc:
        return [Finding(FindingKind.SIGNATURE_UNVERIFIABLE, place, expected=expected, actual=str(exc))]
    return [] if ok else invalid(message)


_TOOL_NAMES = {"ssh": "OpenSSH", "minisign": "minisign", "openpgp": "OpenPGP"}


def _clean(output: bytes, *replace: str) -> str:
    text = " ".join(output.decode("utf-8", "replace").split())
    for r in replace:
        text = text.replace(r, "signature")
    return text[:500]


def verify_ssh_signature(data: bytes, signature: bytes, allowed_signers: str, identity: str,
                         namespace: str) -> tuple[bool, str]:
    """`ssh-keygen -Y verify`: (True, its message) when `signature` is a valid signature of `data` by a key
    that `allowed_signers` allows for `identity` and `namespace`; (False, why) otherwise."""
    tool = shutil.which("ssh-keygen")
    if tool is None:
        raise CannotCheck("ssh-keygen (openssh-client) is not installed: the signature cannot be checked")
    _readable([allowed_signers])
    with tempfile.TemporaryDirectory(prefix="reversib-sig-") as tmp:
        sig_file = Path(tmp) / "manifest.sig"
        sig_file.write_bytes(signature)
        proc = subprocess.run([tool, "-Y", "verify", "-f", allowed_signers, "-I", identity, "-n", namespace,
                               "-s", str(sig_file)], input=data, capture_output=True, timeout=60)
    return proc.returncode == 0, _clean(proc.stdout + proc.stderr, str(sig_file))


def verify_minisign_signature(data: bytes, signature: bytes, public_keys: Sequence[str]) -> tuple[bool, str]:
    """`minisign -V`: (True, its message) when `signature` is a valid signature of `data` by one of the
    `public_keys` files (minisign's `.pub`: an untrusted comment line and the base64 key); (False, why)
    otherwise.  minisign reads the manifest from a file: the bytes already read are written to a private
    temporary folder, so the verified bytes are exactly the parsed ones."""
    tool = shutil.which("minisign")
    if tool is None:
        raise CannotCheck("minisign is not installed: the signature cannot be checked")
    _readable(public_keys)
    messages = []
    with tempfile.TemporaryDirectory(prefix="reversib-sig-") as tmp:
        manifest, sig_file = Path(tmp) / "manifest", Path(tmp) / "manifest.minisig"
        manifest.write_bytes(data)
        sig_file.write_bytes(signature)
        for key in public_keys:
            # -H is not forced, so legacy (non-prehashed) signatures still verify.
            proc = subprocess.run([tool, "-V", "-p", key, "-m", str(manifest), "-x", str(sig_file)],
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
            if proc.returncode == 0:
                return True, f"signed by the minisign key {key}"
            why = _clean(proc.stdout + proc.stderr, str(sig_file), str(manifest)) or f"exit {proc.returncode}"
            messages.append(f"{Path(key).name}: {why}")
    return False, "; ".join(messages)[:500]


def verify_openpgp_signature(data: bytes, signature: bytes, public_keys: Sequence[str]) -> tuple[bool, str]:
    """`gpg --verify` with a temporary home holding only `public_keys` (never the user's keyring): (True,
    the signer's fingerprint) when gpg reports a good and valid signature (status VALIDSIG, exit 0) by one
    of them; (False, why) otherwise: an unknown key (ERRSIG/NO_PUBKEY), a bad or expired signature, a
    revoked or expired key."""
    tool = shutil.which("gpg")
    if tool is None:
        raise CannotCheck("gpg (gnupg) is not installed: the signature cannot be checked")
    _readable(public_keys)
    with tempfile.TemporaryDirectory(prefix="reversib-gpg-") as home:
        os.chmod(home, 0o700)
        # No agent, no network (no key retrieval), trust = being in this keyring (the configured keys only).
        base = [tool, "--homedir", home, "--batch", "--no-tty", "--no-autostart", "--no-options",
                "--no-auto-key-retrieve", "--trust-model", "always"]
        imported = subprocess.run([*base, "--import", *public_keys], stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=60)
        if imported.returncode != 0:
            raise CannotCheck("the configured OpenPGP public keys cannot be imported: " + _clean(imported.stderr, home))
        sig_file = Path(home) / "manifest.sig"
        sig_file.write_bytes(signature)
        proc = subprocess.run([*base, "--status-fd", "1", "--verify", str(sig_file), "-"], input=data,
                              capture_output=True, timeout=60)
    status = proc.stdout.decode("utf-8", "replace").splitlines()
    codes = {line.split()[1]: line for line in status if line.startswith("[GNUPG:] ") and len(line.split()) > 1}
    bad = [c for c in ("BADSIG", "ERRSIG", "NO_PUBKEY", "EXPSIG", "EXPKEYSIG", "REVKEYSIG") if c in codes]
    if proc.returncode == 0 and "VALIDSIG" in codes and "GOODSIG" in codes and not bad:
        return True, "signed by OpenPGP key " + codes["VALIDSIG"].split()[2]
    why = {"NO_PUBKEY": "signed by a key that is not among the configured public keys",
           "ERRSIG": "the signature cannot be checked (unknown key or algorithm)",
           "BADSIG": "BAD signature: the manifest was altered after signing, or the signature is not for it",
           "EXPSIG": "the signature has expired", "EXPKEYSIG": "signed by an expired key",
           "REVKEYSIG": "signed by a revoked key"}
    reasons = [why[c] for c in ("BADSIG", "NO_PUBKEY", "EXPSIG", "EXPKEYSIG", "REVKEYSIG") if c in codes]
    if not reasons and "ERRSIG" in codes:
        reasons.append(why["ERRSIG"])
    detail = _clean(proc.stderr, str(sig_file), home)
    return False, ("; ".join(reasons) or "no valid OpenPGP signature") + (f" (gpg: {detail})" if detail else "")


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
