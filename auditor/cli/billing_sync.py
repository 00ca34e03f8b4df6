"""`auditor billing sync`, the daemon's daily billing job, and doctor's billing checks.

The composition root's side of the API bill sources (`collectors.billing_api` does the work): the
command with its progress bar and summary (days read, rows, requests made and what they cost, $ by
deployment), the daemon's job, and one cheap real call per source for `auditor doctor`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from auditor.billing_result import SyncedSource
from auditor.cli.billing import billing_app
from auditor.cli.common import ConfigOption, JsonOption, gpu_catalog, open_store, require_config
from auditor.config import Config, CostExplorerSource, GcpBillingExportSource
from auditor.cron import cron_kwargs
from auditor.daemon import JobSpec
from auditor.doctor import Check
from auditor.errors import BadInputError
from auditor.gpu_prices import GpuPrice
from auditor.output import emit, output_format
from auditor.store import Store
from collectors import aws_billing, gcp_billing
from collectors.billing_api import (
    API_KINDS,
    ApiSource,
    BillingClients,
    api_sources,
    aws_gpu_families,
    log,
    sync_result,
    sync_source,
    sync_sources,
    synced,
    synced_export,
)
from collectors.focus_sources import sync_focus_source
from collectors.interface import BillingUnavailable
from reports.billing_text import billing_sync_text


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the Cloud Catalog's list prices are cached between syncs: systemd's CacheDirectory= or
    StateDirectory= when the unit gives one, else $XDG_CACHE_HOME (~/.cache)/gpu-auditor."""
    env = os.environ if env is None else env
    if env.get("CACHE_DIRECTORY"):
        return Path(env["CACHE_DIRECTORY"].split(":")[0])
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0]) / "cache"
    base = Path(env.get("XDG_CACHE_HOME") or Path(env.get("HOME", "/nonexistent")) / ".cache")
    return base / "gpu-auditor"


# -- billing sync ----------------------------------------------------------------------------------


def _since(text: str | None, today: date) -> date | None:
    if text is None:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise BadInputError(
            f"--since {text!r} is not a date", "give YYYY-MM-DD, e.g. --since 2026-01-01"
        ) from None
    if day > today:
        raise BadInputError(f"--since {day} is in the future", f"give a day up to today ({today})")
    return day


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[ApiSource], Callable[[str, int], None]]]:
    """A rich progress line per source on stderr (pages read, then writing); nothing when disabled."""
    if not enabled:
        yield lambda _source: lambda _what, _n: None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:

        def for_source(source: ApiSource) -> Callable[[str, int], None]:
            task = bar.add_task(f"{source.name}: starting", total=None)

            def update(what: str, n: int) -> None:
                shown = f"{what} {n}" if what.endswith("pages") else what
                bar.update(task, description=f"{source.name}: {shown}")

            return update

        yield for_source


@billing_app.command("sync")
def sync_command(
    config_path: ConfigOption = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Also read the days from this date (YYYY-MM-DD) not read before; the current and "
            "previous month are always re-read (the clouds revise them)."
        ),
    ] = None,
    source: Annotated[str | None, typer.Option(help="Sync only this [[billing.sources]] entry.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Bring the configured bills in: Cost Explorer, the GCP billing export, GCP list-price estimates, and
    FOCUS exports in S3 or BigQuery. Prints, per source, the days read, rows, paid requests made
    (Cost Explorer: $0.01 each) and the cost by deployment; re-syncing the same days changes nothing."""
    config = require_config(config_path)
    chosen = [s for s in config.billing.sources if source is None or s.name == source]
    if not chosen:
        names = ", ".join(s.name for s in config.billing.sources) or "none configured"
        raise BadInputError(
            f"billing sync: no source {source!r}"
            if source
            else "billing sync: no [[billing.sources]] configured",
            f"sources: {names}"
            if source
            else "add one (README: Billing) or import FOCUS files with `billing import`",
        )
    catalog = gpu_catalog()
    today = date.today()  # noqa: DTZ011  (only bounds --since)
    first = _since(since, today + timedelta(days=1))
    store = open_store(config)
    read: list[SyncedSource] = []
    failures: list[tuple[str, BillingUnavailable]] = []
    try:
        with _progress(not as_json and sys.stderr.isatty()) as progress:
            for entry in chosen:
                if entry.kind not in API_KINDS:
                    read.append(synced_export(sync_focus_source(store, config, entry, catalog)))
                    continue
                api = api_sources(config, entry.name)[0]
                try:
                    outcome = sync_source(
                        config,
                        store,
                        api,
                        since=first,
                        gpu_catalog=catalog,
                        clients=BillingClients(),
                        cache_dir=cache_dir(),
                        progress=progress(api),
                    )
                    read.append(synced(outcome))
                except BillingUnavailable as exc:
                    failures.append((entry.name, exc))
    finally:
        store.close()
    emit(sync_result(config, read, failures), output_format(as_json), billing_sync_text)
    for name, failure in failures:
        print(f"auditor: billing source {name!r}: {failure}", file=sys.stderr)
    if failures:
        raise typer.Exit(1)


# -- the daemon's daily job ----------------------------------------------------------------------

DAY_S = 86400


def billing_jobs(
    config: Config,
    store: Store,
    gpu_catalog: Sequence[GpuPrice],
    *,
    clients: BillingClients | None = None,
    cache: Path | None = None,
    now: Callable[[], float] = time.time,
) -> list[JobSpec]:
    """The daemon's billing job: every API source synced on `billing.sync_cron` (daily), and at
    start-up when no sync ran in the last day. A source that fails is one log line naming the
    permission; the other sources sync, and sampling never waits for billing (its own job)."""
    if not api_sources(config):
        return []

    def run() -> None:
        outcomes, failures = sync_sources(
            config, store, gpu_catalog=gpu_catalog, clients=clients, cache_dir=cache or cache_dir(), now=now
        )
        for outcome in outcomes:
            for note in outcome.notes:
                log.warning("billing sync %s: %s", outcome.source, note)
        # Failures are already logged, one line each (sync_sources); the next run is tomorrow's.
        del failures

    last = max((s.synced_ts for s in store.billing_syncs() if s.kind in API_KINDS), default=None)
    missed = last is None or now() - last > DAY_S
    cron = cron_kwargs(config.billing.sync_cron, config.timezone)
    return [JobSpec("billing-sync", run, cron=cron, run_at_start=missed)]


# -- doctor ----------------------------------------------------------------------------------------


def billing_checks(
    config: Config, gpu_catalog: Sequence[GpuPrice], clients: BillingClients | None = None
) -> list[Check]:
    """Each API source checked for real: one cheap authenticated call (Cost Explorer: one $0.01
    request; BigQuery: a dry run of the sync's query, free; Cloud Catalog: one page, free)."""
    clients = clients or BillingClients()
    checks = []
    for source in api_sources(config):
        name = f"billing {source.name}"
        try:
            if isinstance(source, CostExplorerSource):
                detail = aws_billing.CostExplorer(
                    clients.cost_explorer(source),
                    families=aws_gpu_families(config, source, gpu_catalog) or ["p5"],
                    tag_key=source.tag_key,
                ).check()
            elif isinstance(source, GcpBillingExportSource):
                detail = gcp_billing.BillingExport(
                    clients.bigquery(source), source.table, label_key=source.label_key
                ).check()
            else:
                detail = gcp_billing.SkuCatalog(clients.catalog(source)).check()
        except BillingUnavailable as exc:
            checks.append(Check(name, False, exc.message, exc.fix))
            continue
        checks.append(Check(name, True, detail))
    return checks
