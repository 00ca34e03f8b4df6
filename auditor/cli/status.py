"""`auditor status`: GPUs and deployments as the daemon last recorded them (read-only)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

import typer

from auditor.cli.common import (
    ConfigOption,
    JsonOption,
    api_catalog,
    app,
    gpu_catalog,
    open_store,
    require_config,
)
from auditor.exporter import deployment_figures
from auditor.model import MINUTE_S
from auditor.output import emit, output_format
from auditor.results import status_gpus_of_minutes, status_result
from collectors.health import source_states
from reports.terminal import status_text


@app.command()
def status(
    config_path: ConfigOption = None,
    minutes: Annotated[int, typer.Option(min=1, help="How far back to look for the latest samples.")] = 5,
    as_json: JsonOption = False,
) -> None:
    """GPUs and deployments as the daemon last recorded them: utilization, memory, power, tokens/s, cost."""
    config = require_config(config_path)
    store = open_store(config, read_only=True)
    try:
        now = time.time()
        gpus = store.gpu_samples(now - minutes * 60, now + 1)
        servers = store.server_samples(now - minutes * 60, now + 1)
        # Fleet mode stores no samples, only minutes rolled up from Prometheus: their newest.
        fleet_gpus = (
            status_gpus_of_minutes(store.gpu_minutes(now - minutes * 60 - MINUTE_S, now + 1), now)
            if config.fleet is not None
            else []
        )
        figures = deployment_figures(
            store, config, datetime.fromtimestamp(now, UTC), api_catalog(config), gpu_catalog()
        )
        sources = source_states(config, store, now)
    finally:
        store.close()
    result = status_result(
        minutes=minutes,
        now=now,
        tz=config.tz,
        gpus=gpus,
        servers=servers,
        figures=figures,
        sources=sources,
        fleet_gpus=fleet_gpus,
    )
    emit(result, output_format(as_json), status_text)
