"""Commands that run on or read from a GPU host: `daemon`, `doctor`, `status`."""

from __future__ import annotations

import logging
import os
import socket
import ssl
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated

import typer

from auditor import daemon as daemon_module
from auditor import logs
from auditor.alert_jobs import alert_cycle, digest_cron_kwargs, digest_cycle, digest_due
from auditor.cli.billing_sync import billing_checks, billing_jobs
from auditor.cli.common import (
    EXIT_FINDING,
    EXIT_USAGE,
    ConfigOption,
    JsonOption,
    api_catalog,
    app,
    fatal,
    gpu_catalog,
    open_store,
    require_config,
)
from auditor.config import Config, deployments_on_host
from auditor.doctor import Check, failed, general_checks, render_json, render_text
from auditor.exporter import DeploymentFigures, Exporter, ExporterState, deployment_figures
from auditor.fleet import FleetRollup
from auditor.gpu_prices import GpuPrice
from auditor.prices import ApiPriceCatalog
from auditor.redact import register_secret
from auditor.store import MINUTE_RETENTION_DAYS, Store
from collectors.inference import InferenceCollector, endpoints_on_host, fetch_metrics
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
        backoff_max_s=daemon_module.retry_cap_s(config),
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
    logs.configure(level)
    exporter = _exporter(config)
    name = this_host(host)
    if config.fleet is not None:
        # Imported here: fleet mode's binding (requests, prometheus-api-client) is not needed by a host.
        from auditor.cli.fleet import fleet_reader

        reader = fleet_reader(config)
    store = open_store(config)
    fleet = None
    if config.fleet is not None:
        fleet = FleetRollup(
            store,
            reader,
            reread_s=config.fleet.reread_minutes * 60,
            max_gap_s=config.fleet.max_gap_s,
            idle_threshold=config.rules.idle_threshold,
            capacity_tokens_per_s={d.name: d.capacity_tokens_per_s for d in config.deployments}.get,
            catch_up_s=(config.store.minute_retention_days or MINUTE_RETENTION_DAYS) * 86_400,
        )
    gpu = _nvml_collector(config, name) if fleet is None else None
    if gpu is None and fleet is None:
        logging.getLogger("auditor.daemon").warning(
            "nvml: nvidia-ml-py is not installed; GPUs are not sampled"
        )
    endpoints = endpoints_on_host(config, name) if fleet is None else []
    servers = (
        [
            InferenceCollector(
                endpoints,
                host=name,
                timeout_s=daemon_module.scrape_deadline_s(config),
                backoff_max_s=daemon_module.retry_cap_s(config),
            )
        ]
        if endpoints
        else []
    )
    state = exporter.state
    try:
        exporter.start()
    except OSError as exc:
        fatal(
            f"daemon.exporter_listen {config.daemon.exporter_listen}: cannot listen ({exc.strerror}); "
            "choose a free address:port (another exporter may hold it)",
            code=EXIT_FINDING,
        )
    except ssl.SSLError as exc:
        fatal(f"daemon.exporter_tls_*: cannot use the certificate or key ({exc.reason})", code=EXIT_USAGE)
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
        extra_jobs=[*alert_jobs(config, store, apis, gpus), *billing_jobs(config, store, gpus)],
        fleet=fleet,
    )
    try:
        code = daemon_module.run(runner)
    finally:
        exporter.stop()
    if code == 0 and fleet is None:
        # No pass is stuck inside NVML or a scrape: they close cleanly, and so does the store.
        if gpu is not None:
            gpu.close()
        for collector in servers:
            collector.close()
        store.close()
    # Never a normal exit: it waits for every job thread, and `run` may have left one running (a stuck
    # driver call, a long start-up roll-up, a Slack post, a fleet chunk being written) to keep within
    # systemd's stop timeout. Its transaction rolls back and the next start does that work again.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _exporter(config: Config) -> Exporter:
    """The exporter as configured; a network-facing one without TLS and auth gets a warning."""
    daemon = config.daemon
    auth = None
    if daemon.exporter_basic_auth_user is not None:
        password = os.environ.get(daemon.exporter_basic_auth_password_env, "")
        if not password:
            fatal(
                f"daemon.exporter_basic_auth_user is set but ${daemon.exporter_basic_auth_password_env} "
                "is empty: set the password in the environment (the unit's EnvironmentFile)"
            )
        register_secret(password)
        auth = (daemon.exporter_basic_auth_user, password)
    exporter = Exporter(
        ExporterState(),
        daemon.exporter_listen,
        tls_cert=daemon.exporter_tls_cert,
        tls_key=daemon.exporter_tls_key,
        tls_client_ca=daemon.exporter_tls_client_ca,
        basic_auth=auth,
    )
    if not exporter.loopback:
        authenticated = auth is not None or daemon.exporter_tls_client_ca is not None
        protected = daemon.exporter_tls_cert is not None and authenticated
        if not protected:
            logging.getLogger("auditor.exporter").warning(
                "the exporter listens on %s, reachable from the network: its metrics name GPUs, "
                "deployments and costs; keep it on 127.0.0.1, or set daemon.exporter_tls_cert/_key "
                "with exporter_basic_auth_user or exporter_tls_client_ca",
                daemon.exporter_listen,
            )
    return exporter


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
        # At start-up too: a daemon restarted in the middle of a runaway says so at once, not a minute later.
        daemon_module.JobSpec("runaway-spend", runaway, interval_s=RUNAWAY_INTERVAL_S, run_at_start=True),
        daemon_module.JobSpec("rules", every_rule, interval_s=RULES_INTERVAL_S),
    ]
    if sender is not None:
        missed = digest_due(config, store, now())
        cron = digest_cron_kwargs(config)
        jobs.append(daemon_module.JobSpec("digest", digest, cron=cron, run_at_start=missed))
    return jobs


# -- doctor ---------------------------------------------------------------------------------------


def _nvml_check(config: Config, host: str) -> Check:
    """NVML answers for itself (`NvmlCollector.status()`); here it becomes a line of doctor's."""
    required = bool(deployments_on_host(config, host))
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


def _endpoint_checks(
    config: Config, host: str, fetch: Callable[[str, float], str] = fetch_metrics
) -> list[Check]:
    """Each inference endpoint, scraped side by side within the daemon's own deadline."""
    endpoints = endpoints_on_host(config, host)
    if not endpoints:
        return []
    collector = InferenceCollector(
        endpoints, host=host, fetch=fetch, timeout_s=daemon_module.scrape_deadline_s(config)
    )
    try:
        statuses = collector.status()
    finally:
        collector.close()
    return [
        Check(f"inference {s.endpoint.deployment} {s.endpoint.shown}", s.ok, s.detail, s.fix)
        for s in statuses
    ]


def run_checks(
    config: Config, host: str, env: Mapping[str, str], fetch: Callable[[str, float], str] = fetch_metrics
) -> list[Check]:
    if config.fleet is not None:  # nothing is read on this host: Prometheus is the source
        from auditor.cli.fleet import fleet_check

        sources = [fleet_check(config)]
    else:
        sources = [_nvml_check(config, host), *_endpoint_checks(config, host, fetch)]
    return [
        *sources,
        *general_checks(config, env),
        *billing_checks(config, gpu_catalog()),
    ]


@app.command()
def doctor(config_path: ConfigOption = None, host: HostOption = None, as_json: JsonOption = False) -> None:
    """Check every configured source: NVML, inference servers, the store, Slack, billing sources.

    Looks only: creates no store, and gives up on each source after the daemon's own deadlines."""
    config = require_config(config_path)
    name = this_host(host)
    checks = run_checks(config, name, os.environ)
    print(render_json(name, checks) if as_json else render_text(checks))
    if failed(checks):
        raise typer.Exit(EXIT_FINDING)
