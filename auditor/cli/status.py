"""`auditor status`: GPUs and deployments as the daemon last recorded them (read-only)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from auditor.cli.common import (
    ConfigOption,
    JsonOption,
    api_catalog,
    app,
    console,
    gpu_catalog,
    open_store,
    require_config,
)
from auditor.exporter import DeploymentFigures, deployment_figures
from auditor.model import GpuSample, ServerSample
from collectors.health import source_states

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
        sources = source_states(config, store, now)
    finally:
        store.close()
    gpu_rows = [_gpu_json(s, now) for s in gpus]
    deployment_rows = [_deployment_json(f, servers) for f in figures]
    if as_json:
        print(
            json.dumps(
                {
                    "window_minutes": minutes,
                    "gpus": gpu_rows,
                    "deployments": deployment_rows,
                    "sources": sources,
                },
                indent=2,
            )
        )
        return
    out = console()
    down = [s for s in sources if s["state"] != "up"]
    for source in down:
        since = source["down_since_ts"]
        when = (
            "never sampled"
            if since is None
            else f"no sample since {datetime.fromtimestamp(since, config.tz):%Y-%m-%d %H:%M:%S %Z}"
            f" ({(now - since) / 60:,.0f} min ago)"
        )
        out.print(f"DOWN  {source['kind']} {source['source']}: {when}", highlight=False, markup=False)
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
    for column in (
        "deployment",
        "tokens/s",
        "running",
        "$/h",
        "$/Mtok 1h",
        "$/Mtok 1d",
        "idle $ so far this month",
    ):
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
