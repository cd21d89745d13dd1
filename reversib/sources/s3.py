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
  whole-file digest: such objects are downloaded.
* **Errors**: credentials, a missing bucket or an endpoint that cannot be reached raise
  `SourceError` naming the bucket and the endpoint; secrets never appear in a message.
"""

from __future__ import annotations

import base64
import binascii
import errno
import http.client
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from reversib.sources.base import (
    CancelToken,
    Capabilities,
    Entry,
    RateLimiter,
    Source,
    SourceError,
    StoredDigests,
)
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


def _b64_to_hex(value: str) -> str | None:
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return None


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
        try:
            session = boto3.session.Session(**kwargs)
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

    def digests_without_download(self, entry: Entry, algorithms: tuple[str, ...]) -> StoredDigests | None:
        head = self._head(entry.path, ChecksumMode="ENABLED")
        if head is None:
            raise FileNotFoundError(errno.ENOENT, f"no such key: s3://{self.bucket}/{self._key(entry.path)}")
        found: dict[str, str] = {}
        how: list[str] = []
        composite = str(head.get("ChecksumType") or "").upper() == "COMPOSITE"
        for field, alg in CHECKSUM_FIELDS:
            value = head.get(field)
            if alg not in algorithms or not value or composite or "-" in str(value):
                continue  # a composite checksum is a digest of part digests: not comparable
            hexed = _b64_to_hex(str(value))
            if hexed is not None:
                found[alg] = hexed
                how.append(f"S3 {field} (full object)")
        etag = str(head.get("ETag") or "").strip('"').lower()
        if ("md5" in algorithms and self.options.trust_etag_md5 and len(etag) == 32
                and all(c in "0123456789abcdef" for c in etag)
                and str(head.get("ServerSideEncryption") or "") not in ("aws:kms", "aws:kms:dsse")
                and not head.get("SSECustomerAlgorithm")):
            found["md5"] = etag
            how.append("S3 ETag (single-part upload: MD5)")
        if not found:
            return None
        return StoredDigests("stored_checksum", found, ", ".join(how))

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
            log.debug("%s: %d GET, %d HEAD, %d LIST requests, %d resumed reads", self.describe(), s.gets, s.heads,
                      s.lists, s.resumes)
        self._conn.close()


def _transient() -> tuple[type[BaseException], ...]:
    import botocore.exceptions as bx
    import urllib3.exceptions as ux

    return (bx.ResponseStreamingError, bx.IncompleteReadError, bx.ReadTimeoutError, bx.ConnectionClosedError,
            ux.ProtocolError, ux.ReadTimeoutError, http.client.IncompleteRead, ConnectionError, TimeoutError)


class _ResumingStream:
    """One object's bytes from `offset` to the end, resumed with a ranged GET after a broken body."""

    def __init__(self, source: S3Source, key: str, offset: int) -> None:
        self._src = source
        self._key = key
        self._pos = offset  # the next byte the reader gets
        self._end: int | None = None  # object size
        self._etag: str | None = None
        self._body: Any = None
        self._resumes = 0
        self._transient = _transient()
        import botocore.exceptions as bx

        self._checksum_error: type[Exception] = bx.FlexibleChecksumError
        self._open()

    @property
    def resumes(self) -> int:
        return self._resumes

    def _open(self) -> None:
        import botocore.exceptions as bx

        src = self._src
        request: dict[str, str] = {"Bucket": src.bucket, "Key": self._key}
        if self._pos:
            request["Range"] = f"bytes={self._pos}-"
        if self._etag:
            request["IfMatch"] = self._etag
        name = f"s3://{src.bucket}/{self._key}"
        try:
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
        finally:
            src.stats.add("gets")
        self._etag = self._etag or answer.get("ETag")
        body = answer["Body"]
        content_range = str(answer.get("ContentRange") or "")
        if self._pos and not content_range.startswith(f"bytes {self._pos}-"):
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
        self._body = body

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

    def readinto(self, buf: memoryview | bytearray) -> int:
        view = memoryview(buf)
        while True:
            if self._body is None:
                return 0
            try:
                chunk = self._body.read(len(view))
            except self._transient as exc:
                if self._end is not None and self._pos >= self._end:
                    self._close_body()  # every byte arrived; only the end of the answer broke
                    return 0
                self._resume(exc)
                continue
            except self._checksum_error as exc:
                raise OSError(errno.EIO, f"s3://{self._src.bucket}/{self._key}: boto3's response checksum "
                                         f"validation failed: {exc}") from None
            n = len(chunk)
            if n == 0:
                if self._end is not None and self._pos < self._end:
                    self._resume(http.client.IncompleteRead(b"", self._end - self._pos))
                    continue
                return 0
            view[:n] = chunk
            self._pos += n
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
        self._close_body()
