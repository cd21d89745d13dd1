"""The local source never reads outside the export root, even when a folder is swapped for a symbolic
link while a run goes on (the folder is reached one name at a time without following links)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from reversib.sources.local import DIRS_PER_THREAD, LocalSource


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    export, outside = tmp_path / "export", tmp_path / "outside"
    (export / "sub").mkdir(parents=True)
    outside.mkdir()
    (export / "sub" / "a.txt").write_bytes(b"inside a\n")
    (export / "sub" / "b.txt").write_bytes(b"inside b\n")
    (outside / "b.txt").write_bytes(b"TOP SECRET\n")
    return export, outside


def _read(src: LocalSource, path: str) -> bytes:
    with src.open_range(path) as stream:
        return stream.read()


def _in_new_thread(fn: object) -> object:
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()  # type: ignore[operator]
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]


def test_a_folder_swapped_for_a_link_mid_run_never_leads_outside(tree: tuple[Path, Path]) -> None:
    export, outside = tree
    src = LocalSource(export)
    assert _read(src, "sub/a.txt") == b"inside a\n"
    (export / "sub").rename(export / "sub_old")
    (export / "sub").symlink_to(outside)
    # This thread already holds the folder it opened: it reads the export's own file, moved with it.
    assert _read(src, "sub/b.txt") == b"inside b\n"
    # A thread reaching the folder now meets the link, and refuses it.
    with pytest.raises(PermissionError, match="sub is a symbolic link"):
        _in_new_thread(lambda: _read(src, "sub/b.txt"))
    src.close()
    with pytest.raises(PermissionError, match="symbolic link"):
        _read(src, "sub/b.txt")  # after close, the cache is gone: same refusal


def test_listing_never_enters_a_linked_folder(tree: tuple[Path, Path]) -> None:
    export, outside = tree
    (export / "link").symlink_to(outside)
    entries = {e.path: e for e in LocalSource(export).iter_entries()}
    assert set(entries) == {"link", "sub/a.txt", "sub/b.txt"}
    assert entries["link"].problem is not None and entries["link"].size is None


def test_a_file_link_inside_the_root_is_read_and_one_leaving_it_is_refused(tree: tuple[Path, Path]) -> None:
    export, outside = tree
    (export / "alias.txt").symlink_to(export / "sub" / "a.txt")
    (export / "escape.txt").symlink_to(outside / "b.txt")
    src = LocalSource(export)
    assert _read(src, "alias.txt") == b"inside a\n"
    with pytest.raises(PermissionError, match="outside the export root"):
        _read(src, "escape.txt")


def test_folder_descriptors_stay_bounded_and_close(tmp_path: Path) -> None:
    for i in range(3 * DIRS_PER_THREAD):
        (tmp_path / f"d{i}").mkdir()
        (tmp_path / f"d{i}" / "f").write_bytes(b"x")
    fds = len(os.listdir("/proc/self/fd"))
    src = LocalSource(tmp_path)
    for i in range(3 * DIRS_PER_THREAD):
        assert _read(src, f"d{i}/f") == b"x"
    assert len(os.listdir("/proc/self/fd")) <= fds + DIRS_PER_THREAD
    src.close()
    assert len(os.listdir("/proc/self/fd")) == fds


def test_a_manifest_given_as_export_dotdot_is_outside(tree: tuple[Path, Path]) -> None:
    export, _ = tree
    src = LocalSource(export)
    assert src.relative(str(export / ".." / "SUMS")) is None
    assert src.relative(str(export / "sub" / ".." / "SUMS")) == "SUMS"


def test_the_refusal_names_the_folder_that_is_a_link(tmp_path: Path) -> None:
    export, outside = tmp_path / "export", tmp_path / "outside"
    (export / "ab").mkdir(parents=True)
    outside.mkdir()
    (outside / "f").write_bytes(b"secret")
    (export / "ab" / "b").symlink_to(outside)
    with pytest.raises(PermissionError, match="ab/b is a symbolic link"):
        _read(LocalSource(export), "ab/b/f")
