"""What every command shares: the Typer app, common options, config loading, and one-line errors.

Exit codes: 0 ok; 1 a finding, a failed check or an unavailable dependency (the store, say); 2 bad
usage or bad input (one line, no traceback).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn
from urllib.parse import urlsplit

import typer
from rich.console import Console

from auditor.cli.app import CONTEXT, EXIT_FINDING, EXIT_OK, EXIT_USAGE, app, command, config_app
from auditor.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    load_config,
    resolve_config_path,
    secret_exposure,
)
from auditor.errors import UnavailableError
from auditor.gpu_prices import GpuPrice, GpuPriceDataError, load_gpu_prices
from auditor.prices import ApiPriceCatalog, refresh_api_prices
from auditor.redact import redact, register_secret

if TYPE_CHECKING:
    from auditor.store import Store

__all__ = ["CONTEXT", "EXIT_FINDING", "EXIT_OK", "EXIT_USAGE", "app", "command", "config_app"]

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help=f"Config file (default: $AUDITOR_CONFIG, else {DEFAULT_CONFIG_PATH})."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]


def console() -> Console:
    # A pipe or a file gets a width that fits the tables, not the 80 columns rich assumes.
    return Console() if sys.stdout.isatty() else Console(width=160)


def program(argv0: str | None = None) -> str:
    """How to type `auditor` again, as this run was started: `auditor` when that name on PATH is this
    very script, else the path it was run by (`.venv/bin/auditor` after `make run`)."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    here = Path(argv0)
    if here.name != "auditor" or not here.exists():
        return "auditor"  # `python -m auditor`, or a test calling main(): nothing better to say
    on_path = shutil.which("auditor")
    if on_path is not None and Path(on_path).resolve() == here.resolve():
        return "auditor"
    return argv0


def fatal(message: str, code: int = EXIT_USAGE) -> NoReturn:
    print(f"auditor: error: {redact(message)}", file=sys.stderr)
    raise typer.Exit(code)


def warn(message: str) -> None:
    print(f"auditor: warning: {redact(message)}", file=sys.stderr)


def load_config_or_exit(explicit: Path | None, *, required: bool) -> Config | None:
    """The config named by --config or $AUDITOR_CONFIG (it must exist), else the default file if present.

    With required=False and no config anywhere, None: the command runs on defaults."""
    path = resolve_config_path(explicit)
    if not required and path == DEFAULT_CONFIG_PATH and explicit is None and not path.exists():
        return None
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"auditor: error: {redact(problem)}", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE) from None
    register_config_secrets(config)
    exposure = secret_exposure(path, config)
    if exposure:
        warn(exposure)
    return config


def register_config_secrets(config: Config) -> None:
    """Passwords the config holds (in URLs) are hidden from every line written from now on."""
    from sqlalchemy.engine import make_url  # SQLAlchemy on first use, not at start-up

    register_secret(make_url(config.store.url).password)
    slack = config.slack
    register_secret(os.environ.get(slack.token_env))
    if slack.webhook_url_env:
        register_secret(os.environ.get(slack.webhook_url_env))
    if slack.token_file is not None:
        with contextlib.suppress(OSError, UnicodeDecodeError):  # unreadable: the sender says so later
            register_secret(slack.token_file.read_text(encoding="utf-8").strip())
    fleet_url = [config.fleet.url] if config.fleet is not None else []
    server_urls = [s.url for d in config.deployments for s in d.servers]
    for url in [config.prices.update_url or "", *fleet_url, *server_urls]:
        try:
            register_secret(urlsplit(url).password)
        except ValueError:
            continue


def open_store(config: Config, *, read_only: bool = False) -> Store:
    """The one way a command opens the store. Unreachable, unusable or absent: one line, exit 1.

    read_only: the commands that only look (`status`, `doctor`) create nothing, migrate nothing."""
    from sqlalchemy.exc import SQLAlchemyError  # SQLAlchemy on first use, not at start-up

    from auditor.cli.failure import store_failure
    from auditor.store import Store, StoreError

    try:
        store = Store.open(config.store.url, read_only=read_only)
        if read_only:
            store.schema_version()  # connect now: an unreachable store fails here, in one line
    except StoreError as exc:
        raise UnavailableError(f"store: {exc}") from None
    except SQLAlchemyError as exc:
        raise UnavailableError(store_failure(exc)) from None
    return store


def require_config(explicit: Path | None) -> Config:
    config = load_config_or_exit(explicit, required=True)
    assert config is not None  # noqa: S101  (required=True never returns None)
    return config


def gpu_catalog() -> list[GpuPrice]:
    try:
        return load_gpu_prices()
    except GpuPriceDataError as exc:
        fatal(f"the packaged GPU price catalog is damaged: {exc}; reinstall gpu-auditor", code=EXIT_FINDING)


def api_catalog(config: Config | None) -> ApiPriceCatalog:
    """API prices: config overrides over genai-prices, refreshed first only if the config asks."""
    if config is not None and config.prices.fetch_updates:
        warning = refresh_api_prices(config.prices.update_url)
        if warning:
            warn(warning)
    return ApiPriceCatalog(config.prices.api if config else None)


@contextmanager
def progress_bar(total: int) -> Iterator[Callable[[str], None]]:
    """A progress bar on stderr (stdout stays clean for --json); each call advances it one step."""
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )  # only commands that show one

    err = Console(stderr=True)
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task("starting", total=total)

        def step(description: str) -> None:
            bar.update(task, advance=1, description=description)

        yield step
