"""Dump expectations carried by the provider's JSON manifest (`expect.dumps`): tables and row counts checked
like the check's own, on a real pg_dump restored into the real PostgreSQL server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from reversib.config import CheckConfig
from reversib.history import History
from reversib.manifests.create import create_manifest
from reversib.model import RunResult
from reversib.runner import run_check

from .test_postgres import custom

pytestmark = pytest.mark.service


def _run(tmp_path: Path, dump: Path, expect: Any, check_dump: dict[str, Any], restore_env: str | None) -> RunResult:
    export = tmp_path / "export"
    shutil.rmtree(export, ignore_errors=True)
    (export / "db").mkdir(parents=True)
    shutil.copyfile(dump, export / "db" / "crm.dump")
    create_manifest(export, "json", tmp_path / "m.json", replace=True)
    doc = json.loads((tmp_path / "m.json").read_text())
    doc["expect"] = {"dumps": expect}
    (export / "reversib-manifest.json").write_text(json.dumps(doc))
    item: dict[str, Any] = {"path": "db/*.dump", **check_dump}
    if restore_env:
        item["restore"] = {"target_url_env": restore_env}
    check = CheckConfig.model_validate({"version": 1, "name": "manifest-dumps", "source": {"url": str(export)},
                                        "dumps": [item]})
    with History.open(f"sqlite:///{tmp_path / 'h.db'}") as history:
        return run_check(check, history)


def _kinds(result: RunResult) -> list[tuple[str, str | None]]:
    return sorted((f.kind.value, f.path) for f in result.findings)


def test_tables_and_row_counts_from_the_manifest_are_checked(tmp_path: Path, sample_db: str, dump_dir: Path,
                                                             restore_env: str) -> None:
    dump = custom(sample_db, dump_dir)
    good = {"db/crm.dump": {"tables": ["customers", "public.orders"],
                            "row_counts": {"customers": 20000, "orders": ">= 3000"}}}
    result = _run(tmp_path, dump, good, {}, restore_env)
    assert _kinds(result) == [("restored", "db/crm.dump")], result.findings
    assert "2 row counts, 23000 rows" in (result.findings[0].actual or "")

    wrong = {"db/crm.dump": {"tables": ["invoices"], "row_counts": {"customers": 19999}}}
    result = _run(tmp_path, dump, wrong, {}, restore_env)
    assert [k for k, _ in _kinds(result)] == ["table_missing"]  # the structural level stops before the restore

    fewer = {"db/crm.dump": {"row_counts": {"customers": 19999}}}
    result = _run(tmp_path, dump, fewer, {}, restore_env)
    assert ("row_count_mismatch", "db/crm.dump") in _kinds(result)


def test_the_check_wins_over_the_manifest_for_one_table(tmp_path: Path, sample_db: str, dump_dir: Path,
                                                        restore_env: str) -> None:
    dump = custom(sample_db, dump_dir)
    result = _run(tmp_path, dump, {"db/crm.dump": {"row_counts": {"customers": 5}}},
                  {"row_counts": {"customers": 20000}}, restore_env)
    assert _kinds(result) == [("restored", "db/crm.dump")], result.findings


def test_a_malformed_dump_expectation_is_manifest_invalid(tmp_path: Path, sample_db: str, dump_dir: Path) -> None:
    result = _run(tmp_path, custom(sample_db, dump_dir), {"db/crm.dump": {"row_counts": {"customers": "many"}}},
                  {}, None)
    invalid = [f for f in result.findings if f.kind.value == "manifest_invalid"]
    assert invalid and "expect.dumps" in (invalid[0].actual or "")
