"""Evidence test helpers: a controllable clock, a real export with a real manifest, the real runner."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reversib.config import CheckConfig
from reversib.history import History
from reversib.model import Outcome, RunResult
from reversib.runner import run_check
from tests.helpers import make_export, run_tool

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc).timestamp()
DAY = 86400.0


class Clock:
    """Epoch seconds, moved by the test; every reading advances it by `tick` (so runs take time)."""

    def __init__(self, t: float = T0, tick: float = 0.0) -> None:
        self.t = t
        self.tick = tick

    def __call__(self) -> float:
        now = self.t
        self.t += self.tick
        return now


def make_check(source: Path, **extra: Any) -> CheckConfig:
    data: dict[str, Any] = {"version": 1, "id": extra.pop("id", "acme"), "name": "ACME export",
                            "source": {"url": str(source)}, "manifest": {"path": "SHA256SUMS"},
                            "fixity": {"parallelism": 1}}
    data.update(extra)
    return CheckConfig.model_validate(data)


def write_export(root: Path, files: dict[str, bytes] | None = None) -> Path:
    make_export(root, files)
    run_tool(["sha256sum"], root, "SHA256SUMS")
    return root


@pytest.fixture
def clock() -> Clock:
    return Clock()


class Ledger:
    """A check over a real export, run through the real runner at chosen times."""

    def __init__(self, root: Path, history: History, clock: Clock, check: CheckConfig) -> None:
        self.root, self.history, self.clock, self.check = root, history, clock, check

    def run(self, at: float, *, corrupt: bool = False) -> RunResult:
        self.clock.t = at
        target = self.root / "a.txt"
        original = target.read_bytes()
        if corrupt:
            target.write_bytes(b"tampered\n")
        try:
            return run_check(self.check, self.history, clock=self.clock)
        finally:
            target.write_bytes(original)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[Ledger]:
    """A check over a real export with its history on SQLite, then on the real PostgreSQL."""
    url = (f"sqlite:///{tmp_path / 'history.db'}" if request.param == "sqlite"
           else str(request.getfixturevalue("pg_database")))
    root = write_export(tmp_path / "export")
    with History.open(url, clock=clock, host="test-host") as history:
        yield Ledger(root, history, clock, make_check(root))


def outcomes(results: list[RunResult]) -> list[Outcome]:
    return [r.outcome for r in results]


def sh(*args: str, cwd: Path | None = None, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(args), cwd=cwd, input=input, check=True, capture_output=True)


@pytest.fixture(scope="session")
def three_months(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[History, list[Outcome], str]]:
    """Three months of daily runs through the real runner (tests/evidence/test_indicators.py: SCENARIO)."""
    from tests.evidence.test_indicators import build_history

    built = build_history(tmp_path_factory.mktemp("months"))
    yield built
    built[0].close()
