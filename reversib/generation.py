"""Pick the generation (dated folder) to verify and check that the due ones are there.

* `pattern` with a `%` is a strftime template (`%Y-%m-%d`, `export-%Y%m%d`): folders whose name
  parses are generations, the newest date up to today wins (a folder dated later is a
  `generation_future` warning, never verified), and `expect.deadline` makes the day's delivery
  due from that time of day on (in the check's time zone): before the deadline, yesterday's is
  the one due.
* any other `pattern` is a glob (`export-*`): the greatest name in code-point order wins.
* `keep: N` asks that at least N generations be present.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from reversib.config import ExpectConfig, GenerationConfig
from reversib.model import Finding, FindingKind, Severity


@dataclass
class GenerationChoice:
    name: str | None
    date: dt.datetime | None = None
    due: str | None = None
    past_deadline: bool = False  # the chosen generation's own deadline has passed
    findings: list[Finding] = field(default_factory=list)


def due_date(now: float, tz: ZoneInfo, deadline: dt.time) -> dt.date:
    local = dt.datetime.fromtimestamp(now, tz)
    return local.date() if local.time() >= deadline else local.date() - dt.timedelta(days=1)


def deadline_passed(day: dt.date, now: float, tz: ZoneInfo, deadline: dt.time) -> bool:
    return now >= dt.datetime.combine(day, deadline, tzinfo=tz).timestamp()


def select(names: list[str], gen: GenerationConfig, expect: ExpectConfig, tz: ZoneInfo, now: float) -> GenerationChoice:
    choice_findings: list[Finding] = []
    if gen.is_date:
        dated: list[tuple[dt.datetime, str]] = []
        for n in names:
            try:
                dated.append((dt.datetime.strptime(n, gen.pattern), n))
            except ValueError:
                continue
        dated.sort()
        today = dt.datetime.fromtimestamp(now, tz).date()
        for d, n in dated:
            if d.date() > today:  # a clock or naming mistake: never allowed to hide the real newest export
                choice_findings.append(Finding(
                    FindingKind.GENERATION_FUTURE, n, expected=f"a generation dated {today} ({tz.key}) or earlier",
                    actual=f"dated {d.date()}: not verified", severity=Severity.WARNING))
        dated = [(d, n) for d, n in dated if d.date() <= today]
        candidates = [n for _, n in dated]
    else:
        candidates = sorted(n for n in names if fnmatch.fnmatchcase(n, gen.pattern))
        dated = []
    choice = GenerationChoice(name=candidates[-1] if candidates else None, findings=choice_findings)
    if dated:
        choice.date = dated[-1][0]
    if not candidates:
        choice.findings.append(Finding(FindingKind.GENERATION_MISSING, None,
                                       expected=f"a folder matching {gen.pattern!r}", actual="none found"))
        return choice
    deadline = expect.deadline_time
    if deadline is not None and choice.date is not None:
        due = due_date(now, tz, deadline)
        due_name = due.strftime(gen.pattern)
        choice.due = due_name
        present = {d.date() for d, _ in dated}
        if due not in present:
            choice.findings.append(Finding(
                FindingKind.GENERATION_MISSING, due_name, expected=f"generation {due_name} delivered by "
                f"{deadline.strftime('%H:%M')} {tz.key}", actual=f"newest is {choice.name}"))
        choice.past_deadline = deadline_passed(choice.date.date(), now, tz, deadline)
    if gen.keep > 1 and len(candidates) < gen.keep:
        choice.findings.append(Finding(
            FindingKind.GENERATION_MISSING, None, expected=f"at least {gen.keep} generations kept",
            actual=f"{len(candidates)} present: {', '.join(candidates[-gen.keep:])}"))
    return choice
