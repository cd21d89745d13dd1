"""`reversib manifest create`: write a manifest for a local directory.

* `sha256sum` (and the other `<alg>sum` formats): `SHA256SUMS` at the root, byte-for-byte what
  GNU `sha256sum` writes for the same files in sorted order (names escaped the coreutils 9 way);
* `json`: `reversib-manifest.json` (sizes, digests, mtimes);
* `bagit`: turns the directory into a bag in place with the `bagit` library.

Files are listed and read through `LocalSource`, so a symlink leaving the root, a device or an
unreadable directory is skipped, never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reversib import __version__
from reversib.manifests.jsonfile import VERSION, format_rfc3339
from reversib.manifests.sumfile import digest_hex_length, escape_name
from reversib.sources.base import EntryType
from reversib.sources.local import LocalSource

CHUNK = 1 << 20
# sum format -> (algorithm, default file name)
SUM_OUTPUTS: dict[str, tuple[str, str]] = {
    "sha256sum": ("sha256", "SHA256SUMS"),
    "sha512sum": ("sha512", "SHA512SUMS"),
    "sha1sum": ("sha1", "SHA1SUMS"),
    "md5sum": ("md5", "MD5SUMS"),
    "sha224sum": ("sha224", "SHA224SUMS"),
    "sha384sum": ("sha384", "SHA384SUMS"),
    "b2sum": ("blake2b", "B2SUMS"),
}
CREATE_FORMATS = (*SUM_OUTPUTS, "json", "bagit")
JSON_NAME = "reversib-manifest.json"
BAGIT_ALGORITHMS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512", "blake2b")


def new_hasher(algorithm: str) -> Any:
    """A hashlib object for a reversib algorithm name (`blake2b-<bits>` included)."""
    if digest_hex_length(algorithm) is None:
        raise ValueError(f"unknown digest algorithm {algorithm!r}")
    if algorithm.startswith("blake2b"):
        bits = int(algorithm.partition("-")[2] or 512)
        return hashlib.blake2b(digest_size=bits // 8)
    return hashlib.new(algorithm)


def hash_files(root: Path, algorithms: Sequence[str], exclude: set[str]) -> list[tuple[str, int, float | None,
                                                                                       dict[str, str]]]:
    """(path, size, mtime, digests) of every regular file below `root`, in canonical order."""
    source = LocalSource(root)
    result = []
    buf = bytearray(CHUNK)
    for entry in source.iter_entries():
        if entry.type is not EntryType.FILE or entry.problem or entry.path in exclude:
            continue
        hashers = {alg: new_hasher(alg) for alg in algorithms}
        size = 0
        with source.open_range(entry.path) as stream:
            while n := stream.readinto(buf):
                size += n
                view = memoryview(buf)[:n]
                for h in hashers.values():
                    h.update(view)
        result.append((entry.path, size, entry.mtime, {alg: h.hexdigest() for alg, h in hashers.items()}))
    return result


def _relative(root: Path, out: Path) -> str | None:
    try:
        return out.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def _write_atomically(out: Path, data: bytes) -> None:
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def sum_line(path: str, digest: str) -> bytes:
    """One line as GNU `<alg>sum` writes it in text mode."""
    escaped, name = escape_name(path)
    return (("\\" if escaped else "") + f"{digest}  {name}\n").encode("utf-8", "surrogateescape")


def create_manifest(root: Path, fmt: str, out: Path | None = None,
                    algorithms: Sequence[str] | None = None, *, replace: bool = False) -> Path:
    """Write a manifest of `root` in `fmt` and return its path (for a bag: its bagit.txt).

    `algorithms` defaults to ("sha256",); a `<alg>sum` format takes only its own algorithm.  An existing
    file at the output is replaced only with `replace` (it may be the provider's own manifest: writing
    over it would make a damaged export agree with itself).
    Raises ValueError for a bad argument, an existing output or a directory with nothing to list."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"not a directory: {root}")
    if fmt not in CREATE_FORMATS:
        raise ValueError(f"unknown manifest format {fmt!r} (one of {', '.join(CREATE_FORMATS)})")
    if fmt == "bagit":
        return _make_bag(root, out, tuple(algorithms or ("sha256",)))
    if fmt in SUM_OUTPUTS:
        alg, default_name = SUM_OUTPUTS[fmt]
        if algorithms is not None and tuple(algorithms) != (alg,):
            raise ValueError(f"{fmt} writes {alg} digests only, not {', '.join(algorithms)}")
        algs: tuple[str, ...] = (alg,)
    else:
        default_name, algs = JSON_NAME, tuple(algorithms or ("sha256",))
        if not algs:
            raise ValueError("at least one digest algorithm is needed")
        for a in algs:
            new_hasher(a)
    out = Path(out) if out is not None else root / default_name
    if not replace and (out.exists() or out.is_symlink()):
        raise ValueError(f"{out} exists (it may be the provider's manifest): give --force to replace it, or "
                         "--output to write elsewhere")
    own = _relative(root, out)
    files = hash_files(root, algs, {own} if own else set())
    if not files:
        raise ValueError(f"nothing to list: no regular file below {root}")
    if fmt in SUM_OUTPUTS:
        data = b"".join(sum_line(path, digests[algs[0]]) for path, _, _, digests in files)
    else:
        data = _json_document(files)
    _write_atomically(out, data)
    return out


def _json_document(files: list[tuple[str, int, float | None, dict[str, str]]]) -> bytes:
    entries: list[dict[str, Any]] = []
    for path, size, mtime, digests in files:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"cannot write a JSON manifest: a file name is not valid UTF-8 ({path!r})") from None
        entry: dict[str, Any] = {"path": path, "size": size, "digests": digests}
        if mtime is not None:
            entry["mtime"] = format_rfc3339(mtime)
        entries.append(entry)
    doc = {"reversib_manifest": VERSION, "created": format_rfc3339(time.time()),
           "generator": f"reversib {__version__}", "entries": entries}
    return (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _make_bag(root: Path, out: Path | None, algorithms: tuple[str, ...]) -> Path:
    import bagit

    if out is not None:
        raise ValueError("a bag is made in place: --out does not apply to the bagit format")
    unknown = [a for a in algorithms if a not in BAGIT_ALGORITHMS]
    if unknown or not algorithms:
        raise ValueError(f"bagit checksums must be among {', '.join(BAGIT_ALGORITHMS)}, not {', '.join(unknown)}")
    if (root / "bagit.txt").exists():
        raise ValueError(f"{root} is already a bag (it has a bagit.txt)")
    bagit.make_bag(str(root), checksums=list(algorithms))
    return root / "bagit.txt"
