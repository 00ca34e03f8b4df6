"""`slack.digest_cron` is cron syntax with cron's weekday numbers; the old form gets its cron spelling."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from auditor.config import ConfigError, parse_config
from auditor.cron import cron_kwargs, cron_trigger

MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


def next_fires(expr: str, n: int = 5, timezone: str = "UTC") -> list[str]:
    trigger, fires, now = cron_trigger(expr, timezone), [], MONDAY
    for _ in range(n):
        fire = trigger.get_next_fire_time(None, now)
        assert fire is not None
        fires.append(fire.strftime("%a %H:%M"))
        now = fire.replace(second=1)
    return fires


@pytest.mark.parametrize(
    ("expr", "days"),
    [
        ("0 9 * * 1", {"Mon"}),  # APScheduler's own from_crontab would say Tuesday (apscheduler#286)
        ("0 9 * * 0", {"Sun"}),
        ("0 9 * * 7", {"Sun"}),
        ("0 9 * * mon", {"Mon"}),
        ("0 9 * * 1,sat", {"Mon", "Sat"}),
    ],
)
def test_weekdays_mean_what_they_mean_in_crontab(expr: str, days: set[str]) -> None:
    assert {f.split()[0] for f in next_fires(expr)} == days


def test_weekday_ranges_and_steps() -> None:
    assert next_fires("30 8 * * 1-5") == ["Tue 08:30", "Wed 08:30", "Thu 08:30", "Fri 08:30", "Mon 08:30"]
    assert {f.split()[0] for f in next_fires("0 9 * * */2", 8)} == {"Sun", "Tue", "Thu", "Sat"}
    assert cron_kwargs("0 9 * * 0-7", "UTC")["day_of_week"] == "*"


def test_local_time_in_the_configured_zone() -> None:
    trigger = cron_trigger("0 9 * * mon", "Europe/Berlin")
    fire = trigger.get_next_fire_time(None, MONDAY)
    assert fire is not None and (fire.hour, fire.utcoffset()) == (
        9,
        datetime(2026, 12, 7, 9, tzinfo=fire.tzinfo).utcoffset(),
    )


@pytest.mark.parametrize(
    ("expr", "says"),
    [
        (
            "mon 09:00",
            "is the old 'day HH:MM' form; in cron syntax (minute hour day month weekday) write '0 9 * * mon'",
        ),
        ("0 9 * *", "has 4 field(s); cron syntax has five"),
        ("0 9 * * 8", "weekday '8': use 0-7"),
        ("61 9 * * 1", "is not a valid cron expression"),
    ],
)
def test_bad_expressions_say_what_is_wrong(expr: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        cron_kwargs(expr, "UTC")


def test_the_config_rejects_the_old_form_with_its_cron_spelling() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config('[slack]\ndigest_cron = "fri 17:30"\n', source="auditor.toml")
    assert any("slack.digest_cron" in p and "write '30 17 * * fri'" in p for p in raised.value.problems)
    assert (
        parse_config('[slack]\ndigest_cron = "0 9 * * 1"\n', source="auditor.toml").slack.digest_cron
        == "0 9 * * 1"
    )
