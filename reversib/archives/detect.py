"""Recognize an archive's layers from its first bytes: encryption, then compression and container.

The content decides, not the name: a provider renaming `.tar.gz` to `.tgz` or sending zstd under a
`.gz` name is still read correctly.  A configured format overrides the sniffing.
"""

from __future__ import annotations

AGE_MAGIC = b"age-encryption.org/v1\n"
AGE_ARMOR = b"-----BEGIN AGE ENCRYPTED FILE-----"
PGP_ARMOR = b"-----BEGIN PGP MESSAGE-----"

COMPRESSION_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gz"),
    (b"\x28\xb5\x2f\xfd", "zst"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bz2"),
)
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or the end record of an empty zip


def encryption_of(head: bytes) -> str:
    """"age", "gpg" or "none" from an archive file's first bytes."""
    if head.startswith(AGE_MAGIC) or head.startswith(AGE_ARMOR):
        return "age"
    if head.startswith(PGP_ARMOR):
        return "gpg"
    if head:
        tag = _pgp_packet_tag(head[0])
        # An OpenPGP message to a key starts with a public-key encrypted session key (1); with a
        # passphrase, with a symmetric-key one (3).  Nothing else reversib reads starts with such a byte.
        if tag in (1, 3):
            return "gpg"
    return "none"


def _pgp_packet_tag(first: int) -> int | None:
    if not first & 0x80:
        return None
    if first & 0x40:  # new format
        return first & 0x3F
    return (first >> 2) & 0x0F  # old format


def compression_of(head: bytes) -> str:
    """"gz", "zst", "xz", "bz2", or "none" (after decryption)."""
    for magic, name in COMPRESSION_MAGIC:
        if head.startswith(magic):
            return name
    return "none"


def is_zip(head: bytes) -> bool:
    return head.startswith(ZIP_MAGIC)


def is_tar(head: bytes) -> bool:
    """A (decompressed) tar stream: the ustar magic at offset 257, or an old v7 header with a valid checksum."""
    if len(head) >= 263 and head[257:262] == b"ustar":
        return True
    if len(head) < 512:
        return False
    block = head[:512]
    try:
        stored = int(block[148:156].replace(b"\x00", b" ").strip() or b"-1", 8)
    except ValueError:
        return False
    return stored == sum(block[:148]) + 256 + sum(block[156:])


def split_format(fmt: str) -> tuple[str, str]:
    """("tar"|"zip", compression) of a configured format such as tar.zst."""
    if fmt == "zip":
        return "zip", "none"
    if fmt == "tar":
        return "tar", "none"
    return "tar", fmt.split(".", 1)[1]
