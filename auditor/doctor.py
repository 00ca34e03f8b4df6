"""`auditor doctor`'s checks: what is reachable and what is not, and the fix for each.

Each source answers for itself (the collectors' own `status()`, turned into `Check`s by the
composition root); this module holds what the checks share: the store, looked at read-only
(doctor creates nothing: no directory, no file, no table), Slack's token, a billing source for each
bill-priced deployment, and
how the result is printed. Every check is bounded in time: endpoints by the daemon's scrape
deadline, PostgreSQL by its connect timeout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from auditor import output
from auditor.config import Config
from auditor.installation import OWN_PACKAGES, foreign_packages
from auditor.redact import redact
from auditor.store import Store, StoreError


@dataclass(frozen=True, slots=True)
class Check:
    source: str
    ok: bool
    detail: str
    fix: str | None = None
    required: bool = True


def check_packages() -> Check:
    """`rules`, `reports` and `collectors` are gpu-auditor's own (start-up checks it too)."""
    foreign = foreign_packages()
    if not foreign:
        return Check("packages", True, f"{', '.join(OWN_PACKAGES)} are gpu-auditor's own")
    return Check("packages", False, "; ".join(p.message() for p in foreign))


def check_store(config: Config) -> Check:
    """The store as the daemon would use it, looked at without creating or changing anything."""
    url = make_url(config.store.url)
    shown = url.render_as_string(hide_password=True)
    database = url.database or ""
    if url.get_backend_name() == "sqlite" and database != ":memory:" and not Path(database).exists():
        parent = _nearest_existing(Path(database).parent)
        if os.access(parent, os.W_OK):
            return Check("store", True, f"{shown}: no store yet; the daemon creates it at its first start")
        return Check(
            "store",
            False,
            f"{shown}: no store, and {parent} is not writable",
            f"give the daemon's user write access to {parent}",
        )
    try:
        store = Store.open(config.store.url, read_only=True)
        try:
            version = store.schema_version()
        finally:
            store.close()
    except StoreError as exc:
        return Check("store", False, f"{shown}: {exc}", "set store.url to a writable database")
    except SQLAlchemyError as exc:  # the driver's errors, wrapped: doctor reports them instead of crashing
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())  # one line
        return Check("store", False, f"{shown}: {redact(reason)}", "check store.url and the database")
    if url.get_backend_name() == "sqlite" and database != ":memory:":
        path = Path(database)
        if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
            return Check(
                "store",
                False,
                f"{path} is not writable",
                f"give the daemon's user write access to {path} and its directory",
            )
        return Check("store", True, f"{shown} writable, schema version {version}")
    return Check("store", True, f"{shown} reachable, schema version {version}")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_slack(config: Config, env: Mapping[str, str]) -> Check | None:
    slack = config.slack
    channels = [slack.channel_info, slack.channel_warning, slack.channel_critical, slack.digest_channel]
    if not any(channels):
        return None
    if slack.webhook_url_env and env.get(slack.webhook_url_env):
        return Check("slack", True, f"webhook URL in ${slack.webhook_url_env}")
    if slack.token_file is not None:
        if slack.token_file.is_file() and os.access(slack.token_file, os.R_OK):
            return Check("slack", True, f"token file {slack.token_file} readable")
        return Check(
            "slack", False, f"token file {slack.token_file} is missing or unreadable", "create it (mode 0600)"
        )
    if env.get(slack.token_env):
        return Check("slack", True, f"token present in ${slack.token_env}")
    return Check(
        "slack",
        False,
        f"no token in ${slack.token_env}",
        f"set {slack.token_env} in /etc/auditor/auditor.env (the unit's EnvironmentFile)",
    )


_SERVES = {
    "aws": ("aws_cost_explorer", "focus_s3", "focus_files"),
    "gcp": ("gcp_billing_export", "gcp_catalog", "focus_bigquery", "focus_files"),
    "focus": ("focus_s3", "focus_bigquery", "focus_files"),
}
"""The billing source kinds that can price a deployment of each `price.source`."""


def _check_billing(config: Config) -> list[Check]:
    """A deployment priced from a bill needs a billing source that can bring that bill in; each
    configured source is then checked for real by the composition root (a cheap authenticated call)."""
    kinds = {s.kind for s in config.billing.sources}
    checks = []
    for source, serving in _SERVES.items():
        priced = [d.name for d in config.deployments if d.price.source == source]
        if priced and not kinds & set(serving):
            checks.append(
                Check(
                    f"billing {source}",
                    False,
                    f"{', '.join(priced)} priced from the {source.upper()} bill, but no billing source "
                    "brings that bill in: they show no billing data",
                    f"add a [[billing.sources]] of kind {' or '.join(serving[:2])} (README: Cloud bills)",
                )
            )
    return checks


def general_checks(config: Config, env: Mapping[str, str]) -> list[Check]:
    """The checks that do not depend on a collector: the store, Slack, a billing source for each bill."""
    checks = [check_packages(), check_store(config)]
    slack = _check_slack(config, env)
    if slack is not None:
        checks.append(slack)
    checks.extend(_check_billing(config))
    return checks


def failed(checks: Sequence[Check]) -> list[Check]:
    return [c for c in checks if not c.ok and c.required]


@dataclass(frozen=True, slots=True)
class DoctorResult:
    """`auditor doctor`: what is reachable on this host (or fleet), each check with its fix."""

    host: str
    ok: bool
    """No required check failed."""
    checks: tuple[Check, ...]


def doctor_result(host: str, checks: Sequence[Check]) -> DoctorResult:
    """The checks as shown: a detail can quote a library's message, so it is redacted here, once."""
    shown = tuple(replace(c, detail=redact(c.detail)) for c in checks)
    return DoctorResult(host=host, ok=not failed(checks), checks=shown)


def render_json(host: str, checks: Sequence[Check]) -> str:
    return output.render_json(doctor_result(host, checks))


def render_text(checks: Sequence[Check]) -> str:
    lines = []
    for c in checks:
        mark = "ok  " if c.ok else ("FAIL" if c.required else "warn")
        fix = f" -> {c.fix}" if c.fix and not c.ok else ""
        lines.append(redact(f"{mark}  {c.source}: {c.detail}{fix}"))
    return "\n".join(lines)
