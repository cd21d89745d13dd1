"""Digest algorithms by reversib's names, and streaming hashing (one read, every digest)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any, Protocol

CHUNK = 1 << 20  # 1 MiB reads: measured best for hashlib on this class of machine

_CONSTRUCTORS: dict[str, Callable[[], Any]] = {
    "md5": lambda: hashlib.md5(usedforsecurity=False),
    "sha1": lambda: hashlib.sha1(usedforsecurity=False),
    "sha224": hashlib.sha224,
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
    "blake2b": hashlib.blake2b,
}

# Strongest first: used by `fixity.algorithms: strongest`.
STRENGTH = ["sha512", "blake2b", "sha384", "sha256", "sha224", "sha1", "md5"]


def _blake2b_bits(name: str) -> int | None:
    if name.startswith("blake2b-"):
        bits = name[len("blake2b-"):]
        if bits.isdigit() and 8 <= int(bits) <= 512 and int(bits) % 8 == 0:
            return int(bits)
    return None


def is_known(name: str) -> bool:
    return name in _CONSTRUCTORS or _blake2b_bits(name) is not None


def new(name: str) -> Any:
    if name in _CONSTRUCTORS:
        return _CONSTRUCTORS[name]()
    bits = _blake2b_bits(name)
    if bits is None:
        raise ValueError(f"unknown digest algorithm {name!r}")
    return hashlib.blake2b(digest_size=bits // 8)


def hex_length(name: str) -> int:
    return int(new(name).digest_size) * 2


def strength(name: str) -> int:
    """Higher is stronger; blake2b-N ranks by its bit length next to the sha family."""
    bits = _blake2b_bits(name)
    if bits is not None:
        return bits // 8
    return len(STRENGTH) * 100 - STRENGTH.index(name) * 100 if name in STRENGTH else 0


def choose(available: Iterable[str], policy: str) -> list[str]:
    """Which of the manifest's algorithms to compute: `all` of them, or the `strongest`."""
    names = sorted({a for a in available if is_known(a)})
    if policy == "strongest" and names:
        return [max(names, key=strength)]
    return names


class Readable(Protocol):
    def readinto(self, buf: memoryview | bytearray) -> int: ...


class BlockHasher:
    """Digests of consecutive fixed-size blocks of one stream (the last block may be shorter; an empty
    stream has one block), fed by `hash_stream` during the same read: challenge reads (docs/coverage.md)."""

    def __init__(self, block_size: int, algorithm: str = "sha256") -> None:
        self.block_size = block_size
        self.algorithm = algorithm
        self.digests: list[str] = []
        self._h = new(algorithm)
        self._fill = 0

    def update(self, data: memoryview) -> None:
        off, n = 0, len(data)
        while off < n:
            take = min(n - off, self.block_size - self._fill)
            self._h.update(data[off:off + take])
            self._fill += take
            off += take
            if self._fill == self.block_size:
                self.digests.append(self._h.hexdigest())
                self._h = new(self.algorithm)
                self._fill = 0

    def finish(self) -> list[str]:
        if self._fill or not self.digests:
            self.digests.append(self._h.hexdigest())
            self._fill = 0
        return self.digests


def hash_stream(stream: Readable, algorithms: list[str], buf: bytearray | None = None,
                blocks: BlockHasher | None = None) -> tuple[dict[str, str], int]:
    """Read `stream` to the end once, feeding every algorithm (and `blocks`); return (hex digests, bytes read)."""
    hashers = [(name, new(name)) for name in algorithms]
    buf = buf if buf is not None else bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    if blocks is not None:
        while n := stream.readinto(view):
            chunk = view[:n]
            for _, h in hashers:
                h.update(chunk)
            blocks.update(chunk)
            total += n
        blocks.finish()
    elif len(hashers) == 1:
        update = hashers[0][1].update
        while n := stream.readinto(view):
            update(view[:n])
            total += n
    else:
        while n := stream.readinto(view):
            chunk = view[:n]
            for _, h in hashers:
                h.update(chunk)
            total += n
    return {name: h.hexdigest() for name, h in hashers}, total
