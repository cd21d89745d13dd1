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
    if is_tar(head):  # a plain tar whose first name starts with a byte such as 0xC3 (É) is no OpenPGP packet
        return "none"
    if _pgp_session_key_packet(head):
        return "gpg"
    return "none"


# Versions of the session-key packet a message starts with: a public-key encrypted one (tag 1: v3, or v6 in
# RFC 9580) for a message to a key; a symmetric-key one (tag 3: v4, v5, v6) for a passphrase.
_SESSION_KEY_VERSIONS = {1: (3, 6), 3: (4, 5, 6)}


def _pgp_session_key_packet(head: bytes) -> bool:
    """The bytes start with an OpenPGP session-key packet: its tag, a length, then a known version byte."""
    if not head or not head[0] & 0x80:
        return False
    first = head[0]
    if first & 0x40:  # new format: tag, then a one-, two- or five-octet length (partial lengths not allowed here)
        tag = first & 0x3F
        if len(head) < 2:
            return False
        octet = head[1]
        body = 2 if octet < 192 else 3 if octet < 224 else 6 if octet == 255 else -1
    else:  # old format: tag in bits 5-2, length type in bits 1-0
        tag = (first >> 2) & 0x0F
        body = {0: 2, 1: 3, 2: 5}.get(first & 0x03, -1)
    versions = _SESSION_KEY_VERSIONS.get(tag)
    return versions is not None and 0 < body < len(head) and head[body] in versions


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
