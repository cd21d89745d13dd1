"""Manifest formats: choose, find and load the manifest of an export.

`load_manifest(source, path, fmt)` returns a `Manifest` (see base.py) for any supported format;
`find_manifest(source)` looks for a manifest at an export root that has none configured.
"""

from __future__ import annotations

from reversib.manifests.bagit import parse_bag
from reversib.manifests.base import Manifest, ManifestEntry, ManifestError, strip_dot_slash
from reversib.manifests.jsonfile import parse_json
from reversib.manifests.sumfile import parse_sumfile
from reversib.sources.base import EntryType, Source

__all__ = ["FORMATS", "Manifest", "ManifestEntry", "ManifestError", "ManifestNotFound", "find_manifest",
           "load_manifest"]

FORMATS: tuple[str, ...] = ("auto", "sha256sum", "sha512sum", "sha1sum", "md5sum", "b2sum", "sha224sum", "sha384sum",
                            "bsd", "bagit", "json")

# Looked for in this order at an export root without a configured manifest.
WELL_KNOWN = ("reversib-manifest.json", "manifest.json", "SHA512SUMS", "SHA256SUMS", "SHA1SUMS", "MD5SUMS",
              "B2SUMS")
SUFFIXES = (".sha256", ".sha512", ".md5", ".b2")


def check_format(value: str) -> str:
    """A configured manifest format, or ValueError naming the known ones (for the config validators)."""
    if value not in FORMATS:
        raise ValueError(f"unknown manifest format {value!r}; expected one of: {', '.join(FORMATS)}")
    return value


class ManifestNotFound(ManifestError, FileNotFoundError):
    """The manifest path does not exist (the runner reports `manifest_missing`)."""


def clean_path(path: str) -> str:
    """A manifest path as given in a check -> relative, without `./` or a trailing `/` ("" = the root)."""
    if path.startswith("/"):
        raise ManifestError(f"manifest path {path!r} must be relative to the source root")
    path = strip_dot_slash(path).rstrip("/")
    return "" if path == "." else path


def _bag_root(source: Source, root: str, fmt: str) -> str | None:
    """The bag root `root` designates (a bag root, or its bagit.txt), or None when it is no bag."""
    if root == "bagit.txt" or root.endswith("/bagit.txt"):
        return root[: -len("bagit.txt")].rstrip("/")
    if fmt == "bagit" or root == "":
        return root
    if source.stat(f"{root}/bagit.txt") is not None:
        return root
    return None


def _sniff_json(source: Source, path: str) -> bool:
    with source.open_range(path, 0, 4096) as stream:
        head = stream.read(4096)
    return head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] == b"{"


def load_manifest(source: Source, path: str, fmt: str = "auto") -> Manifest:
    """Load the manifest at `path` (relative to the source root; "" = a bag at the root).

    Raises ManifestNotFound when it does not exist, ManifestError when it cannot be read or
    understood, ValueError for an unknown `fmt`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown manifest format {fmt!r} (one of {', '.join(FORMATS)})")
    path = clean_path(path)
    try:
        if fmt in ("auto", "bagit"):
            root = _bag_root(source, path, fmt)
            if root is not None:
                declaration = f"{root}/bagit.txt" if root else "bagit.txt"
                if source.stat(declaration) is None:
                    raise ManifestNotFound(f"manifest not found: no {declaration} in {source.describe()}")
                return parse_bag(source, root)
        entry = source.stat(path)
        if entry is None:
            raise ManifestNotFound(f"manifest not found: {path} in {source.describe()}")
        if entry.problem or entry.type is not EntryType.FILE:
            raise ManifestError(f"manifest {path} cannot be read: {entry.problem or 'not a regular file'}")
        if fmt == "json" or (fmt == "auto" and (path.lower().endswith(".json") or _sniff_json(source, path))):
            return parse_json(source, path)
        return parse_sumfile(source, path, format_hint=fmt)
    except FileNotFoundError as exc:
        if isinstance(exc, ManifestNotFound):
            raise
        raise ManifestNotFound(f"manifest not found: {path} in {source.describe()} ({exc})") from exc
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path} in {source.describe()}: {exc}") from exc


def find_manifest(source: Source) -> str | None:
    """The manifest of an export root with none configured: "" for a bag, a path, or None.

    Raises ManifestError when several `*.sha256`/`*.sha512`/`*.md5`/`*.b2` files could be it."""
    for name in ("bagit.txt", *WELL_KNOWN):
        entry = source.stat(name)
        if entry is not None and entry.type is EntryType.FILE and not entry.problem:
            return "" if name == "bagit.txt" else name
        if entry is not None and entry.type is EntryType.SYMLINK and entry.problem:
            # there, but never read: saying "no manifest found" would send the user looking elsewhere
            raise ManifestError(f"{name} is there but is not read: {entry.problem}")
    candidates = [e.path for e in source.iter_entries()
                  if "/" not in e.path and e.type is EntryType.FILE and not e.problem
                  and e.path.lower().endswith(SUFFIXES)]
    if len(candidates) > 1:
        raise ManifestError(f"several candidate manifests at the root of {source.describe()}: "
                            f"{', '.join(candidates)}; configure one")
    return candidates[0] if candidates else None
