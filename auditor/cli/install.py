"""Setting up a host: `init` (the files this installation ships) and `config check`."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from auditor.cli.common import (
    EXIT_FINDING,
    ConfigOption,
    JsonOption,
    app,
    config_app,
    console,
    fatal,
    require_config,
    warn,
)
from auditor.config import redacted, resolve_config_path
from auditor.installation import entry_point, hidden_from_units, host_file, unit_for
from reports.files import write_atomic

ENV_NAME = "auditor.env"


@app.command()
def init(
    config_path: ConfigOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing config and secrets file.")
    ] = False,
) -> None:
    """Write a commented config (and a secrets file beside it), then print the systemd unit for this
    installation: save it as /etc/systemd/system/auditor.service.

    An existing config is kept unless --force. The unit starts the `auditor` you ran."""
    config = resolve_config_path(config_path)
    env = config.parent / ENV_NAME
    for target in (config, env):
        if target.exists() and not target.is_file():  # a directory, /dev/null, a FIFO: never write beside it
            fatal(f"{target} exists and is not a regular file; give --config the path of a config file")
    for target, source, mode in (
        (config, "auditor.example.toml", 0o640),
        (env, "auditor.env.example", 0o600),
    ):
        if target.exists() and not force:
            print(f"kept {target} (--force overwrites it)", file=sys.stderr)
            continue
        try:
            write_atomic(target, host_file(source).read_text(encoding="utf-8"), mode=mode)
        except OSError as exc:
            fatal(f"cannot write {target}: {exc.strerror or exc}; run as root, or give --config FILE")
        print(f"wrote {target}", file=sys.stderr)
    entry = entry_point()
    if hidden_from_units(entry):
        warn(
            f"{entry} is under a home directory, which the unit's ProtectHome=yes hides: "
            "install into /opt/gpu-auditor/venv for the service (systemd/README.md)"
        )
    try:
        unit = unit_for(config.resolve(), env.resolve(), entry)
    except FileNotFoundError as exc:
        fatal(str(exc), code=EXIT_FINDING)
    print(
        f"next: edit {config} (deployments, prices) and {env} (secrets), then "
        f"`auditor config check --config {config}`; the unit follows on stdout",
        file=sys.stderr,
    )
    sys.stdout.write(unit)


@config_app.command("check")
def config_check(config_path: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Validate the config file; print the effective config (secrets hidden), or every problem."""
    config = require_config(config_path)  # the one validation path: the daemon loads it the same way
    effective = redacted(config)
    if as_json:
        print(json.dumps(effective, indent=2))
        return
    out = console()
    out.print_json(json.dumps(effective))
    out.print(
        f"config OK: {len(config.deployments)} deployment(s), store {effective['store']['url']}, "
        f"timezone {config.timezone}",
        highlight=False,
    )
