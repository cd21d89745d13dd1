"""Signed chain heads anchored outside the database, and signed documents (docs/evidence.md).

Deleting the newest runs of a check, or rewriting a whole chain consistently, cannot be seen from
inside the database.  After each run the heads of every chain are signed with an Ed25519 key and
written to a file outside it (`evidence.heads_path`); `reversib audit verify --against FILE` then
checks that every anchored head is still a link of the database's chain.

A signed document is a JSON object with a `signature` member:
`{"algorithm": "ed25519", "key_id": ..., "value": base64}` over the canonical JSON of the document
without that member.  The same key signs JSON reports.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from reversib.evidence.chain import Head
from reversib.history import iso
from reversib.model import canonical_json

HEADS_KIND = "reversib-chain-heads"


class SignatureError(Exception):
    """A key could not be loaded, or a signature does not verify."""


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a file: OpenSSH (`ssh-keygen -t ed25519`) or PEM PKCS#8, unencrypted."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read the signing key {path}: {exc.strerror}") from None
    try:
        key: Any = (serialization.load_ssh_private_key(data, None) if b"OPENSSH PRIVATE KEY" in data
                    else serialization.load_pem_private_key(data, None))
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not an unencrypted Ed25519 private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """An Ed25519 public key: an OpenSSH line (`ssh-ed25519 AAAA...`), PEM, or a private key file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read the public key {path}: {exc.strerror}") from None
    if b"PRIVATE KEY" in data:
        return load_private_key(path).public_key()
    try:
        key: Any = (serialization.load_ssh_public_key(data.strip()) if data.lstrip().startswith(b"ssh-")
                    else serialization.load_pem_public_key(data))
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not an Ed25519 public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} is not an Ed25519 key")
    return key


def key_id(key: Ed25519PublicKey) -> str:
    """`ed25519:` + the first 16 hex digits of the sha256 of the raw public key."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def _payload(document: Mapping[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in document.items() if k != "signature"}).encode("ascii")


def sign_document(document: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """`document` with a `signature` member over its canonical JSON (an existing signature is replaced)."""
    signature = key.sign(_payload(document))
    out = {k: v for k, v in document.items() if k != "signature"}
    out["signature"] = {"algorithm": "ed25519", "key_id": key_id(key.public_key()),
                        "value": base64.b64encode(signature).decode("ascii")}
    return out


def verify_document(document: Mapping[str, Any], key: Ed25519PublicKey) -> None:
    """Raise SignatureError unless `document` carries a valid signature by `key`."""
    sig = document.get("signature")
    if not isinstance(sig, dict) or sig.get("algorithm") != "ed25519" or not isinstance(sig.get("value"), str):
        raise SignatureError("the document carries no Ed25519 signature")
    if sig.get("key_id") != key_id(key):
        raise SignatureError(f"signed by {sig.get('key_id')}, not by the expected key {key_id(key)}")
    try:
        key.verify(base64.b64decode(sig["value"], validate=True), _payload(document))
    except (InvalidSignature, ValueError):
        raise SignatureError("the signature does not match the document: it was altered") from None


def verify_file(path: str | Path, key: Ed25519PublicKey) -> dict[str, Any]:
    """Load a signed JSON file and verify it byte for byte as stored (a changed byte fails)."""
    raw = Path(path).read_bytes()
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise SignatureError(f"{path} is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise SignatureError(f"{path} is not a signed JSON document")
    verify_document(document, key)
    # The parsed document verified; the file must also be exactly what `write_signed` writes for it.
    if raw != render(document):
        raise SignatureError(f"{path} differs from its signed content (bytes were changed)")
    return document


def render(document: Mapping[str, Any]) -> bytes:
    """The one byte layout of a signed JSON file (`verify_file` insists on it)."""
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def write_signed(path: str | Path, document: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """Sign `document` and write it atomically (temporary file, fsync, rename)."""
    signed = sign_document(document, key)
    _atomic_write(Path(path), render(signed))
    return signed


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def heads_document(heads: Mapping[str, Head], now: datetime) -> dict[str, Any]:
    return {"kind": HEADS_KIND, "schema": 1, "signed_at": iso(now),
            "heads": {c: h.to_dict() for c, h in sorted(heads.items())}}


class AnchorRefused(Exception):
    """The database's chain no longer holds a head anchored before: the anchor was not moved past it."""


def anchor_heads(path: str | Path, heads: Mapping[str, Head], key: Ed25519PrivateKey, now: datetime,
                 still_linked: Callable[[Head], bool] | None = None) -> dict[str, Any]:
    """Write the signed heads file, merged under a lock with the heads already there: a check's head
    is only ever moved forward (a process that read older heads never moves the anchor back), and only
    along the chain it anchored: when `still_linked` says the database no longer holds the anchored
    head (newest runs deleted, chain rewritten), that check's anchor stays where it is, so that
    `audit verify --against` keeps seeing the tampering however many runs follow, and AnchorRefused
    is raised once the file is written."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    refused: list[str] = []
    with open(target.with_name(target.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged: dict[str, Head] = dict(heads)
        if target.exists():
            previous = verify_file(target, key.public_key())  # never merge with a file we cannot trust
            for check_id, h in previous.get("heads", {}).items():
                anchored = Head(check_id, int(h["seq"]), str(h["run_id"]), str(h["record_digest"]))
                mine = merged.get(check_id)
                if mine is None or mine.seq < anchored.seq:
                    merged[check_id] = anchored  # never backwards (a writer that read older heads)
                if mine is not None and mine != anchored and still_linked is not None and not still_linked(anchored):
                    merged[check_id] = anchored
                    refused.append(f"{check_id}: the anchored head (link {anchored.seq}, run {anchored.run_id}) "
                                   "is no longer in the database's chain")
        elif still_linked is not None and any(h.seq > 1 for h in heads.values()):
            logging.getLogger("reversib.evidence").warning(
                "the heads file %s does not exist: anchoring starts from the database's current heads (if it was "
                "deleted, what it anchored is lost: keep it on write-once storage, or use evidence.heads_s3)", target)
        written = write_signed(target, heads_document(merged, now), key)
    if refused:
        raise AnchorRefused("not moving the signed heads past a changed chain (run `reversib audit verify "
                            f"--against {target}`): " + "; ".join(refused))
    return written


def load_heads(path: str | Path, key: Ed25519PublicKey) -> dict[str, Head]:
    """The heads of a signed heads file; SignatureError when it does not verify."""
    document = verify_file(path, key)
    if document.get("kind") != HEADS_KIND:
        raise SignatureError(f"{path} is not a reversib chain heads file")
    return {c: Head(c, int(h["seq"]), str(h["run_id"]), str(h["record_digest"]))
            for c, h in document.get("heads", {}).items()}


def attach(history: Any, config: Any) -> bool:
    """Anchor the chain heads after each completed run recorded through `history` (`config` is an
    `EvidenceConfig`): every head to the file `heads_path`, and/or the run's check's new head as an
    Object-Locked object under `heads_s3`.  False when neither is configured.  The key is loaded now, so
    that a bad key is a start-up error, not a silent gap in the anchoring."""
    if config is None or not (config.heads_path or config.heads_s3):
        return False
    try:
        key = load_private_key(config.signing_key_file)
    except SignatureError as exc:
        from reversib.config import ConfigError

        raise ConfigError([f"evidence.signing_key_file: {exc}"]) from None
    path = Path(config.heads_path) if config.heads_path else None
    s3 = None
    if config.heads_s3 is not None:
        from reversib.evidence.anchor_s3 import from_config

        s3 = from_config(config.heads_s3)

    public = key.public_key()

    def checkpoint_ok(link: Mapping[str, Any]) -> bool:  # a chain starting at a checkpoint signed by our key
        from reversib.evidence.prune import is_checkpoint, verify_checkpoint

        return is_checkpoint(link) and verify_checkpoint(link, public) is None

    def linked(head: Head) -> bool:
        """Read under the heads file's lock on a connection of its own: a snapshot taken before the lock
        (SQLite keeps one per read transaction) could miss a link another run anchored meanwhile."""
        from reversib.evidence.chain import still_linked

        with history.engine.connect() as conn:
            return still_linked(conn, head, checkpoint_ok)

    def after_finish(check_id: str) -> None:
        from reversib.evidence.chain import read_heads

        now = history._now()
        with history.engine.connect() as conn:
            heads = read_heads(conn) if path is not None else read_heads(conn, [check_id])
        try:
            if path is not None:
                anchor_heads(path, heads, key, now, linked)
        except AnchorRefused as exc:  # tampering seen: said plainly (no traceback), the run stays recorded
            logging.getLogger("reversib.evidence").error("%s", exc)
        finally:  # one anchor failing (logged by the history) never skips the other
            if s3 is not None and check_id in heads:
                s3.write(heads[check_id], key, now)

    history.after_finish.append(after_finish)
    return True



def load_anchored(target: str, key: Ed25519PublicKey, config: Any = None) -> Mapping[str, Sequence[Head]]:
    """The signed heads to check the database against, per check: the head of a heads file, or every
    head object under `s3://bucket/prefix` (each one must still be a link: a chain rewritten and then
    anchored again is seen at the older objects), read with `config.heads_s3.s3`'s connection options
    when configured.  Raises SignatureError (untrusted), OSError (file) or AnchorError (bucket)."""
    if not target.startswith("s3://"):
        return {c: [h] for c, h in load_heads(target, key).items()}
    from reversib.evidence.anchor_s3 import S3Heads

    s3_config = getattr(config, "heads_s3", None)
    heads = S3Heads(target, s3_config.s3 if s3_config is not None else None)
    try:
        return heads.every(key)
    finally:
        heads.close()
