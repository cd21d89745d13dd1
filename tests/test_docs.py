"""The public surface is documented: a key, command, option, finding kind or tier without docs fails here."""

from __future__ import annotations

import argparse
import json
import re
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from reversib.cli import build_parser
from reversib.config import CheckConfig, DaemonConfig
from reversib.model import EXIT_CODES, EXIT_CONFIG, EXIT_USAGE, FindingKind, Outcome, Tier

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def config_keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    for name, f in model.model_fields.items():
        key = prefix + name
        yield key
        for t in (f.annotation, *typing.get_args(f.annotation)):
            if isinstance(t, type) and issubclass(t, BaseModel):
                yield from config_keys(t, key + ".")


@pytest.mark.parametrize("model", [CheckConfig, DaemonConfig])
def test_every_config_key_is_documented(model: type[BaseModel]) -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = [k for k in config_keys(model) if f"`{k}`" not in text]
    assert not missing, f"undocumented configuration keys in docs/configuration.md: {missing}"


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix}{name}"
                if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                    yield from _commands(sub, full + " ")
                else:
                    yield full, sub


def _section(text: str, command: str) -> str:
    m = re.search(rf"^## `reversib {re.escape(command)}[ `].*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"docs/cli.md has no section '## `reversib {command}`'"
    return m.group(1)


COMMON = {"--config", "--history", "--verbose", "--quiet", "--help"}


def test_every_cli_command_and_option_is_documented() -> None:
    text = (DOCS / "cli.md").read_text()
    commands = list(_commands(build_parser()))
    assert {c for c, _ in commands} >= {"verify-now", "check-config", "checks", "history", "manifest create"}
    for command, sub in commands:
        section = _section(text, command)
        for action in sub._actions:
            longs = [o for o in action.option_strings if o.startswith("--")]
            for opt in longs:
                where = text if opt in COMMON else section
                assert f"`{opt}" in where, f"option {opt} of 'reversib {command}' is not documented in docs/cli.md"
            if not action.option_strings and action.dest not in ("help",):
                assert f"`{action.metavar or action.dest.upper()}`" in section, \
                    f"argument {action.metavar} of 'reversib {command}' is not documented"


def test_every_finding_kind_tier_and_outcome_is_documented() -> None:
    text = (DOCS / "findings.md").read_text()
    for kind in FindingKind:
        assert f"| `{kind.value}` |" in text, f"finding kind {kind.value} is not documented in docs/findings.md"
    for tier in Tier:
        assert f"| `{tier.value}` |" in text, f"tier {tier.value} is not documented"
    for outcome in Outcome:
        assert f"| `{outcome.value}` | {outcome.exit_code} |" in text, f"outcome {outcome.value} is not documented"
    for code in (EXIT_USAGE, EXIT_CONFIG):
        assert f"| — | {code} |" in text


def test_exit_codes_in_readme_and_help() -> None:
    readme = (ROOT / "README.md").read_text()
    helptext = build_parser().format_help()
    for code in [*EXIT_CODES.values(), EXIT_USAGE, EXIT_CONFIG]:
        assert f"| {code} |" in readme, f"exit code {code} missing from the README"
        assert re.search(rf"^\s+{code}\s+\S", helptext, re.M), f"exit code {code} missing from --help"


def test_report_schema_lists_every_kind_and_tier() -> None:
    schema = json.loads((ROOT / "schemas" / "report.schema.json").read_text())
    assert set(schema["$defs"]["kind"]["enum"]) == {k.value for k in FindingKind}
    assert set(schema["$defs"]["tier"]["enum"]) == {t.value for t in Tier}
    assert set(schema["$defs"]["outcome"]["enum"]) == {o.value for o in Outcome}


def test_readme_quick_start_is_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines() if line.strip()]
    assert commands == ["make run", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci, ".ci/run must call the README's test command"
