"""Crontab expressions ("0 9 * * mon") as APScheduler cron triggers, with cron's own weekday numbers.

APScheduler 3's `CronTrigger.from_crontab` reads weekday numbers as 0 = Monday, where cron reads
0 (and 7) as Sunday (apscheduler#286): "0 9 * * 1" would fire on Tuesdays. Numbers in the weekday
field are turned into day names first, so an expression means here what it means in crontab(5).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger

FIELDS = ("minute", "hour", "day", "month", "day_of_week")
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # cron's 0..6 (7 is Sunday again)
_OLD_FORM = re.compile(r"^(mon|tue|wed|thu|fri|sat|sun)\s+(\d{1,2}):(\d{2})$", re.IGNORECASE)
_NUMERIC = re.compile(r"^(\*|\d+(?:-\d+)?)(?:/(\d+))?$")


def cron_kwargs(expr: str, timezone: str) -> dict[str, Any]:
    """A five-field crontab expression as `CronTrigger(**kwargs)` arguments; ValueError says what is wrong."""
    old = _OLD_FORM.match(expr.strip())
    if old:
        day, hour, minute = old.group(1).lower(), int(old.group(2)), int(old.group(3))
        raise ValueError(
            f"{expr!r} is the old 'day HH:MM' form; in cron syntax (minute hour day month weekday) "
            f"write {f'{minute} {hour} * * {day}'!r}"
        )
    values = expr.split()
    if len(values) != len(FIELDS):
        raise ValueError(
            f"{expr!r} has {len(values)} field(s); cron syntax has five: minute hour day month weekday, "
            "e.g. '0 9 * * mon'"
        )
    values[4] = _weekday_names(values[4])
    from apscheduler.triggers.cron import CronTrigger  # here: 0.1 s of every command's start-up

    try:
        CronTrigger.from_crontab(" ".join(values), timezone=timezone)
    except ValueError as exc:
        raise ValueError(f"{expr!r} is not a valid cron expression: {exc}") from None
    return {**dict(zip(FIELDS, values, strict=True)), "timezone": timezone}


def cron_trigger(expr: str, timezone: str) -> CronTrigger:
    from apscheduler.triggers.cron import CronTrigger

    return CronTrigger(**cron_kwargs(expr, timezone))


def _weekday_names(field: str) -> str:
    """Cron weekday numbers (0/7 Sunday) as names; items already in names are the same in both readings."""
    names: list[str] = []
    days: set[int] = set()
    for item in field.split(","):
        match = _NUMERIC.match(item)
        if match is None:
            if any(c.isdigit() for c in item):
                raise ValueError(f"weekday {item!r}: use 0-7 (0 and 7 are Sunday) or names (mon-fri)")
            names.append(item)  # mon, mon-fri, or something APScheduler will reject with its reason
            continue
        span, step = match.group(1), int(match.group(2) or 1)
        first, last = (0, 6) if span == "*" else (int(span.split("-")[0]), int(span.split("-")[-1]))
        if match.group(2) and "-" not in span and span != "*":
            last = 7  # "n/s": from n to the end of the week
        if not 0 <= first <= last <= 7 or step == 0:
            raise ValueError(f"weekday {item!r}: use 0-7 (0 and 7 are Sunday) or names (mon-fri)")
        days.update(d % 7 for d in range(first, last + 1, step))
    if len(days) == 7:
        return "*"
    return ",".join([*names, *(WEEKDAYS[d] for d in sorted(days))])
