"""Small builders shared by the tests: exports on disk and manifests written by the real tools."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

DEFAULT_FILES = {
    "a.txt": b"alpha\n",
    "b/c.csv": b"id,name\n1,x\n2,y\n",
    "b/d e.bin": bytes(range(256)) * 40,
    "z/deep/er/file.json": b'{"k": [1, 2, 3]}\n',
}


def make_export(root: Path, files: dict[str, bytes] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in (files if files is not None else DEFAULT_FILES).items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def run_tool(tool: list[str], root: Path, out_name: str) -> Path:
    """Write a manifest with a real coreutils tool (sha256sum, md5sum, b2sum, ... --tag) run at root."""
    files = sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if (p.is_file() or p.is_symlink()) and p.name != out_name
    )
    out = subprocess.run([*tool, "--", *files], cwd=root, check=True, capture_output=True).stdout
    manifest = root / out_name
    manifest.write_bytes(out)
    return manifest


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def flip_byte(path: Path, offset: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def env_without_ci() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CI", None)
    return env
