"""Commands that run on or read from a GPU host: `daemon`, `doctor`, `status`."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from auditor import daemon as daemon_module
from auditor.alert_jobs import alert_cycle, digest_cron_kwargs, digest_cycle, digest_due
from auditor.cli.common import (
    EXIT_FINDING,
    ConfigOption,
    JsonOption,
    api_catalog,
    app,
    console,
    fatal,
    gpu_catalog,
    open_store,
    require_config,
)
from auditor.config import Config, DeploymentConfig
from auditor.exporter import DeploymentFigures, Exporter, ExporterState, deployment_figures
from auditor.gpu_prices import GpuPrice
from auditor.model import GpuSample, ServerSample
from auditor.prices import ApiPriceCatalog
from auditor.store import Store, StoreError
from collectors.inference import Endpoint, InferenceCollector, fetch_metrics, parse_server_metrics
from collectors.interface import CollectorError
from collectors.nvml import GpuDeploymentMap, NvmlCollector, load_pynvml
from reports.slack import SlackConfigError, slack_sender

HOST_ENV = "AUDITOR_HOST"
RUNAWAY_INTERVAL_S = 60
RULES_INTERVAL_S = 15 * 60
HostOption = Annotated[
    str | None,
    typer.Option(
        help=f"This host's name in the config's GPU selectors (default: ${HOST_ENV}, else the hostname)."
    ),
]


def this_host(explicit: str | None, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return explicit or env.get(HOST_ENV) or socket.gethostname()


def local_deployments(config: Config, host: str) -> list[DeploymentConfig]:
    """Deployments with GPUs on this host: the ones whose servers this host's daemon scrapes."""
    return [d for d in config.deployments if any(sel.host == host for sel in d.gpus)]


def local_endpoints(config: Config, host: str) -> list[Endpoint]:
    return [
        Endpoint(d.name, s.url, s.kind, s.model_name)
        for d in local_deployments(config, host)
        for s in d.servers
    ]


def _nvml_collector(config: Config, host: str) -> NvmlCollector | None:
    try:
        nvml = load_pynvml()
    except ImportError:
        return None
    return NvmlCollector(
        nvml,
        host=host,
        deployments=GpuDeploymentMap.from_config(config),
        interval_s=config.daemon.sample_interval_s,
    )


# -- daemon ---------------------------------------------------------------------------------------


@app.command()
def daemon(
    config_path: ConfigOption = None,
    host: HostOption = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Sample GPUs and inference servers, roll up, serve Prometheus metrics, until SIGTERM."""
    config = require_config(config_path)
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        fatal(f"--log-level: unknown level {log_level!r}; use debug, info, warning or error")
    logging.basicConfig(stream=sys.stderr, level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(max(level, logging.WARNING))
    name = this_host(host)
    store = open_store(config)
    gpu = _nvml_collector(config, name)
    if gpu is None:
        logging.getLogger("auditor.daemon").warning(
            "nvml: nvidia-ml-py is not installed; GPUs are not sampled"
        )
    endpoints = local_endpoints(config, name)
    servers = [InferenceCollector(endpoints, host=name)] if endpoints else []
    state = ExporterState()
    exporter = Exporter(state, config.daemon.exporter_listen)
    try:
        exporter.start()
    except OSError as exc:
        fatal(
            f"daemon.exporter_listen {config.daemon.exporter_listen}: cannot listen ({exc.strerror}); "
            "choose a free address:port",
            code=EXIT_FINDING,
        )
    apis, gpus = api_catalog(config), gpu_catalog()

    def figures(now: datetime) -> list[DeploymentFigures]:
        return deployment_figures(store, config, now, apis, gpus)

    runner = daemon_module.Daemon(
        config=config,
        store=store,
        gpu_collectors=[gpu] if gpu is not None else [],
        server_collectors=servers,
        state=state,
        figures=figures,
        extra_jobs=alert_jobs(config, store, apis, gpus),
    )
    try:
        code = daemon_module.run(runner)
    finally:
        exporter.stop()
    if code != 0:
        # A job is stuck (a hung driver call): exiting normally would wait for its thread forever.
        sys.stderr.flush()
        os._exit(code)
    if gpu is not None:
        gpu.close()
    store.close()
    raise typer.Exit(code)


def alert_jobs(
    config: Config, store: Store, apis: ApiPriceCatalog, gpus: Sequence[GpuPrice]
) -> list[daemon_module.JobSpec]:
    """The daemon's alerting jobs: runaway spend every minute (it must fire within minutes of the
    onset), every rule every 15 minutes, and the weekly digest on its cron — at start-up too, when
    the last one was missed. Without Slack, alerts are still tracked and the digest is not built."""
    try:
        sender = slack_sender(config.slack, os.environ)
    except SlackConfigError as exc:
        fatal(f"slack: {exc}")

    def now() -> datetime:
        return datetime.now(tz=UTC)

    def runaway() -> object:
        names = ["runaway-spend"]
        return alert_cycle(config, store, now(), sender, names=names, api_catalog=apis, gpu_catalog=gpus)

    def every_rule() -> object:
        return alert_cycle(config, store, now(), sender, api_catalog=apis, gpu_catalog=gpus)

    def digest() -> object:
        return digest_cycle(config, store, now(), sender, api_catalog=apis, gpu_catalog=gpus)

    jobs = [
        daemon_module.JobSpec("runaway-spend", runaway, interval_s=RUNAWAY_INTERVAL_S),
        daemon_module.JobSpec("rules", every_rule, interval_s=RULES_INTERVAL_S),
    ]
    if sender is not None:
        missed = digest_due(config, store, now())
        cron = digest_cron_kwargs(config)
        jobs.append(daemon_module.JobSpec("digest", digest, cron=cron, run_at_start=missed))
    return jobs


# -- doctor ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    source: str
    ok: bool
    detail: str
    fix: str | None = None
    required: bool = True


def _check_nvml(config: Config, host: str) -> Check:
    required = bool(local_deployments(config, host))
    collector = _nvml_collector(config, host)
    if collector is None:
        return Check(
            "nvml", False, "nvidia-ml-py is not installed", "reinstall gpu-auditor in its venv", required
        )
    try:
        status = collector.status()
    finally:
        collector.close()
    if not status.available:
        return Check("nvml", False, status.reason or "unavailable", status.fix, required)
    lost = f"; unavailable: {', '.join(status.unavailable_gpus)}" if status.unavailable_gpus else ""
    return Check(
        "nvml",
        not status.unavailable_gpus,
        f"{status.gpu_count} GPU(s), driver {status.driver_version or 'unknown'}{lost}",
        "check `nvidia-smi`; a lost GPU needs a reset or a reboot" if lost else None,
        required,
    )


def _check_endpoint(endpoint: Endpoint, fetch: Callable[[str, float], str]) -> Check:
    source = f"inference {endpoint.deployment} {endpoint.url}"
    try:
        parsed = parse_server_metrics(
            fetch(endpoint.url, 5.0), kind=endpoint.kind, model_name=endpoint.model_name
        )
    except CollectorError as exc:
        return Check(source, False, exc.message, exc.fix)
    missing = sorted(
        {"prompt_tokens_total", "generation_tokens_total", "requests_running"} - set(parsed.values)
    )
    names = ", ".join(sorted(parsed.recognised))
    detail = f"{parsed.kind}, model {parsed.model_name or 'unnamed'}, recognised {names}"
    if missing:
        return Check(
            source, False, f"{detail}; missing {', '.join(missing)}", "is it the server kind configured?"
        )
    return Check(source, True, detail)


def _check_store(config: Config) -> Check:
    shown = make_url(config.store.url).render_as_string(hide_password=True)
    try:
        store = Store.open(config.store.url)
    except (StoreError, OSError) as exc:
        return Check("store", False, f"{shown}: {exc}", "set store.url to a writable database")
    except SQLAlchemyError as exc:  # the driver's errors, wrapped: doctor reports them instead of crashing
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())  # one line
        return Check("store", False, f"{shown}: {reason}", "check store.url and the database")
    try:
        version = store.schema_version()
        database = make_url(config.store.url).database or ""
        if make_url(config.store.url).get_backend_name() == "sqlite" and database != ":memory:":
            path = Path(database)
            if not os.access(path if path.exists() else path.parent, os.W_OK):
                return Check(
                    "store",
                    False,
                    f"{path} is not writable",
                    f"give the daemon's user write access to {path}",
                )
    finally:
        store.close()
    return Check("store", True, f"{shown} writable, schema version {version}")


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


def _aws_credentials(env: Mapping[str, str]) -> str | None:
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return "AWS_ACCESS_KEY_ID in the environment"
    for var in ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_PROFILE"):
        if env.get(var):
            return f"${var}"
    shared = Path(
        env.get("AWS_SHARED_CREDENTIALS_FILE") or Path(env.get("HOME", "/nonexistent")) / ".aws/credentials"
    )
    return f"{shared}" if shared.is_file() else None


def _gcp_credentials(env: Mapping[str, str]) -> str | None:
    path = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    if path and Path(path).is_file():
        return path
    adc = Path(env.get("HOME", "/nonexistent")) / ".config/gcloud/application_default_credentials.json"
    return str(adc) if adc.is_file() else None


def _check_billing(config: Config, env: Mapping[str, str]) -> list[Check]:
    checks = []
    sources = {d.price.source for d in config.deployments}
    if "aws" in sources:
        found = _aws_credentials(env)
        checks.append(
            Check("billing aws", True, f"credentials: {found}")
            if found
            else Check(
                "billing aws",
                False,
                "no AWS credentials in the environment or ~/.aws",
                "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE in the EnvironmentFile "
                "(an instance role is not visible to this check)",
            )
        )
    if "gcp" in sources:
        found = _gcp_credentials(env)
        checks.append(
            Check("billing gcp", True, f"credentials: {found}")
            if found
            else Check(
                "billing gcp",
                False,
                "no Google credentials found",
                "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file",
            )
        )
    return checks


def run_checks(
    config: Config, host: str, env: Mapping[str, str], fetch: Callable[[str, float], str] = fetch_metrics
) -> list[Check]:
    checks = [_check_nvml(config, host)]
    checks.extend(_check_endpoint(e, fetch) for e in local_endpoints(config, host))
    checks.append(_check_store(config))
    slack = _check_slack(config, env)
    if slack is not None:
        checks.append(slack)
    checks.extend(_check_billing(config, env))
    return checks


@app.command()
def doctor(config_path: ConfigOption = None, host: HostOption = None, as_json: JsonOption = False) -> None:
    """Check every configured source: NVML, inference servers, the store, Slack, billing credentials."""
    config = require_config(config_path)
    name = this_host(host)
    checks = run_checks(config, name, os.environ)
    failed = [c for c in checks if not c.ok and c.required]
    if as_json:
        print(
            json.dumps(
                {
                    "host": name,
                    "ok": not failed,
                    "checks": [
                        {
                            "source": c.source,
                            "ok": c.ok,
                            "required": c.required,
                            "detail": c.detail,
                            "fix": c.fix,
                        }
                        for c in checks
                    ],
                },
                indent=2,
            )
        )
    else:
        for c in checks:
            mark = "ok  " if c.ok else ("FAIL" if c.required else "warn")
            fix = f" -> {c.fix}" if c.fix and not c.ok else ""
            print(f"{mark}  {c.source}: {c.detail}{fix}")
    if failed:
        raise typer.Exit(EXIT_FINDING)


# -- status ---------------------------------------------------------------------------------------


def _latest(samples: Sequence[Any], key: Callable[[Any], Any]) -> list[Any]:
    latest: dict[Any, Any] = {}
    for s in samples:
        latest[key(s)] = s
    return sorted(
        latest.values(), key=lambda s: (s.host, getattr(s, "gpu_index", 0), getattr(s, "instance", ""))
    )


def _gpu_json(s: GpuSample, now: float) -> dict[str, Any]:
    return {
        "host": s.host,
        "gpu_index": s.gpu_index,
        "gpu_uuid": s.gpu_uuid,
        "gpu_name": s.gpu_name,
        "deployment": s.deployment,
        "age_s": round(now - s.ts, 1),
        "util_pct": s.util_pct,
        "sm_active_pct": s.sm_active_pct,
        "mem_used_bytes": s.mem_used_bytes,
        "mem_total_bytes": s.mem_total_bytes,
        "power_w": s.power_w,
        "energy_j": s.energy_j,
        "process_count": s.process_count,
    }


def _money(value: Any) -> float | None:
    return None if value is None else round(float(value), 6)


def _deployment_json(f: DeploymentFigures, servers: Sequence[ServerSample]) -> dict[str, Any]:
    own = [s for s in servers if s.deployment == f.deployment]
    running = [s.requests_running for s in own if s.requests_running is not None]
    return {
        "deployment": f.deployment,
        "tokens_per_s": None if f.tokens_per_s is None else round(f.tokens_per_s, 3),
        "cost_rate_usd_per_h": _money(f.cost_rate_usd_per_h),
        "cost_per_mtok_usd_1h": _money(f.cost_per_mtok_usd.get("1h")),
        "cost_per_mtok_usd_1d": _money(f.cost_per_mtok_usd.get("1d")),
        "idle_cost_month_usd": _money(f.idle_cost_month_usd),
        "requests_running": sum(running) if running else None,
        "servers_seen": len(own),
    }


def _cell(value: Any, fmt: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{fmt}}{suffix}"


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
        gpus = _latest(store.gpu_samples(now - minutes * 60, now + 1), key=lambda s: s.gpu_uuid)
        servers = _latest(
            store.server_samples(now - minutes * 60, now + 1), key=lambda s: (s.deployment, s.instance)
        )
        figures = deployment_figures(
            store, config, datetime.fromtimestamp(now, UTC), api_catalog(config), gpu_catalog()
        )
    finally:
        store.close()
    gpu_rows = [_gpu_json(s, now) for s in gpus]
    deployment_rows = [_deployment_json(f, servers) for f in figures]
    if as_json:
        print(
            json.dumps(
                {"window_minutes": minutes, "gpus": gpu_rows, "deployments": deployment_rows}, indent=2
            )
        )
        return
    out = console()
    if not gpu_rows:
        out.print(
            f"No GPU samples in the last {minutes} minutes: is `auditor daemon` running?", highlight=False
        )
    else:
        table = Table(title=f"GPUs (latest sample, last {minutes} min)", title_justify="left")
        for column in ("host", "GPU", "deployment", "util", "SM active", "memory", "power", "procs", "age"):
            table.add_column(column, justify="left" if column in {"host", "GPU", "deployment"} else "right")
        for g in gpu_rows:
            memory = (
                "—"
                if g["mem_used_bytes"] is None or g["mem_total_bytes"] is None
                else f"{g['mem_used_bytes'] / 2**30:.1f}/{g['mem_total_bytes'] / 2**30:.1f} GiB"
            )
            table.add_row(
                g["host"],
                f"{g['gpu_index']} {g['gpu_name'] or ''}".strip(),
                g["deployment"] or "—",
                _cell(g["util_pct"], ".0f", "%"),
                _cell(g["sm_active_pct"], ".0f", "%"),
                memory,
                _cell(g["power_w"], ".0f", " W"),
                _cell(g["process_count"], "d"),
                f"{g['age_s']:.0f} s",
            )
        out.print(table)
    table = Table(title="Deployments", title_justify="left")
    for column in ("deployment", "tokens/s", "running", "$/h", "$/Mtok 1h", "$/Mtok 1d", "idle $ this month"):
        table.add_column(column, justify="left" if column == "deployment" else "right")
    for d in deployment_rows:
        table.add_row(
            d["deployment"],
            _cell(d["tokens_per_s"], ",.1f"),
            _cell(d["requests_running"], ".0f"),
            _cell(d["cost_rate_usd_per_h"], ",.2f"),
            _cell(d["cost_per_mtok_usd_1h"], ",.2f"),
            _cell(d["cost_per_mtok_usd_1d"], ",.2f"),
            _cell(d["idle_cost_month_usd"], ",.2f"),
        )
    out.print(table)
