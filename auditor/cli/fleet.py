"""`auditor fleet rollup`: fleet mode's roll-up from Prometheus into the store, for a window (a backfill,
or a window the daemon could not read); the daemon runs the same roll-up every `fleet.interval_s`.

Composition root for fleet mode: `fleet_reader` builds the Prometheus binding from the config (the
collector is imported here, when a fleet command runs, never at the CLI's start-up).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from auditor.cli.common import CONTEXT, ConfigOption, JsonOption, app, open_store, require_config
from auditor.config import Config, FleetConfig
from auditor.doctor import Check
from auditor.errors import BadInputError, UnavailableError
from auditor.fleet import rollup_fleet
from auditor.model import MINUTE_S
from auditor.output import emit, output_format
from auditor.results import FleetRollupResult
from auditor.rollup import minute_floor
from auditor.store import DAY_S, fleet_minute_window_s
from reports.terminal import fleet_rollup_text

if TYPE_CHECKING:
    from collectors.prometheus import FleetReader

fleet_app = typer.Typer(
    help="Fleet mode: DCGM and inference servers read from Prometheus.",
    no_args_is_help=True,
    context_settings=CONTEXT,
)
app.add_typer(fleet_app, name="fleet")


def fleet_config(config: Config) -> FleetConfig:
    if config.fleet is None:
        raise BadInputError(
            "the config has no [fleet] section", "add one with fleet.url (deploy/fleet.example.toml)"
        )
    return config.fleet


def fleet_reader(config: Config, env: Mapping[str, str] | None = None) -> FleetReader:
    """The Prometheus reader the config describes (credentials read now, registered as secrets)."""
    from collectors.interface import CollectorError
    from collectors.prometheus import DeploymentMatch, FleetReader, PromAuth, PromQL, connect

    fleet = fleet_config(config)
    try:
        auth = PromAuth.from_sources(
            basic_user=fleet.basic_auth_user,
            password_env=fleet.basic_auth_password_env,
            password_file=fleet.basic_auth_password_file,
            bearer_env=fleet.bearer_token_env,
            bearer_file=fleet.bearer_token_file,
            ca_file=fleet.ca_file,
            env=os.environ if env is None else env,
        )
    except CollectorError as exc:
        raise BadInputError(exc.message, exc.fix) from None
    deployments = [
        DeploymentMatch(d.name, d.prometheus_matchers, d.prometheus_server_matchers or d.prometheus_matchers)
        for d in config.deployments
        if d.prometheus_matchers or d.prometheus_server_matchers
    ]
    promql = PromQL(
        connect(fleet.url, auth, timeout_s=fleet.timeout_s),
        retries=fleet.retries,
        backoff_s=fleet.retry_backoff_s,
    )
    return FleetReader(
        promql,
        deployments,
        gpu_matchers=fleet.gpu_matchers,
        server_matchers=fleet.server_matchers,
        chunk_minutes=fleet.chunk_minutes,
    )


DOCTOR_LOOKBACK = "2h"
"""`doctor` counts the GPUs with a DCGM activity series in the last two hours."""


def fleet_check(config: Config) -> Check:
    """Doctor's line for fleet mode: Prometheus answers, with these credentials, and holds DCGM series
    for some GPUs (one cheap query, its usual retries)."""
    from collectors.interface import CollectorError
    from collectors.prometheus import selector, shown

    fleet = fleet_config(config)
    try:
        reader = fleet_reader(config)
    except BadInputError as exc:
        return Check("prometheus", False, exc.message, exc.fix)
    names = "DCGM_FI_DEV_GPU_UTIL|DCGM_FI_PROF_SM_ACTIVE|DCGM_FI_PROF_GR_ENGINE_ACTIVE"
    series = selector({**fleet.gpu_matchers, "__name__": f"~{names}"})
    query = f"count(count by (UUID, GPU_I_ID) (last_over_time({series}[{DOCTOR_LOOKBACK}])))"
    now = minute_floor(time.time())
    where = shown(fleet.url)
    try:
        result = reader.promql.range(query, now, now, MINUTE_S)
    except CollectorError as exc:
        return Check("prometheus", False, exc.message, "check fleet.url, the way there, and its credentials")
    gpus = int(float(result[0]["values"][-1][1])) if result and result[0].get("values") else 0
    if gpus == 0:
        return Check(
            "prometheus",
            False,
            f"{where} answers, but holds no DCGM utilization series in the last {DOCTOR_LOOKBACK}",
            "check that Prometheus scrapes dcgm-exporter, and fleet.gpu_matchers",
        )
    return Check("prometheus", True, f"{where}: DCGM series for {gpus} GPU(s) in the last {DOCTOR_LOOKBACK}")


def _instant(value: str, tz: object, option: str) -> float:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadInputError(
            f"{option} {value!r} is not a date or time", "use YYYY-MM-DD or YYYY-MM-DDTHH:MM"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)  # type: ignore[arg-type]
    return parsed.timestamp()


@fleet_app.command("rollup")
def rollup(
    config_path: ConfigOption = None,
    start: Annotated[
        str | None, typer.Option("--from", help="Start (YYYY-MM-DD[THH:MM], the config's zone).")
    ] = None,
    end: Annotated[str | None, typer.Option("--to", help="End, exclusive (default: now).")] = None,
    days: Annotated[int, typer.Option(min=1, max=400, help="Without --from: this many days back.")] = 1,
    json_out: JsonOption = False,
) -> None:
    """Read the fleet's DCGM and inference-server metrics from Prometheus and roll a window up."""
    from collectors.interface import CollectorError

    config = require_config(config_path)
    fleet = fleet_config(config)
    now = time.time()
    end_ts = minute_floor(_instant(end, config.tz, "--to") if end else now)
    start_ts = minute_floor(
        _instant(start, config.tz, "--from") if start else end_ts - timedelta(days=days).total_seconds()
    )
    if start_ts >= end_ts:
        raise BadInputError("--from must be before --to")
    reader = fleet_reader(config)
    store = open_store(config)
    capacities = {d.name: d.capacity_tokens_per_s for d in config.deployments}
    kept = config.store

    def minute_cut(gpus: int) -> float:
        """Where the store's minute window begins for this many GPUs (as the daemon's prune keeps it)."""
        days = kept.minute_retention_days
        window = days * DAY_S if days is not None else fleet_minute_window_s(gpus, kept.minute_rows_max)
        return now - min(window, kept.rollup_retention_days * DAY_S)

    began = time.monotonic()
    try:
        result = rollup_fleet(
            store,
            reader,
            start_ts,
            end_ts,
            max_gap_s=fleet.max_gap_s,
            idle_threshold=config.rules.idle_threshold,
            capacity_tokens_per_s=capacities.get,
            minute_cut=minute_cut,
        )
    except CollectorError as exc:
        # The chunks before the failure are written; the rest stays unknown until a rerun reads it.
        raise UnavailableError(
            exc.message, "rerun when Prometheus answers (the window is left unknown)"
        ) from None
    finally:
        store.close()
    done = FleetRollupResult(
        window_start=datetime.fromtimestamp(start_ts, UTC),
        window_end=datetime.fromtimestamp(end_ts, UTC),
        gpu_minutes=result.gpu_rows,
        deployment_minutes=result.deployment_rows,
        chunks=result.chunks,
        requests=reader.requests,
        seconds=time.monotonic() - began,
        skipped=result.skipped,
    )
    emit(done, output_format(json_out), fleet_rollup_text)
