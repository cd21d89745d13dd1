"""Direct GETs of S3 objects: botocore's own signer and HTTP session, without its request pipeline.

For a small object, most of boto3's client CPU goes to botocore's per-request pipeline (parameter
validation, serialisation, some forty event hooks, response parsing), not to the wire: on the bench
machine 2.1-2.6 ms of CPU per 4 KiB `get_object`, against 1.0-1.3 ms for the same signed request
sent directly (400 sequential GETs against the tests' moto endpoint; in `bench/run.py --suite s3 --case
small` reversib's client CPU per object went from 0.88x to 0.57x the sequential boto3 loop's).

`DirectGet` sends the GetObject request the boto3 client would send:

* the same URL: the bucket's base URL is learnt once from the client's own presigner (its endpoint
  resolution, addressing style and region), the key appended percent-encoded as botocore encodes it;
* the same signature: botocore's `S3SigV4Auth`, with the client's signing region and credentials
  (`get_frozen_credentials()` for each request, so refreshable credentials such as an assumed role are
  refreshed as the client's are);
* the same HTTP stack: the client's own botocore `URLLib3Session` (its connection pool of
  `max_connections`, TLS verification, CA bundle, proxies, timeouts, TCP keep-alive);
* the answer in boto3's shape (`ETag`, `ContentLength`, `ContentRange`, `Body` as botocore's
  `StreamingBody`, whose read errors are botocore's), so the caller's resume logic is the same.

It is an optimisation, never a second set of semantics.  Anything but a 200/206 answer (a throttle, an
error, a redirect to another region) and any failure to send returns None: the caller then makes the
same request through the boto3 client, with its retries, redirects and error messages -- and the
direct path is off for the rest of the connection, since one unexpected answer is reason enough to
distrust the shortcut.  It is never used for ARN buckets (access points) and S3 Express directory
buckets (their own endpoints and session auth), nor when `response_checksum_validation: when_supported`
is asked for explicitly (in the check or AWS_RESPONSE_CHECKSUM_VALIDATION): only boto3's pipeline
validates response checksums.  By default it is on: reversib hashes every byte itself and downloads a
mismatching object once more, so boto3's validation of the transfer adds nothing to the verdict.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

log = logging.getLogger("reversib.sources.s3")

_PROBE_KEY = "reversib-probe"


class DirectGet:
    """GetObject for one boto3 S3 client; thread-safe (one instance shared by a check's workers)."""

    def __init__(self, client: Any, credentials: Any, verify: bool | str) -> None:
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.httpsession import URLLib3Session
        from botocore.response import StreamingBody

        self._client = client
        self._credentials = credentials
        self._region = client.meta.region_name or "us-east-1"
        self._signer = S3SigV4Auth
        self._request = AWSRequest
        self._body = StreamingBody
        self._lock = threading.Lock()
        self._bases: dict[str, str] = {}
        self.enabled = True
        # The client's own HTTP session (its pool of max_connections, TLS, proxies, timeouts): one set of
        # connections for boto3's requests and the direct ones.  Should botocore move it, a session of
        # our own with the client's settings.
        self._own_http = False
        self._http: Any = getattr(getattr(client, "_endpoint", None), "http_session", None)
        if not callable(getattr(self._http, "send", None)):
            config = client.meta.config
            keepalive = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)] if config.tcp_keepalive else None
            self._http = URLLib3Session(verify=verify, proxies=config.proxies, timeout=(config.connect_timeout,
                                        config.read_timeout), max_pool_connections=config.max_pool_connections,
                                        socket_options=keepalive, proxies_config=config.proxies_config,
                                        client_cert=config.client_cert)
            self._own_http = True
        self._agent = f"reversib-direct-get {client.meta.config.user_agent or ''}".strip()

    @classmethod
    def for_client(cls, client: Any, credentials: Any, verify: bool | str,
                   validation: str | None) -> DirectGet | None:
        """The direct path for `client`, or None where it must not be used (reason logged).  `validation`
        is the response checksum validation asked for explicitly (the check's option, else
        AWS_RESPONSE_CHECKSUM_VALIDATION): `when_supported` keeps every GET in boto3, which validates."""
        if credentials is None:
            log.debug("direct GETs off: no credentials (boto3 reports it)")
            return None
        if validation == "when_supported":
            log.debug("direct GETs off: response_checksum_validation asks boto3 to validate response checksums")
            return None
        return cls(client, credentials, verify)

    def off(self, why: str) -> None:
        if self.enabled:
            self.enabled = False
            log.info("S3 direct GETs off for the rest of this run (%s): requests go through boto3", why)

    def _base(self, bucket: str) -> str | None:
        """The bucket's URL up to the key (`.../bucket/` or `https://bucket.host/`), from the presigner."""
        with self._lock:
            base = self._bases.get(bucket)
        if base is not None:
            return base or None
        base = ""
        if ":" not in bucket and not bucket.endswith("--x-s3"):  # access point ARNs, S3 Express: not here
            url = self._client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": _PROBE_KEY},
                                                      ExpiresIn=60)
            parts = urlsplit(url)
            if parts.path.endswith("/" + _PROBE_KEY):
                base = urlunsplit((parts.scheme, parts.netloc, parts.path[:-len(_PROBE_KEY)], "", ""))
        with self._lock:
            self._bases[bucket] = base
        return base or None

    def get(self, bucket: str, key: str, headers: dict[str, str]) -> dict[str, Any] | None:
        """GetObject of `key` with extra request `headers` (Range, If-Match), answered 200/206; None:
        not answered so (the path is then off), make the request through boto3."""
        if not self.enabled:
            return None
        try:
            base = self._base(bucket)
        except Exception as exc:  # the presigner refused (an odd bucket name...): boto3 decides
            self.off(f"cannot build the URL of bucket {bucket}: {type(exc).__name__}")
            return None
        if base is None:
            return None
        # botocore encodes the key with percent_encode(key, safe="/~"): the same bytes are signed and sent
        url = base + quote(key, safe="/~")
        request = self._request(method="GET", url=url, headers={"User-Agent": self._agent, **headers})
        try:
            self._signer(self._credentials.get_frozen_credentials(), "s3", self._region).add_auth(request)
            prepared = request.prepare()
            prepared.stream_output = True
            response = self._http.send(prepared)
        except Exception as exc:  # connection refused, TLS, proxy, credentials: boto3 retries and says it
            self.off(f"request failed: {type(exc).__name__}")
            return None
        if response.status_code not in (200, 206):
            response.raw.close()
            self.off(f"HTTP {response.status_code}")
            return None
        h = response.headers
        if not str(h.get("Content-Length", "")).isdigit():
            response.raw.close()
            self.off("an answer without Content-Length")
            return None
        length = int(h["Content-Length"])
        answer: dict[str, Any] = {"ETag": h.get("ETag"), "ContentLength": length,
                                  "Body": self._body(response.raw, length)}
        if h.get("Content-Range"):
            answer["ContentRange"] = h["Content-Range"]
        return answer

    def close(self) -> None:
        if not self._own_http:
            return  # the client's: closed with the client
        try:
            self._http.close()
        except Exception:  # closing must never fail a run
            log.debug("closing the direct GET session failed", exc_info=True)
