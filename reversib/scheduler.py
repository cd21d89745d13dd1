"""Schedule slots: the instants at which a check is due, derived from its schedule alone.

A slot is a UTC instant (epoch seconds).  The same schedule gives the same slots in every process,
so that several daemons sharing one history claim the same (check, slot) row and only one runs it
(`History.start_run` raises `SlotTaken` for the others):

* `every: 6h` -- the multiples of the interval since the Unix epoch plus a stable offset derived from
  the check id (so a thousand checks `every: 60s` do not all fall due at the same second), never
  "6 h after the daemon started";
* `cron: "30 7 * * *"` -- the cron's fire times in the check's time zone (APScheduler's `CronTrigger`
  parses the expression and handles daylight saving time).

The daemon's timer (`reversib.timer`, an APScheduler 3.x `BackgroundScheduler`) fires at these slots
through `Schedule.next_after`; it wakes the daemon, it is never the record of what ran: the history is.
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from reversib.config import CheckConfig, ScheduleConfig

UTC = timezone.utc
# How far back `last_slot_at_or_before` probes for a cron slot before walking forward (seconds).
_PROBES = (61.0, 3601.0, 86401.0, 7 * 86401.0, 32 * 86401.0, 367 * 86401.0)


class Schedule:
    """The slots of one schedule."""

    def __init__(self, config: ScheduleConfig, tz: str = "UTC", offset: float = 0.0) -> None:
        self.every = config.every
        self.offset = offset % config.every if config.every else 0.0
        self.cron = config.cron
        self.tz = tz
        self._trigger: Any = None
        if config.cron is not None:
            from apscheduler.triggers.cron import CronTrigger

            self._trigger = CronTrigger.from_crontab(config.cron, timezone=ZoneInfo(tz))

    @classmethod
    def of(cls, check: CheckConfig) -> Schedule | None:
        if check.schedule is None:
            return None
        return cls(check.schedule, check.timezone, spread(check.check_id, check.schedule.every or 0.0))

    @property
    def key(self) -> tuple[float | None, float, str | None, str]:
        """Equal keys, equal slots: a reload keeps the timer's job of a check whose schedule did not change."""
        return (self.every, self.offset, self.cron, self.tz)

    def describe(self) -> str:
        return f"every {self.every:g}s" if self.every is not None else f"cron {self.cron!r}"

    def next_after(self, t: float) -> float:
        """The first slot strictly after `t`."""
        if self.every is not None:
            return (math.floor((t - self.offset) / self.every) + 1) * self.every + self.offset
        # Cron slots fall on whole seconds: the first fire time at or after the next whole second.
        start = datetime.fromtimestamp(math.floor(t) + 1, UTC)
        fire = self._trigger.get_next_fire_time(None, start)
        if fire is None:  # pragma: no cover - a 5-field cron always fires again
            raise ValueError(f"schedule {self.describe()} never fires after {start}")
        return float(fire.timestamp())

    def last_at_or_before(self, t: float, horizon: float | None = None) -> float | None:
        """The newest slot at or before `t`, None when there is none within `horizon` seconds."""
        if self.every is not None:
            slot = math.floor((t - self.offset) / self.every) * self.every + self.offset
            return slot if horizon is None or t - slot <= horizon else None
        for back in _PROBES:
            if horizon is not None and back > horizon:
                back = horizon
            slot = self.next_after(t - back)
            if slot <= t:
                while (following := self.next_after(slot)) <= t:
                    slot = following
                return slot
            if horizon is not None and back >= horizon:
                return None
        return None

    def interval(self, now: float) -> float:
        """The expected time between two slots (the next two, for a cron): what `ExportStale` compares to."""
        if self.every is not None:
            return self.every
        first = self.next_after(now)
        return self.next_after(first) - first


def spread(check_id: str, every: float) -> float:
    """A stable offset in [0, every) for an `every` schedule, whole milliseconds, the same in every process."""
    if every <= 0:
        return 0.0
    digest = int.from_bytes(hashlib.sha256(check_id.encode()).digest()[:8], "big")
    return (digest % max(1, round(every * 1000))) / 1000
