"""Source backends, chosen by URL scheme.  Plain paths are `file://`."""

from __future__ import annotations

from typing import Any

from reversib.sources.base import CancelToken, RateLimiter, Source, SourceError


def scheme_of(url: str) -> str:
    if "://" in url:
        return url.split("://", 1)[0].lower()
    return "file"


def open_source(url: str, options: Any = None, *, cancel: CancelToken | None = None,
                limiter: RateLimiter | None = None) -> Source:
    """Build (not connect) the source for `url`.  Connection happens on first use."""
    scheme = scheme_of(url)
    if scheme == "file":
        from reversib.sources.local import LocalSource

        return LocalSource(url, cancel=cancel, limiter=limiter)
    raise SourceError(f"unsupported source scheme {scheme!r} in {url!r} (supported: file)")
