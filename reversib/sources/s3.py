"""`s3://bucket/prefix` source: AWS S3 and S3-compatible stores, through boto3.

* **Prefix semantics**: `s3://bucket/prefix` is the folder `prefix/`: the keys listed are those
  beginning with `prefix/` (a trailing `/` in the URL changes nothing), and an entry's path is the
  key without `prefix/`.  `s3://bucket` is the whole bucket.  The URL is taken literally: no
  percent-decoding, so keys with spaces, `+`, `%` or any Unicode are written as they are.  Keys
  ending in `/` are "directory markers" written by consoles and tools: never listed as entries.
* **Order**: S3 lists keys in UTF-8 byte order, which is the canonical order of sources/base.py,
  so the listing streams page by page (1,000 keys) into the verifier's merge: memory stays flat.
* **One client**: every source of a check (the root, its generation, a manifest in the same bucket)
  shares one boto3 client, created on first use (never in the constructor), with a connection pool
  of `max_connections` and botocore's *standard* retry mode (throttling such as 503 SlowDown and
  5xx answers are retried with backoff, `max_attempts` in all).
* **Reads**: every object is streamed through reversib's own digests (boto3's response checksum
  validation is an extra, configurable).  A body that breaks mid-object (connection reset, cut,
  read timeout) is resumed with `Range: bytes=N-` from the last byte handed to the hasher, and
  `If-Match` on the ETag first seen, so the verifier sees one continuous stream of one version.
* **Stored checksums**: `digests_without_download` answers from `HeadObject` with
  `ChecksumMode=ENABLED`: full-object `ChecksumSHA256`/`SHA1`, or a plain ETag (single-part, not
  SSE-KMS/SSE-C) as MD5.  Composite (multipart) checksums and `-N` ETags are never compared with a
  whole-file digest: they are returned as `StoredDigests.composite`, which the verifier compares with
  the values derived from the part digests of the object's last full download (`PartDigests`,
  computed by the stream and handed over as `extra_digests`; see docs/s3.md).
* **Read-ahead**: an object of at least READ_AHEAD_MIN bytes is read by a background thread, at most
  READ_AHEAD_CHUNKS chunks ahead of the hasher, so that the network transfer and the hashing overlap.
* **Errors**: credentials, a missing bucket or an endpoint that cannot be reached raise
  `SourceError` naming the bucket and the endpoint; secrets never appear in a message.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import errno
import hashlib
import http.client
import logging
import os
import queue
import re
import threading
import zlib
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from reversib.queues import put_unless
from reversib.sources.base import (
    CancelToken,
    Capabilities,
    Entry,
    RateLimiter,
    Source,
    SourceError,
    StoredDigests,
)
from reversib.sources.s3_direct import DirectGet
from reversib.sources.s3_options import S3Options

log = logging.getLogger("reversib.sources.s3")

# S3's full-object checksum headers -> reversib algorithm names (base64 in S3, lowercase hex here).
CHECKSUM_FIELDS = (
    ("ChecksumSHA256", "sha256"),
    ("ChecksumSHA1", "sha1"),
    ("ChecksumCRC64NVME", "crc64nvme"),
    ("ChecksumCRC32C", "crc32c"),
    ("ChecksumCRC32", "crc32"),
)
STORED_ALGORITHMS = frozenset({"md5", *(alg for _, alg in CHECKSUM_FIELDS)})
# Composite values recorded at a full download and compared at later runs (reversib/verify.py):
# the multipart ETag, and "<alg>-composite" for a composite checksum of one of these algorithms.
ETAG_KEY = "s3-etag"
PART_ALGORITHMS = ("sha256", "sha1", "crc32")  # hashlib / zlib; CRC32C and CRC64NVME: not computed
READ_AHEAD_MIN = 16 << 20  # objects from this size are read ahead by a background thread...
READ_AHEAD_CHUNK = 4 << 20  # ...in chunks of this size (fewer thread hand-offs than 1 MiB: measured)...
READ_AHEAD_CHUNKS = 2  # ...at most this many queued ahead of the hasher...
READ_AHEAD_OBJECTS = 4  # ...for at most this many objects at once per connection (memory: 4 x 16 MiB)
MAX_PART_HEADS = 1000  # HEAD ?partNumber requests for one object whose parts are not uniform
_MULTIPART_ETAG = re.compile(r"^([0-9a-f]{32})-([0-9]+)$")
DEFAULT_MAX_ATTEMPTS = 5
PAGE_SIZE = 1000

# Error codes that mean "these credentials cannot do this here": the place is unusable.
_AUTH_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem", "InvalidClientTokenId", "403", "Forbidden",
    "AuthorizationHeaderMalformed", "RequestTimeTooSkewed",
})
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix/` -> ("bucket", "some/prefix/"); the whole bucket -> ("bucket", "")."""
    if not url.lower().startswith("s3://"):
        raise SourceError(f"not an s3:// URL: {url!r}")
    bucket, _, key = url[5:].partition("/")
    if not bucket:
        raise SourceError(f"no bucket name in {url!r} (expected s3://bucket/prefix)")
    key = key.rstrip("/")
    return bucket, key + "/" if key else ""


def parse_timestamp(value: Any) -> datetime:
    """A timestamp of an S3 response, as an aware datetime: ISO 8601 (XML bodies: `2026-11-28T16:39:01.000Z`)
    and RFC 7231 (headers: `Sat, 28 Nov 2026 16:39:01 GMT`) by the standard library (~100x faster than
    dateutil); anything else by botocore's own parser."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value) if "T" in value else email.utils.parsedate_to_datetime(value)
        except (ValueError, TypeError, IndexError):
            parsed = None
        if parsed is not None:
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)  # S3 says UTC
    from botocore.utils import parse_timestamp as botocore_parse

    parsed = botocore_parse(value)
    assert isinstance(parsed, datetime)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def _b64_to_hex(value: str) -> str | None:
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return None


def multipart_count(etag: str | None) -> int | None:
    """N for an S3 multipart ETag `"<md5 of the part md5s>-N"`, else None."""
    match = _MULTIPART_ETAG.match(str(etag or "").strip('"').lower())
    return int(match.group(2)) if match and int(match.group(2)) > 0 else None


class _Crc32:
    """zlib.crc32 with a hashlib-like face: digest() is the big-endian 4 bytes S3 uses."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | memoryview) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


def _part_hasher(alg: str) -> Any:
    return _Crc32() if alg == "crc32" else hashlib.new(alg)


def composite_value(alg: str, part_digests: Sequence[bytes]) -> str:
    """S3's composite construction: the `alg` digest of the concatenated binary part digests, as
    lowercase hex + `-N`.  For md5 this is the multipart ETag."""
    h = _part_hasher(alg)
    h.update(b"".join(part_digests))
    return f"{h.digest().hex()}-{len(part_digests)}"


def composite_key(alg: str) -> str:
    return ETAG_KEY if alg == "md5" else f"{alg}-composite"


def uniform_part_sizes(size: int, first: int, count: int) -> list[int] | None:
    """Part sizes of an upload in `count` parts of `first` bytes but the last (what every SDK does), or
    None when `size` cannot be cut that way."""
    if count < 1 or first <= 0:
        return None
    last = size - first * (count - 1)
    if not 0 < last <= first:
        return None
    return [first] * (count - 1) + [last]


class PartDigests:
    """The digests of each part of a multipart object, computed while its bytes flow past, and the
    composite values S3 derives from them (`result()`)."""

    def __init__(self, sizes: Sequence[int], algorithms: Sequence[str]) -> None:
        self.sizes = list(sizes)
        self.algorithms = tuple(algorithms)
        self.parts: list[list[bytes]] = []  # per part, one digest per algorithm
        self._left = self.sizes[0] if self.sizes else 0
        self._hashers = [_part_hasher(a) for a in self.algorithms]
        self.overflow = False  # more bytes than the parts hold: the layout was wrong

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while len(view):
            if len(self.parts) >= len(self.sizes):
                self.overflow = True
                return
            take = min(self._left, len(view))
            chunk = view[:take]
            for h in self._hashers:
                h.update(chunk)
            view = view[take:]
            self._left -= take
            if self._left == 0:
                self.parts.append([h.digest() for h in self._hashers])
                if len(self.parts) < len(self.sizes):
                    self._left = self.sizes[len(self.parts)]
                    self._hashers = [_part_hasher(a) for a in self.algorithms]

    def result(self) -> dict[str, str]:
        """{composite key: value} once every part was hashed, else {}."""
        if self.overflow or not self.sizes or len(self.parts) != len(self.sizes):
            return {}
        return {composite_key(a): composite_value(a, [p[i] for p in self.parts])
                for i, a in enumerate(self.algorithms)}


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", "") or "")
    if not code:
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(status or "")
    return code


def _status(exc: Exception) -> int:
    response = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


class S3Stats:
    """Requests of one connection, for logs, tests and benchmarks (thread-safe counters)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.gets = 0
        self.heads = 0
        self.lists = 0
        self.resumes = 0
        self.direct_gets = 0  # GETs answered through the direct path (s3_direct.py), counted in `gets` too

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)


class _Connection:
    """The one boto3 client of a check, shared by the root source and the sources made from it."""

    def __init__(self, options: S3Options) -> None:
        self.options = options
        self._lock = threading.Lock()
        self._client: Any = None
        self.endpoint: str | None = None
        self.secrets: list[str] = []  # values to scrub from any message, whatever happens
        self.stats = S3Stats()
        self.protection_logged = False
        self.buckets_seen: set[str] = set()
        self.read_ahead_slots = threading.BoundedSemaphore(READ_AHEAD_OBJECTS)
        self.direct: DirectGet | None = None  # GETs without botocore's pipeline (s3_direct.py)

    def configured_endpoint(self) -> str:
        return (self.endpoint or self.options.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3")

    def scrub(self, text: str) -> str:
        for s in self.secrets:
            if s:
                text = text.replace(s, "***")
        return text

    def client(self, place: str) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._make(place)
            return self._client

    @property
    def connected(self) -> bool:
        return self._client is not None

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            direct, self.direct = self.direct, None
        if direct is not None:
            direct.close()
        if client is not None:
            try:
                client.close()
            except Exception:  # closing must never fail a run
                log.debug("closing the S3 client failed", exc_info=True)

    # -- building the client --------------------------------------------------------------
    def _read_secret(self, env: str | None, file: str | None, what: str, place: str) -> str | None:
        if env is not None:
            value = os.environ.get(env, "").strip()
            if not value:
                raise SourceError(f"{place}: {what}: environment variable {env} is not set")
        elif file is not None:
            try:
                value = Path(os.path.expanduser(file)).read_text().strip()
            except OSError as exc:
                raise SourceError(f"{place}: {what}: cannot read {file}: {exc.strerror}") from None
            if not value:
                raise SourceError(f"{place}: {what}: {file} is empty")
        else:
            return None
        self.secrets.append(value)
        return value

    def _make(self, place: str) -> Any:
        import boto3
        import botocore.exceptions
        import botocore.session
        from botocore.config import Config

        o = self.options
        kwargs: dict[str, Any] = {}
        if o.profile is not None:
            kwargs["profile_name"] = o.profile
        key_id = o.access_key_id or self._read_secret(o.access_key_id_env, o.access_key_id_file,
                                                      "access key id", place)
        secret = self._read_secret(o.secret_access_key_env, o.secret_access_key_file, "secret access key", place)
        token = self._read_secret(o.session_token_env, o.session_token_file, "session token", place)
        if key_id is not None:
            kwargs.update(aws_access_key_id=key_id, aws_secret_access_key=secret, aws_session_token=token)
        core = botocore.session.get_session()
        # Timestamps (each listed key's LastModified, each response's Last-Modified header) parsed by the
        # standard library: botocore's default, dateutil, costs ~35 us each -- 35 s per million keys listed.
        core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse_timestamp)
        try:
            session = boto3.session.Session(botocore_session=core, **kwargs)
        except botocore.exceptions.ProfileNotFound:
            raise SourceError(f"{place}: AWS profile {o.profile!r} not found") from None
        region = o.region or session.region_name or "us-east-1"
        verify: bool | str = os.path.expanduser(o.ca_bundle) if o.ca_bundle else o.verify_tls
        attempts = o.max_attempts or _env_int("AWS_MAX_ATTEMPTS") or DEFAULT_MAX_ATTEMPTS
        extra: dict[str, Any] = {}
        if o.request_checksum_calculation is not None:
            extra["request_checksum_calculation"] = o.request_checksum_calculation
        if o.response_checksum_validation is not None:
            extra["response_checksum_validation"] = o.response_checksum_validation
        config = Config(region_name=region, signature_version="s3v4", s3={"addressing_style": o.addressing_style},
                        retries={"mode": "standard", "max_attempts": attempts},
                        max_pool_connections=o.max_connections, connect_timeout=o.connect_timeout,
                        read_timeout=o.read_timeout, tcp_keepalive=True, user_agent_appid="reversib", **extra)
        if o.role_arn is not None:
            self._assume_role(session, region, verify, config, place)
        client = session.client("s3", endpoint_url=o.endpoint_url, verify=verify, config=config)
        self.endpoint = client.meta.endpoint_url
        if o.direct_get:
            explicit = o.response_checksum_validation or os.environ.get("AWS_RESPONSE_CHECKSUM_VALIDATION")
            self.direct = DirectGet.for_client(client, session.get_credentials(), verify,
                                               explicit.strip().lower() if explicit else None)
        return client

    def _assume_role(self, session: Any, region: str, verify: bool | str, config: Any, place: str) -> None:
        """Credentials of `role_arn`, refreshed by botocore before they expire."""
        from botocore.credentials import RefreshableCredentials

        o = self.options
        sts = session.client("sts", region_name=region, endpoint_url=o.sts_endpoint_url, verify=verify,
                             config=config)

        def fetch() -> dict[str, str]:
            request: dict[str, str] = {"RoleArn": str(o.role_arn), "RoleSessionName": o.role_session_name}
            if o.external_id is not None:
                request["ExternalId"] = o.external_id
            c = sts.assume_role(**request)["Credentials"]
            self.secrets.extend([c["SecretAccessKey"], c["SessionToken"]])
            return {"access_key": c["AccessKeyId"], "secret_key": c["SecretAccessKey"], "token": c["SessionToken"],
                    "expiry_time": c["Expiration"].isoformat()}

        try:
            metadata = fetch()
        except Exception as exc:
            raise SourceError(f"{place}: cannot assume role {o.role_arn} at {sts.meta.endpoint_url}: "
                              f"{self.scrub(_short_error(exc))}") from None
        credentials = RefreshableCredentials.create_from_metadata(metadata=metadata, refresh_using=fetch,
                                                                  method="assume-role")
        session._session._credentials = credentials  # botocore's documented refreshable-credentials hook


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _short_error(exc: BaseException) -> str:
    code = _code(exc) if isinstance(exc, Exception) else ""
    if code:
        message = (getattr(exc, "response", None) or {}).get("Error", {}).get("Message") or ""
        code = f"HTTP {code}" if code.isdigit() else code
        return f"{code}{': ' + str(message) if message else ''}"
    return f"{type(exc).__name__}: {exc}"


def _bad_segment(path: str) -> bool:
    return any(part in (".", "..") for part in path.split("/"))


class S3Source(Source):
    scheme = "s3"

    def __init__(self, url: str, options: S3Options | None = None, *, cancel: CancelToken | None = None,
                 limiter: RateLimiter | None = None, _connection: _Connection | None = None):
        super().__init__(url, cancel=cancel, limiter=limiter)
        self.bucket, self.prefix = parse_s3_url(url)
        self.options = options or S3Options()
        self._owner = _connection is None
        self._conn = _connection or _Connection(self.options)

    # -- helpers ------------------------------------------------------------------------
    @property
    def stats(self) -> S3Stats:
        return self._conn.stats

    def _client(self) -> Any:
        return self._conn.client(self.describe())

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self._conn.configured_endpoint()}"

    def _key(self, path: str) -> str:
        return self.prefix + path

    def _place_error(self, exc: BaseException, action: str) -> SourceError:
        """An error that makes this place unusable, as a SourceError without secrets."""
        import botocore.exceptions as bx

        where = self.describe()
        code = _code(exc) if isinstance(exc, Exception) else ""
        if code == "NoSuchBucket":
            text = f"bucket {self.bucket} does not exist at {self._conn.configured_endpoint()}"
        elif code in _AUTH_CODES:
            text = f"access denied while trying to {action} {where} ({_short_error(exc)}): check the credentials " \
                   "and permissions"
        elif isinstance(exc, bx.NoCredentialsError):
            text = (f"no credentials for {where}: set source.s3 access keys, a profile, or boto3's environment "
                    "(AWS_ACCESS_KEY_ID...)")
        elif isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ConnectionClosedError,
                              bx.SSLError, bx.ProxyConnectionError, bx.ReadTimeoutError)):
            text = f"cannot reach the S3 endpoint {self._conn.configured_endpoint()} to {action} {where}: " \
                   f"{type(exc).__name__}"
        else:
            text = f"cannot {action} {where}: {_short_error(exc)}"
        return SourceError(self._conn.scrub(text))

    def _is_place_error(self, exc: BaseException) -> bool:
        import botocore.exceptions as bx

        if isinstance(exc, bx.ClientError):
            code = _code(exc)
            return code in _AUTH_CODES or code == "NoSuchBucket" or _status(exc) >= 500
        return isinstance(exc, bx.BotoCoreError)

    # -- the interface ------------------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(digests_without_download=STORED_ALGORITHMS, latency_bound=True, recheck_mismatch=True,
                            parallelism=self.options.concurrency)

    def iter_entries(self) -> Iterator[Entry]:
        import botocore.exceptions as bx

        client = self._client()
        pages = iter(client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix, PaginationConfig={"PageSize": PAGE_SIZE}))
        cut = len(self.prefix)
        while True:
            self.cancel.check()
            try:
                page = next(pages)
            except StopIteration:
                return
            except (bx.ClientError, bx.BotoCoreError) as exc:
                raise self._place_error(exc, "list") from None
            self.stats.add("lists")
            self._log_protection()
            for obj in page.get("Contents", ()):
                key: str = obj["Key"]
                if key.endswith("/") or not key.startswith(self.prefix):
                    continue  # a "directory" marker
                rel = key[cut:]
                yield Entry(rel, int(obj["Size"]), obj["LastModified"].timestamp(),
                            problem="key has a '.' or '..' path segment" if _bad_segment(rel) else None)

    def _head(self, path: str, **extra: str) -> dict[str, Any] | None:
        import botocore.exceptions as bx

        try:
            answer: dict[str, Any] = self._client().head_object(Bucket=self.bucket, Key=self._key(path), **extra)
        except bx.ClientError as exc:
            if _code(exc) in _MISSING_KEY_CODES:
                self._check_bucket()  # a HEAD answers a bare 404 for a missing bucket too
                return None
            raise self._place_error(exc, "read") from None
        except bx.BotoCoreError as exc:
            raise self._place_error(exc, "read") from None
        finally:
            self.stats.add("heads")
        return answer

    def _check_bucket(self) -> None:
        """Raise SourceError when the bucket does not exist (checked once per connection)."""
        import botocore.exceptions as bx

        if self.bucket in self._conn.buckets_seen:
            return
        try:
            self._client().head_bucket(Bucket=self.bucket)
        except bx.ClientError as exc:
            if _code(exc) in ("404", "NoSuchBucket", "NotFound"):
                raise SourceError(f"bucket {self.bucket} does not exist at {self._conn.configured_endpoint()}") \
                    from None
            raise self._place_error(exc, "read") from None
        except bx.BotoCoreError as exc:
            raise self._place_error(exc, "read") from None
        self._conn.buckets_seen.add(self.bucket)

    def stat(self, path: str) -> Entry | None:
        if not path or path.endswith("/") or _bad_segment(path):
            return None
        head = self._head(path)
        if head is None:
            return None
        return Entry(path, int(head["ContentLength"]), head["LastModified"].timestamp())

    def _open_raw(self, path: str, offset: int) -> BinaryIO:
        if not path or path.startswith("/") or _bad_segment(path):
            raise PermissionError(errno.EPERM, f"refusing to open {path!r}: not a key below the prefix")
        return _ResumingStream(self, self._key(path), offset)  # type: ignore[return-value]

    def _open_raw_range(self, path: str, offset: int, length: int) -> BinaryIO:
        """An exact `Range: bytes=offset-(offset+length-1)`: no byte after the range leaves the store."""
        if not path or path.startswith("/") or _bad_segment(path):
            raise PermissionError(errno.EPERM, f"refusing to open {path!r}: not a key below the prefix")
        return _ResumingStream(self, self._key(path), offset, offset + length)  # type: ignore[return-value]

    def child_dirs(self) -> list[str]:
        import botocore.exceptions as bx

        names: list[str] = []
        try:
            for page in self._client().get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"):
                self.stats.add("lists")
                for p in page.get("CommonPrefixes", ()):
                    name = p["Prefix"][len(self.prefix):-1]
                    if name and name not in (".", ".."):
                        names.append(name)
        except (bx.ClientError, bx.BotoCoreError) as exc:
            raise self._place_error(exc, "list") from None
        return sorted(names)

    def sub(self, name: str) -> S3Source:
        return S3Source(f"s3://{self.bucket}/{self.prefix}{name}", self.options, cancel=self.cancel,
                        limiter=self.limiter, _connection=self._conn)

    def relative(self, location: str) -> str | None:
        if not location.lower().startswith("s3://"):
            return None
        bucket, _, key = location[5:].partition("/")
        if bucket != self.bucket:
            return None
        if key.rstrip("/") + "/" == self.prefix or key == self.prefix:
            return ""
        if key.startswith(self.prefix):
            return key[len(self.prefix):]
        return None

    def part_layout(self, key: str, count: int, size: int) -> tuple[list[int], dict[str, str]] | None:
        """The part sizes of a multipart object of `count` parts, and its composite checksums
        ({algorithm: hex-N}, among PART_ALGORITHMS), or None when the store does not tell them.

        Sizes come from GetObjectAttributes' ObjectParts when the store returns them (AWS); else from
        `HEAD ?partNumber=1` (uniform parts, the last one shorter: what every SDK uploads), else from a
        HEAD of every part.  A wrong layout is harmless: the ETag derived from it would not match the
        object's, and nothing is recorded."""
        import botocore.exceptions as bx

        client = self._client()
        sizes: list[int] = []
        checksums: dict[str, str] = {}
        marker = 0
        try:
            while True:
                request: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "MaxParts": 1000,
                                           "ObjectAttributes": ["Checksum", "ObjectParts"]}
                if marker:
                    request["PartNumberMarker"] = marker
                answer = client.get_object_attributes(**request)
                self.stats.add("heads")
                checksum = answer.get("Checksum") or {}
                if not checksums and str(checksum.get("ChecksumType") or "COMPOSITE").upper() == "COMPOSITE":
                    for field, alg in CHECKSUM_FIELDS:
                        value = str(checksum.get(field) or "")
                        hexed = _b64_to_hex(value.partition("-")[0]) if value else None
                        if alg in PART_ALGORITHMS and hexed:
                            checksums[alg] = f"{hexed}-{count}"
                parts = answer.get("ObjectParts") or {}
                sizes.extend(int(p["Size"]) for p in parts.get("Parts") or () if p.get("Size") is not None)
                if not parts.get("IsTruncated") or not parts.get("NextPartNumberMarker"):
                    break
                marker = int(parts["NextPartNumberMarker"])
        except (bx.ClientError, bx.BotoCoreError, KeyError, ValueError) as exc:
            log.debug("GetObjectAttributes of s3://%s/%s: %s", self.bucket, key, _short_error(exc))
            sizes = []
        if len(sizes) != count or sum(sizes) != size:
            sizes = self._part_sizes_by_head(key, count, size) or []
        return (sizes, checksums) if sizes else None

    def _part_sizes_by_head(self, key: str, count: int, size: int) -> list[int] | None:
        import botocore.exceptions as bx

        def part(n: int) -> int:
            try:
                return int(self._client().head_object(Bucket=self.bucket, Key=key, PartNumber=n)["ContentLength"])
            finally:
                self.stats.add("heads")

        try:
            sizes = uniform_part_sizes(size, part(1), count)
            if sizes is None and count <= MAX_PART_HEADS:
                sizes = [part(n) for n in range(1, count + 1)]
        except (bx.ClientError, bx.BotoCoreError, KeyError, ValueError) as exc:
            log.debug("HEAD ?partNumber of s3://%s/%s: %s", self.bucket, key, _short_error(exc))
            return None
        return sizes if sizes is not None and sum(sizes) == size else None

    def digests_without_download(self, entry: Entry, algorithms: tuple[str, ...]) -> StoredDigests | None:
        """Full-object checksums and a plain ETag for `algorithms` (`digests`), and the composite values
        of a multipart object (`composite`: the `-N` ETag, composite checksums as hex-N), which the
        verifier compares with those recorded at the object's last full download."""
        head = self._head(entry.path, ChecksumMode="ENABLED")
        if head is None:
            raise FileNotFoundError(errno.ENOENT, f"no such key: s3://{self.bucket}/{self._key(entry.path)}")
        found: dict[str, str] = {}
        how: list[str] = []
        composite: dict[str, str] = {}
        composite_how: list[str] = []
        parts = multipart_count(head.get("ETag"))
        kind = str(head.get("ChecksumType") or "").upper()
        # A multipart object's checksum is composite unless the store says FULL_OBJECT (moto omits both
        # the type and the "-N" suffix).
        is_composite = kind == "COMPOSITE" or (parts is not None and kind != "FULL_OBJECT")
        for field, alg in CHECKSUM_FIELDS:
            value = str(head.get(field) or "")
            if not value:
                continue
            if is_composite or "-" in value:  # a digest of part digests: never compared with a whole file
                b64, _, suffix = value.partition("-")
                n = int(suffix) if suffix.isdigit() else parts
                hexed = _b64_to_hex(b64)
                if alg in PART_ALGORITHMS and hexed is not None and n:
                    composite[composite_key(alg)] = f"{hexed}-{n}"
                    composite_how.append(f"{field} (composite)")
                continue
            if alg not in algorithms:
                continue
            hexed = _b64_to_hex(value)
            if hexed is not None:
                found[alg] = hexed
                how.append(f"S3 {field} (full object)")
        etag = str(head.get("ETag") or "").strip('"').lower()
        if parts is not None:
            composite[ETAG_KEY] = etag
            composite_how.insert(0, "ETag")
        if ("md5" in algorithms and self.options.trust_etag_md5 and len(etag) == 32
                and all(c in "0123456789abcdef" for c in etag)
                and str(head.get("ServerSideEncryption") or "") not in ("aws:kms", "aws:kms:dsse")
                and not head.get("SSECustomerAlgorithm")):
            found["md5"] = etag
            how.append("S3 ETag (single-part upload: MD5)")
        if found:
            return StoredDigests("stored_checksum", found, ", ".join(how), composite=composite)
        if composite:
            return StoredDigests("stored_checksum", {}, "S3 composite " + " and ".join(composite_how),
                                 composite=composite)
        return None

    def describe_protection(self) -> dict[str, str]:
        """Bucket versioning and Object Lock (a provider able to delete the export is worth knowing)."""
        import botocore.exceptions as bx

        client = self._client()
        out: dict[str, str] = {}
        try:
            status = client.get_bucket_versioning(Bucket=self.bucket).get("Status")
            out["versioning"] = str(status) if status else "never enabled"
        except (bx.ClientError, bx.BotoCoreError) as exc:
            out["versioning"] = f"unknown ({_code(exc) or type(exc).__name__})"
        try:
            conf = client.get_object_lock_configuration(Bucket=self.bucket).get("ObjectLockConfiguration", {})
            state = "enabled" if conf.get("ObjectLockEnabled") == "Enabled" else "not enabled"
            retention = conf.get("Rule", {}).get("DefaultRetention")
            if retention:
                period = ", ".join(f"{v} {k.lower()}" for k, v in retention.items() if k in ("Days", "Years") and v)
                state += f", default retention {retention.get('Mode', '?')} {period}".rstrip()
            out["object_lock"] = state
        except bx.ClientError as exc:
            code = _code(exc)
            out["object_lock"] = "not enabled" if code == "ObjectLockConfigurationNotFoundError" \
                else f"unknown ({code})"
        except bx.BotoCoreError as exc:
            out["object_lock"] = f"unknown ({type(exc).__name__})"
        return out

    def _log_protection(self) -> None:
        if self._conn.protection_logged:
            return
        self._conn.protection_logged = True
        p = self.describe_protection()
        log.info("%s: bucket versioning %s; Object Lock %s", self.describe(), p["versioning"], p["object_lock"],
                 extra={"event": "s3_protection", "bucket": self.bucket, **p})

    def close(self) -> None:
        if not self._owner or not self._conn.connected:
            return
        s = self._conn.stats
        if s.gets or s.heads or s.lists:
            log.debug("%s: %d GET (%d direct), %d HEAD, %d LIST requests, %d resumed reads", self.describe(), s.gets,
                      s.direct_gets, s.heads, s.lists, s.resumes)
        self._conn.close()


def _transient() -> tuple[type[BaseException], ...]:
    import botocore.exceptions as bx
    import urllib3.exceptions as ux

    return (bx.ResponseStreamingError, bx.IncompleteReadError, bx.ReadTimeoutError, bx.ConnectionClosedError,
            ux.ProtocolError, ux.ReadTimeoutError, http.client.IncompleteRead, ConnectionError, TimeoutError)


class _ResumingStream:
    """One object's bytes from `offset` to the end (or to `stop`, exclusive: an exact `Range`, as for a
    challenge read), resumed with a ranged GET after a broken body."""

    def __init__(self, source: S3Source, key: str, offset: int, stop: int | None = None) -> None:
        self._src = source
        self._key = key
        self._pos = offset  # the next byte the reader gets
        self._range_end = stop
        self._end: int | None = None  # object size (or `stop` when smaller)
        self._etag: str | None = None
        self._body: Any = None
        self._resumes = 0
        self._transient = _transient()
        import botocore.exceptions as bx

        self._checksum_error: type[Exception] = bx.FlexibleChecksumError
        self._parts: PartDigests | None = None
        self._expected: dict[str, str] = {}  # the composite values the object claims
        self._thread: threading.Thread | None = None
        self._ahead: memoryview | None = None  # the chunk being handed out, from the read-ahead thread
        self._ahead_at = 0
        self._eof = False
        self._open()
        count = multipart_count(self._etag)
        if offset == 0 and stop is None and count and self._end and source.options.part_digests:
            layout = source.part_layout(key, count, self._end)
            if layout is not None:
                sizes, checksums = layout
                self._parts = PartDigests(sizes, ("md5", *checksums))
                self._expected = {ETAG_KEY: str(self._etag).strip('"').lower(),
                                  **{composite_key(a): v for a, v in checksums.items()}}
        if (self._end is not None and self._end - offset >= READ_AHEAD_MIN and stop is None
                and source.options.read_ahead and source._conn.read_ahead_slots.acquire(blocking=False)):
            try:
                self._start_read_ahead()
            except BaseException:
                source._conn.read_ahead_slots.release()
                raise

    @property
    def extra_digests(self) -> dict[str, str] | None:
        """A multipart object read whole: the composite values derived from the part digests computed
        here, those equal to what the object claims (its ETag, its composite checksums)."""
        if self._parts is None or self._end is None or self._pos != self._end:
            return None
        derived = self._parts.result()
        out = {k: v for k, v in derived.items() if self._expected.get(k) == v}
        if derived and len(out) != len(derived):
            log.info("s3://%s/%s: part digests do not give the object's %s (not recorded)", self._src.bucket,
                     self._key, ", ".join(sorted(set(derived) - set(out))))
        return out or None

    @property
    def resumes(self) -> int:
        return self._resumes

    def _open(self) -> None:
        import botocore.exceptions as bx

        src = self._src
        request: dict[str, str] = {"Bucket": src.bucket, "Key": self._key}
        if self._pos or self._range_end is not None:
            request["Range"] = f"bytes={self._pos}-" + (f"{self._range_end - 1}" if self._range_end is not None else "")
        if self._etag:
            request["IfMatch"] = self._etag
        name = f"s3://{src.bucket}/{self._key}"
        answer = self._direct(request)
        try:
            if answer is None:
                src.stats.add("gets")
                answer = src._client().get_object(**request)
        except bx.ClientError as exc:
            code = _code(exc)
            if code in _MISSING_KEY_CODES:
                raise FileNotFoundError(errno.ENOENT, f"no such key: {name}") from None
            if code in ("PreconditionFailed", "412"):
                raise OSError(errno.EIO, f"{name} changed while it was read (ETag no longer {self._etag})") from None
            if code == "InvalidObjectState":
                raise OSError(errno.EIO, f"{name} is archived: restore it before verifying") from None
            if code == "InvalidRange":
                raise OSError(errno.EIO, f"{name}: range from byte {self._pos} refused (object shorter?)") from None
            if src._is_place_error(exc):
                raise src._place_error(exc, "read") from None
            raise OSError(errno.EIO, f"{name}: {_short_error(exc)}") from None
        except bx.BotoCoreError as exc:
            raise src._place_error(exc, "read") from None
        self._etag = self._etag or answer.get("ETag")
        body = answer["Body"]
        content_range = str(answer.get("ContentRange") or "")
        if (self._pos or self._range_end is not None) and not content_range.startswith(f"bytes {self._pos}-"):
            # The store ignored the Range header and sent the whole object: skip what was delivered.
            self._end = int(answer["ContentLength"])
            left = self._pos
            while left > 0:
                chunk = body.read(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
        elif content_range:
            total = content_range.rpartition("/")[2]
            self._end = int(total) if total.isdigit() else None
        else:
            self._end = self._pos + int(answer["ContentLength"])
        if self._range_end is not None and self._end is not None:
            self._end = min(self._end, self._range_end)
        self._body = body

    def _direct(self, request: dict[str, str]) -> dict[str, Any] | None:
        """The answer of the direct path (s3_direct.py) when it is on and answers; None: ask boto3."""
        src = self._src
        direct = src._conn.direct
        if direct is None or not direct.enabled:
            return None
        headers = {"Range": request["Range"]} if "Range" in request else {}
        if "IfMatch" in request:
            headers["If-Match"] = request["IfMatch"]
        answer = direct.get(src.bucket, self._key, headers)
        if answer is not None:
            src.stats.add("gets")
            src.stats.add("direct_gets")
        return answer

    def _resume(self, exc: BaseException) -> None:
        src = self._src
        src.cancel.check()
        self._close_body()
        if self._resumes >= src.options.max_resumes:
            raise OSError(errno.EIO, f"connection broken {self._resumes + 1} times while reading "
                                     f"s3://{src.bucket}/{self._key} (at byte {self._pos}): {type(exc).__name__}")
        self._resumes += 1
        src.stats.add("resumes")
        log.info("resuming s3://%s/%s at byte %d after %s", src.bucket, self._key, self._pos, type(exc).__name__)
        self._open()

    def _next_chunk(self, size: int) -> bytes:
        """The next bytes of the object from the network (b"" at its end), resumed after a broken body
        and fed to the part digests."""
        while True:
            if self._body is None:
                return b""
            try:
                chunk: bytes = self._body.read(size)
            except self._transient as exc:
                if self._end is not None and self._pos >= self._end:
                    self._close_body()  # every byte arrived; only the end of the answer broke
                    return b""
                self._resume(exc)
                continue
            except self._checksum_error as exc:
                raise OSError(errno.EIO, f"s3://{self._src.bucket}/{self._key}: boto3's response checksum "
                                         f"validation failed: {exc}") from None
            if not chunk:
                if self._end is not None and self._pos < self._end:
                    self._resume(http.client.IncompleteRead(b"", self._end - self._pos))
                    continue
                return b""
            self._pos += len(chunk)
            if self._parts is not None:
                self._parts.update(chunk)
            return chunk

    # -- read-ahead: a bounded background reader for large objects ------------------------------------
    def _start_read_ahead(self) -> None:
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=READ_AHEAD_CHUNKS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="reversib-s3-read-ahead", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        item: bytes | BaseException | None
        try:
            while not self._stop.is_set():
                if self._src.cancel.cancelled:
                    return
                chunk = self._next_chunk(READ_AHEAD_CHUNK)
                if not self._put(chunk or None) or not chunk:
                    return
        except BaseException as exc:  # handed to the reader, raised there
            item = exc
            self._put(item)
        finally:
            if self._stop.is_set():
                self._close_body()  # the reader gave up on this stream: the connection is ours to release
            self._src._conn.read_ahead_slots.release()

    def _put(self, item: bytes | BaseException | None) -> bool:
        return put_unless(self._queue, item, self._stop)

    def _take(self) -> memoryview | None:
        """The next chunk from the read-ahead thread (None at the end); raises what the thread raised."""
        while True:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                self._src.cancel.check()
                continue
            if item is None:
                self._eof = True
                return None
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            return memoryview(item)

    def readinto(self, buf: memoryview | bytearray) -> int:
        view = memoryview(buf)
        if self._thread is None:
            chunk = self._next_chunk(len(view))
            n = len(chunk)
            view[:n] = chunk
            return n
        if self._eof:
            return 0
        if self._ahead is None or self._ahead_at >= len(self._ahead):
            self._ahead, self._ahead_at = self._take(), 0
            if self._ahead is None:
                return 0
        n = min(len(view), len(self._ahead) - self._ahead_at)
        view[:n] = self._ahead[self._ahead_at:self._ahead_at + n]
        self._ahead_at += n
        return n

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            out = bytearray()
            buf = bytearray(1 << 20)
            while n := self.readinto(buf):
                out += buf[:n]
            return bytes(out)
        buf = bytearray(size)
        n = self.readinto(buf)
        return bytes(buf[:n])

    def _close_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            try:
                body.close()
            except Exception:
                pass

    def close(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._stop.set()
            while True:  # unblock a put
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            thread.join(timeout=2.0)
            if thread.is_alive():
                return  # still inside a network read: the thread closes the body when it returns
        self._close_body()
