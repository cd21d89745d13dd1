"""Source backends, chosen by URL scheme.  Plain paths are `file://`.

Backends are imported only when used: an `s3://` check never costs a local run the import of boto3.
"""

from __future__ import annotations

from typing import Any

from reversib.sources.base import CancelToken, RateLimiter, Source, SourceError

SCHEMES = ("file", "s3", "sftp")


def scheme_of(url: str) -> str:
    if "://" in url:
        return url.split("://", 1)[0].lower()
    return "file"


def open_source(url: str, options: Any = None, *, cancel: CancelToken | None = None,
                limiter: RateLimiter | None = None) -> Source:
    """Build (not connect) the source for `url`; `options` is the check's `source` block (or None).

    Connection happens on first use, never here."""
    scheme = scheme_of(url)
    if scheme == "file":
        from reversib.sources.local import LocalSource

        return LocalSource(url, cancel=cancel, limiter=limiter)
    if scheme == "s3":
        from reversib.sources.s3 import S3Source  # type: ignore[import-not-found,unused-ignore]

        return S3Source(url, getattr(options, "s3", None), cancel=cancel, limiter=limiter)  # type: ignore[no-any-return,unused-ignore]
    if scheme == "sftp":
        from reversib.sources.sftp import SftpSource  # type: ignore[import-not-found,unused-ignore]

        return SftpSource(url, getattr(options, "sftp", None), cancel=cancel, limiter=limiter)  # type: ignore[no-any-return,unused-ignore]
    raise SourceError(f"unsupported source scheme {scheme!r} in {url!r} (supported: {', '.join(SCHEMES)})")
