"""`auditor billing`: cloud bills in: import FOCUS files, and what the store holds of each source.

`billing import FILE…` reads FOCUS 1.0-1.2 exports (CSV, CSV.gz, Parquet, or folders of them), keeps
their GPU lines, attributes them to deployments and replaces each billing period they hold; `billing
status` shows, per source, the last sync, the days covered and still estimated, and what is
unattributed. Every figure says which cost it counts (`billing.cost_metric`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from auditor.bills import billing_status
from auditor.cli.common import (
    CONTEXT,
    ConfigOption,
    JsonOption,
    app,
    gpu_catalog,
    open_store,
    program,
    require_config,
    warn,
)
from auditor.output import emit, output_format
from reports.billing_text import bill_import_text, billing_status_text

billing_app = typer.Typer(
    help="Cloud bills: import FOCUS files, and what the store holds of each billing source.",
    no_args_is_help=True,
    context_settings=CONTEXT,
)
app.add_typer(billing_app, name="billing")


@billing_app.command("import")
def import_command(
    files: Annotated[list[Path], typer.Argument(help="FOCUS files (.csv, .csv.gz, .parquet) or folders.")],
    config_path: ConfigOption = None,
    source: Annotated[
        str | None,
        typer.Option(
            help="The billing source these files belong to (default: the one FOCUS source configured)."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Import FOCUS bill exports: their GPU lines, attributed to deployments; each billing period they
    hold replaces the one stored. Re-importing the same files changes nothing."""
    # pyarrow loads only when a bill is read: `auditor --help` stays fast.
    from collectors.focus_sources import import_files, import_result, import_source_name

    config = require_config(config_path)
    name = import_source_name(config, source)
    catalog = gpu_catalog()
    store = open_store(config)
    try:
        result = import_files(store, config, files, catalog, source=name)
    finally:
        store.close()
    for warning in result.warnings:
        warn(warning)
    emit(import_result(result, config.billing.cost_metric), output_format(as_json), bill_import_text)


# -- status -----------------------------------------------------------------------------------------


@billing_app.command("status")
def status_command(config_path: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Per billing source: the last sync or import, the days covered, the days still estimated (the
    provider may revise them), and the cost no deployment claims."""
    config = require_config(config_path)
    store = open_store(config, read_only=True)
    try:
        result = billing_status(store, config, datetime.now(UTC), program())
    finally:
        store.close()
    emit(result, output_format(as_json), billing_status_text)
