"""Run the real CLI in-process and parse its JSON document (validated against the published schema)."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import jsonschema

from reversib.cli import main

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "schemas" / "report.schema.json").read_text())


def run_cli(args: list[str], history: Path | str) -> tuple[int, str]:
    out = io.StringIO()
    url = history if isinstance(history, str) else f"sqlite:///{history}"
    with redirect_stdout(out):
        code = main([*args, "--history", url])
    return code, out.getvalue()


def verify_json(args: list[str], history: Path | str) -> tuple[int, dict[str, Any]]:
    code, text = run_cli(["verify-now", *args, "--json", "--no-progress"], history)
    doc = json.loads(text)
    jsonschema.validate(doc, SCHEMA)
    return code, doc


def findings_of(doc: dict[str, Any]) -> list[tuple[str, str | None]]:
    return sorted((f["kind"], f["path"]) for run in doc["runs"] for f in run["findings"])
