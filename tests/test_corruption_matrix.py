"""Break one thing, expect exactly one finding: manifests written by the real tools.

Every format is exercised on the same export: GNU coreutils (`sha256sum`, `sha256sum -b`, `md5sum`,
`b2sum`, and their `--tag` forms), BagIt bags written by the `bagit` reference library, and
reversib's JSON manifest.  The untouched export passes; each case breaks one thing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import unicodedata
from collections.abc import Callable
from pathlib import Path

import bagit
import pytest

from reversib.manifests.create import create_manifest

from .cli_helpers import findings_of, verify_json
from .helpers import flip_byte, make_export, run_tool

FILES = {
    "alpha.txt": b"alpha\n" * 100,
    "docs/report final.pdf": b"%PDF-1.4\n" + bytes(range(256)) * 20,
    "docs/café.csv": b"id;name\n1;\xc3\xa9\n",
    "data2/nested/deep.bin": os.urandom(3000),
    "zeta": b"last\n",
}

SUMFILE_TOOLS = {
    "sha256sum": (["sha256sum"], "SHA256SUMS"),
    "sha256sum-binary": (["sha256sum", "-b"], "SHA256SUMS"),
    "sha256sum-tag": (["sha256sum", "--tag"], "CHECKSUMS.tag"),
    "md5sum": (["md5sum"], "MD5SUMS"),
    "b2sum": (["b2sum"], "B2SUMS"),
    "b2sum-tag": (["b2sum", "--tag"], "CHECKSUMS-b2.tag"),
    "sha512sum": (["sha512sum"], "SHA512SUMS"),
}
FORMATS = [*SUMFILE_TOOLS, "bagit", "json"]


class Export:
    """An export plus its manifest, in one of the formats; `payload` maps export-relative paths."""

    def __init__(self, base: Path, fmt: str):
        self.fmt = fmt
        self.outside = base / "outside"
        self.outside.mkdir()
        if fmt == "bagit":
            self.root = make_export(base / "bag", FILES)
            bagit.make_bag(str(self.root), checksums=["md5", "sha256"])
            self.prefix = "data/"
            self.manifest: Path | None = None
            self.manifest_file = self.root / "manifest-sha256.txt"
        else:
            self.root = make_export(base / "export", FILES)
            self.prefix = ""
            if fmt == "json":
                self.manifest = create_manifest(self.root, "json", None, ("sha256",))
            else:
                tool, name = SUMFILE_TOOLS[fmt]
                self.manifest = run_tool(tool, self.root, name)
            self.manifest_file = self.manifest

    def p(self, rel: str) -> Path:
        return self.root / (self.prefix + rel)

    def rel(self, rel: str) -> str:
        return self.prefix + rel

    def args(self) -> list[str]:
        args = ["--source", str(self.root)]
        if self.manifest is not None:
            args += ["--manifest", str(self.manifest)]
        return args

    def retag(self) -> None:
        """After editing a bag's tag file, rewrite tagmanifests as the provider would have."""
        if self.fmt != "bagit":
            return
        for alg in ("md5", "sha256"):
            tm = self.root / f"tagmanifest-{alg}.txt"
            if not tm.exists():
                continue
            lines = []
            for name in sorted(os.listdir(self.root)):
                if name.startswith("tagmanifest-") or not (self.root / name).is_file():
                    continue
                digest = hashlib.new(alg, (self.root / name).read_bytes()).hexdigest()
                lines.append(f"{digest} {name}\n")
            tm.write_text("".join(lines))


@pytest.fixture(params=FORMATS)
def export(request: pytest.FixtureRequest, tmp_path: Path) -> Export:
    return Export(tmp_path, request.param)


def check(export: Export, tmp_path: Path) -> tuple[int, dict, list[tuple[str, str | None]]]:
    code, doc = verify_json(export.args(), tmp_path / "history.db")
    return code, doc, findings_of(doc)


def test_untouched_export_passes(export: Export, tmp_path: Path) -> None:
    code, doc, found = check(export, tmp_path)
    assert (code, doc["outcome"], found) == (0, "passed", [])
    run = doc["runs"][0]
    n = len(FILES) + (4 if export.fmt == "bagit" else 0)  # a bag's tag files are verified too
    assert run["files_verified"] == n and run["tiers"] == {"downloaded": n}


def _delete(e: Export) -> str:
    e.p("docs/report final.pdf").unlink()
    return "docs/report final.pdf"


def _add(e: Export) -> str:
    e.p("docs/new.txt").write_text("surprise")
    return "docs/new.txt"


def _flip(e: Export) -> str:
    flip_byte(e.p("data2/nested/deep.bin"), 1234)
    return "data2/nested/deep.bin"


def _append(e: Export) -> str:
    with open(e.p("alpha.txt"), "ab") as f:
        f.write(b"x")
    return "alpha.txt"


def _truncate(e: Export) -> str:
    os.truncate(e.p("docs/report final.pdf"), 100)
    return "docs/report final.pdf"


def _fifo(e: Export) -> str:
    e.p("zeta").unlink()
    os.mkfifo(e.p("zeta"))
    return "zeta"


def _escape(e: Export) -> str:
    secret = e.outside / "secret"
    os.mkfifo(secret)  # if reversib ever opened it, the test would hang and time out
    e.p("zeta").unlink()
    os.symlink(secret, e.p("zeta"))
    return "zeta"


def _normalize(e: Export) -> str:
    src = e.p("docs/café.csv")
    src.rename(src.with_name(unicodedata.normalize("NFD", "café.csv")))
    return "docs/café.csv"


# case -> (break it, finding kind for formats that carry sizes (bag: Payload-Oxum is not per file), for sum files)
CASES: dict[str, tuple[Callable[[Export], str], str, str]] = {
    "missing": (_delete, "missing", "missing"),
    "unexpected": (_add, "unexpected", "unexpected"),
    "same_length_flip": (_flip, "digest_mismatch", "digest_mismatch"),
    "appended": (_append, "size_mismatch", "digest_mismatch"),
    "truncated": (_truncate, "size_mismatch", "digest_mismatch"),
    "fifo_unreadable": (_fifo, "unreadable", "unreadable"),
    "symlink_escape": (_escape, "unsafe_path", "unsafe_path"),
    "name_normalization": (_normalize, "name_normalization", "name_normalization"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(CASES))
def test_one_fault_one_finding(export: Export, tmp_path: Path, case: str) -> None:
    breaker, with_sizes, without_sizes = CASES[case]
    path = export.rel(breaker(export))
    kind = with_sizes if export.fmt == "json" else without_sizes
    code, doc, found = check(export, tmp_path)
    assert found == [(kind, path)], f"{export.fmt}/{case}: {doc['runs'][0]['findings']}"
    assert (code, doc["outcome"]) == (1, "failed")


def test_duplicate_entry(export: Export, tmp_path: Path) -> None:
    target = export.manifest_file
    lines = target.read_bytes().splitlines(keepends=True)
    if export.fmt == "json":
        import json

        doc = json.loads(target.read_text())
        dup = dict(doc["entries"][0], digests={"sha256": "0" * 64})
        doc["entries"].append(dup)
        target.write_text(json.dumps(doc))
        path = dup["path"]
    else:
        first = lines[0]
        target.write_bytes(b"".join(lines) + first)
        path = next(f for f in FILES if export.rel(f).encode() in first.replace(b"\\", b""))
        path = export.rel(path)
    export.retag()
    code, doc, found = check(export, tmp_path)
    assert found == [("duplicate_entry", path)], doc["runs"][0]["findings"]
    assert code == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fmt", list(SUMFILE_TOOLS))  # bag and JSON paths: tests/manifests
def test_hostile_path_in_manifest_is_never_read(tmp_path: Path, fmt: str) -> None:
    export = Export(tmp_path, fmt)
    os.mkfifo(export.outside / "loot")
    with open(export.manifest_file, "ab") as f:
        if export.fmt.endswith("-tag"):
            algo = "SHA256" if export.fmt.startswith("sha256") else "BLAKE2b"
            length = 64 if algo == "SHA256" else 128
            f.write(f"{algo} (../outside/loot) = {'0' * length}\n".encode())
            f.write(f"{algo} ({export.outside}/loot) = {'0' * length}\n".encode())
        else:
            length = len(export.manifest_file.read_bytes().split(b" ", 1)[0])
            f.write(b"0" * length + b"  ../outside/loot\n")
            f.write(b"0" * length + b"  " + str(export.outside / "loot").encode() + b"\n")
    code, doc, found = check(export, tmp_path)
    assert found == sorted([("unsafe_path", "../outside/loot"), ("unsafe_path", str(export.outside / "loot"))])
    assert code == 1


def test_bag_payload_oxum_mismatch(tmp_path: Path) -> None:
    e = Export(tmp_path, "bagit")
    info = e.root / "bag-info.txt"
    text = info.read_text()
    import re

    info.write_text(re.sub(r"Payload-Oxum: (\d+)\.(\d+)", lambda m: f"Payload-Oxum: {int(m[1]) + 1}.{m[2]}", text))
    e.retag()
    code, doc, found = check(e, tmp_path)
    assert found == [("oxum_mismatch", None)] and code == 1


def test_bag_fetch_reference_is_reported(tmp_path: Path) -> None:
    e = Export(tmp_path, "bagit")
    (e.root / "fetch.txt").write_text(f"https://provider.example/zeta {len(FILES['zeta'])} data/zeta\n")
    e.retag()
    code, doc, found = check(e, tmp_path)
    assert found == [("fetch_reference", "data/zeta")]
    assert doc["runs"][0]["findings"][0]["severity"] == "warning" and code == 0


def test_bag_tag_file_corruption(tmp_path: Path) -> None:
    e = Export(tmp_path, "bagit")
    with open(e.root / "bag-info.txt", "a") as f:
        f.write("Contact-Name: someone\n")
    code, doc, found = check(e, tmp_path)
    assert found == [("digest_mismatch", "bag-info.txt")] and code == 1


def test_copy_of_export_elsewhere_still_passes(export: Export, tmp_path: Path) -> None:
    """Manifests are relative to the export root: a copy verifies the same."""
    if export.manifest is not None and export.manifest.parent != export.root:
        pytest.skip("manifest outside the export")
    copy = tmp_path / "copy"
    shutil.copytree(export.root, copy, symlinks=True)
    args = ["--source", str(copy)]
    if export.manifest is not None:
        args += ["--manifest", str(copy / export.manifest.name)]
    code, doc = verify_json(args, tmp_path / "h.db")
    assert code == 0 and findings_of(doc) == []
