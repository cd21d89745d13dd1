"""Finding the client tools: Debian's pg_wrapper is skipped only when its choice is certain."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from reversib.dumps import base


def _layout(tmp_path: Path, versions: list[str]) -> Path:
    """A PATH folder whose `pg_restore` links to a fake pg_wrapper, and /usr/lib/postgresql-like versions."""
    share = tmp_path / "share" / "postgresql-common"
    share.mkdir(parents=True)
    wrapper = share / "pg_wrapper"
    wrapper.write_text("#!/bin/sh\nexit 0\n")
    wrapper.chmod(0o755)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "pg_restore").symlink_to(wrapper)
    for v in versions:
        (tmp_path / "lib" / v / "bin").mkdir(parents=True)
        tool = tmp_path / "lib" / v / "bin" / "pg_restore"
        tool.write_text("#!/bin/sh\nexit 0\n")
        tool.chmod(0o755)
    return bindir


@pytest.mark.parametrize("versions", [["15"], ["15", "17"], []])
def test_pg_wrapper_is_skipped_only_with_one_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     versions: list[str]) -> None:
    bindir = _layout(tmp_path, versions)
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.setattr(base, "PG_VERSIONS_DIR", tmp_path / "lib")
    found = base.find_tool("pg_restore")
    if len(versions) == 1:
        assert found == str(tmp_path / "lib" / "15" / "bin" / "pg_restore")
    else:  # several versions (the wrapper's rules choose) or none found: the wrapper itself
        assert found == str(bindir / "pg_restore")


def test_a_tool_that_is_not_the_wrapper_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "pg_restore"
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    (tmp_path / "lib" / "15" / "bin").mkdir(parents=True)
    shutil.copy(tool, tmp_path / "lib" / "15" / "bin" / "pg_restore")
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.setattr(base, "PG_VERSIONS_DIR", tmp_path / "lib")
    assert base.find_tool("pg_restore") == str(tool)


def test_this_machines_pg_restore_runs_directly() -> None:
    found = shutil.which("pg_restore")
    if found is None or os.path.basename(os.path.realpath(found)) != "pg_wrapper":
        pytest.skip("pg_restore here is not Debian's pg_wrapper")
    versions = list(Path("/usr/lib/postgresql").glob("*/bin/pg_restore"))
    if len(versions) != 1:
        pytest.skip(f"{len(versions)} PostgreSQL versions installed: the wrapper chooses")
    assert base.find_tool("pg_restore") == str(versions[0])
