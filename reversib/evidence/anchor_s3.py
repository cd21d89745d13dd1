"""Signed chain heads written as objects under S3 Object Lock (`evidence.heads_s3`, docs/evidence.md).

After each completed run, the new head of that run's check is signed (the same Ed25519 key and
document signature as the heads file) and written as its own object

    s3://BUCKET/PREFIX/<check id, percent-encoded>/<seq, 20 digits>.json

with an Object Lock retention (`COMPLIANCE` or `GOVERNANCE`, `retention_days`).  A locked object
version cannot be deleted nor overwritten before its retention ends: a DELETE only hides it behind
a delete marker, so the heads are read back with ListObjectVersions, delete markers ignored.

`reversib audit verify --against s3://BUCKET/PREFIX` reads every version of every head object,
verifies each one's signature and byte layout, and checks each head against the database: a chain
rewritten (or cut) and then anchored again by later runs is still seen at the older objects.  One
object that does not verify makes the whole set untrusted (`SignatureError`).
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from reversib.evidence.anchor import SignatureError, render, sign_document, verify_document
from reversib.evidence.chain import Head
from reversib.history import iso

HEAD_KIND = "reversib-chain-head"
SEQ_DIGITS = 20
MAX_HEAD_BYTES = 1 << 16
READERS = 8  # head objects read in parallel by `every` (one small GET each)


class AnchorError(Exception):
    """The bucket could not be written or read (reversib's own failure, never a verdict)."""


def split_url(url: str) -> tuple[str, str]:
    """`s3://bucket/prefix` -> (bucket, "prefix/") ("" for the bucket's root)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise AnchorError(f"not an s3://bucket/prefix URL: {url!r}")
    prefix = parsed.path.strip("/")
    return parsed.netloc, (prefix + "/") if prefix else ""


class S3Heads:
    """The head objects under one `s3://bucket/prefix`."""

    def __init__(self, url: str, options: Mapping[str, Any] | None = None, *, mode: str = "COMPLIANCE",
                 retention_days: int = 400) -> None:
        from reversib.sources.s3 import _Connection
        from reversib.sources.s3_options import S3Options

        self.url = url
        self.bucket, self.prefix = split_url(url)
        self.mode, self.retention_days = mode, retention_days
        self._conn = _Connection(S3Options.model_validate(dict(options or {})))

    def _client(self) -> Any:
        try:
            return self._conn.client(self.url)
        except Exception as exc:  # SourceError from the options (a secret variable unset...)
            raise AnchorError(self._conn.scrub(str(exc))) from None

    def _fail(self, what: str, exc: Exception) -> AnchorError:
        return AnchorError(self._conn.scrub(f"{what} {self.url} at {self._conn.configured_endpoint()}: {exc}"))

    def key(self, check_id: str, seq: int) -> str:
        return f"{self.prefix}{urllib.parse.quote(check_id, safe='')}/{seq:0{SEQ_DIGITS}d}.json"

    def write(self, head: Head, key: Ed25519PrivateKey, now: dt.datetime) -> str:
        """Sign `head` and put it as a new object locked until now + retention_days; returns its key."""
        document = sign_document({"kind": HEAD_KIND, "schema": 1, "signed_at": iso(now), "check_id": head.check_id,
                                  **head.to_dict()}, key)
        name = self.key(head.check_id, head.seq)
        try:
            self._client().put_object(
                Bucket=self.bucket, Key=name, Body=render(document), ContentType="application/json",
                ObjectLockMode=self.mode,
                ObjectLockRetainUntilDate=now + dt.timedelta(days=self.retention_days),
                ChecksumAlgorithm="SHA256")  # Object Lock puts need a content checksum
        except Exception as exc:
            raise self._fail(f"cannot write the signed head {name} to", exc) from None
        return name

    def every(self, public_key: Ed25519PublicKey) -> dict[str, list[Head]]:
        """Per check, the heads of all its objects in `seq` order (every version of each must verify;
        two versions of one object signing different heads make the set untrusted)."""
        client = self._client()
        objects: dict[tuple[str, int], tuple[str, list[str]]] = {}  # (check, seq) -> (key, version ids)
        try:
            for page in client.get_paginator("list_object_versions").paginate(Bucket=self.bucket,
                                                                               Prefix=self.prefix):
                for version in page.get("Versions", []):
                    parsed = self._parse_key(version["Key"])
                    if parsed is not None:
                        objects.setdefault(parsed, (version["Key"], []))[1].append(version["VersionId"])
        except Exception as exc:
            raise self._fail("cannot list the signed heads in", exc) from None
        reads = [(check_seq, name, v) for check_seq, (name, versions) in objects.items() for v in versions]
        with ThreadPoolExecutor(max_workers=READERS) as pool:
            documents = list(pool.map(lambda r: self._verified(client, r[1], r[2], public_key), reads))
        heads: dict[tuple[str, int], Head] = {}
        for ((check_id, seq), name, _), document in zip(reads, documents, strict=True):
            head = Head(check_id, int(document["seq"]), str(document["run_id"]), str(document["record_digest"]))
            if document.get("check_id") != check_id or head.seq != seq:
                raise SignatureError(f"{name}: the signed head is for {document.get('check_id')!r} link "
                                     f"{head.seq}, not the object's name: it was moved")
            if heads.setdefault((check_id, seq), head) != head:
                raise SignatureError(f"{name}: two versions sign different heads for link {seq}")
        out: dict[str, list[Head]] = {}
        for (check_id, _), head in sorted(heads.items()):
            out.setdefault(check_id, []).append(head)
        return out

    def _parse_key(self, name: str) -> tuple[str, int] | None:
        rest = name[len(self.prefix):]
        check, _, leaf = rest.partition("/")
        if not check or not leaf.endswith(".json") or not leaf[:-5].isdigit() or "/" in leaf:
            return None
        return urllib.parse.unquote(check), int(leaf[:-5])

    def _verified(self, client: Any, name: str, version_id: str, public_key: Ed25519PublicKey) -> dict[str, Any]:
        try:
            body = client.get_object(Bucket=self.bucket, Key=name, VersionId=version_id)["Body"]
            raw = body.read(MAX_HEAD_BYTES + 1)
        except Exception as exc:
            raise self._fail(f"cannot read the signed head {name} (version {version_id}) in", exc) from None
        where = f"s3://{self.bucket}/{name} (version {version_id})"
        try:
            document = json.loads(raw)
        except ValueError:
            raise SignatureError(f"{where} is not JSON") from None
        if not isinstance(document, dict) or document.get("kind") != HEAD_KIND:
            raise SignatureError(f"{where} is not a reversib signed head")
        try:
            verify_document(document, public_key)
        except SignatureError as exc:
            raise SignatureError(f"{where}: {exc}") from None
        if raw != render(document):
            raise SignatureError(f"{where} differs from its signed content (bytes were changed)")
        return document

    def close(self) -> None:
        self._conn.close()


def from_config(config: Any) -> S3Heads:
    """The S3Heads of an `evidence.heads_s3` block (HeadsS3Config)."""
    return S3Heads(config.url, config.s3, mode=config.mode, retention_days=config.retention_days)
