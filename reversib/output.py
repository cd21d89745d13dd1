"""Human-readable rendering of run results, and the terminal progress bar."""

from __future__ import annotations

import sys
from typing import IO, Any

from reversib.model import Outcome, RunResult, Severity, combine_outcomes
from reversib.units import format_duration, format_size

SYMBOL = {Outcome.PASSED: "PASSED", Outcome.FAILED: "FAILED", Outcome.ERROR: "ERROR", Outcome.DEFERRED: "DEFERRED"}
MAX_FINDINGS_SHOWN = 50


def printable(text: str | None) -> str:
    """Names may hold newlines, control characters or undecodable bytes: show them escaped."""
    if text is None:
        return "-"
    if text.isprintable() and text == text.strip("\n"):
        return text
    return ascii(text)


def render_result(r: RunResult, out: IO[str], *, verbose: bool = False) -> None:
    tiers = ", ".join(f"{k}: {v}" for k, v in sorted(r.tiers.items())) or "none"
    gen = f" [{r.generation}]" if r.generation else ""
    out.write(f"{SYMBOL[r.outcome]:<8} {r.check_name}{gen}: {r.files_verified} of {r.manifest_entries} files, "
              f"{format_size(r.bytes_verified)} verified in {format_duration(r.duration_seconds)} "
              f"(tiers: {tiers})\n")
    if r.error:
        out.write(f"  could not verify: {printable(r.error)}\n")
    shown = [f for f in r.findings if verbose or f.sev is not Severity.INFO or r.outcome is Outcome.DEFERRED]
    for f in shown[:MAX_FINDINGS_SHOWN if not verbose else None]:
        out.write(f"  {f.sev.value:<7} {f.kind.value:<18} {printable(f.path)}\n")
        if f.expected is not None or f.actual is not None:
            out.write(f"          expected: {printable(f.expected)}\n          actual:   {printable(f.actual)}\n")
        if f.detail:
            out.write(f"          ({f.detail})\n")
    if len(shown) > MAX_FINDINGS_SHOWN and not verbose:
        out.write(f"  ... and {len(shown) - MAX_FINDINGS_SHOWN} more findings (use --json or -v to see all)\n")


def render_summary(results: list[RunResult], out: IO[str]) -> None:
    if len(results) > 1:
        counts: dict[str, int] = {}
        for r in results:
            counts[r.outcome.value] = counts.get(r.outcome.value, 0) + 1
        overall = combine_outcomes([r.outcome for r in results])
        detail = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        out.write(f"\n{SYMBOL[overall]}: {len(results)} checks ({detail})\n")


class TerminalProgress:
    """A tqdm bar on stderr, shown only when stderr is a terminal."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stderr
        self._bar: Any = None

    @staticmethod
    def wanted(stream: IO[str] | None = None) -> bool:
        s = stream or sys.stderr
        return hasattr(s, "isatty") and s.isatty()

    def start(self, check: str, total_bytes: int | None, total_files: int) -> None:
        """A byte bar when the manifest gives sizes (JSON, BagIt Payload-Oxum aside), else a file bar."""
        from tqdm import tqdm

        self._by_bytes = total_bytes is not None
        common = {"desc": check[:30], "file": self.stream, "leave": False, "dynamic_ncols": True, "mininterval": 0.2}
        if self._by_bytes:
            self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, **common)
        else:
            self._bar = tqdm(total=total_files, unit=" files", **common)
        self._files = 0
        self._bytes = 0
        self._total_files = total_files

    def advance(self, nbytes: int, nfiles: int) -> None:
        if self._bar is None:
            return
        self._files += nfiles
        self._bytes += nbytes
        if self._by_bytes:
            self._bar.set_postfix_str(f"{self._files}/{self._total_files} files", refresh=False)
            self._bar.update(nbytes)
        else:
            self._bar.set_postfix_str(f"{self._bytes / 1e6:.0f} MB", refresh=False)
            self._bar.update(nfiles)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
