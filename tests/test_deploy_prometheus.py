"""deploy/prometheus/ and deploy/grafana/: `promtool check rules` and `promtool test rules` pass, and every
PromQL expression of the rules and of the dashboard returns series from a real Prometheus holding what
the auditor's exporter really serves beside a real dcgm-exporter label shape.

The history is made by the exporter itself: for each minute, an `ExporterState` is set, the registry is
rendered as Prometheus would scrape it and the samples kept with that minute's timestamp and the job and
instance labels a scrape adds. dcgm-exporter's series take their label sets from a real scrape body
(tests/fixtures/dcgm_exporter). The recording rules are backfilled with `promtool tsdb create-blocks-from
rules`, one group at a time (a group reads the one before it), restarting Prometheus over the new blocks.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from auditor.exporter import DeploymentFigures, Exporter, ExporterState
from auditor.model import GpuSample
from tests.promkit import PROMTOOL, PromServer, Series, backfill, require_prometheus, serve, write_openmetrics

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus"
RULE_FILES = [RULES / "recording.yaml", RULES / "alerts.yaml"]
DASHBOARD = ROOT / "deploy" / "grafana" / "gpu-auditor.json"
DCGM_SCRAPE = Path(__file__).parent / "fixtures" / "dcgm_exporter" / "datadog_metrics.txt"
JOB = "gpu-auditor"

T0 = 1_790_812_800  # 2026-10-01T00:00:00Z
MINUTES = 26 * 60  # a day of baseline, then two hours of a runaway
END = T0 + (MINUTES - 1) * 60
SPIKE_FROM = END - 120 * 60
DOWN_FROM = END - 30 * 60


def _promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    require_prometheus()
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=240, check=False, cwd=cwd
    )


# -- promtool -------------------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    done = _promtool("check", "rules", *RULE_FILES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 14 rules found" in done.stdout and "SUCCESS: 6 rules found" in done.stdout


def test_promtool_test_rules() -> None:
    tests = sorted((RULES / "tests").glob("*.test.yaml"))
    assert tests
    done = _promtool("test", "rules", *tests)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rule_unit_tests_hold_the_thresholds(tmp_path: Path) -> None:
    """The unit tests can fail: with the idle share threshold moved, they do."""
    shutil.copytree(RULES, tmp_path / "prometheus")
    alerts = tmp_path / "prometheus" / "alerts.yaml"
    text = alerts.read_text()
    assert "> 0.5\n" in text
    alerts.write_text(text.replace("> 0.5\n", "> 0.7\n"))
    done = _promtool("test", "rules", "tests/rules.test.yaml", cwd=tmp_path / "prometheus")
    assert done.returncode != 0
    assert "AuditorIdleCostHigh" in done.stdout + done.stderr


# -- the history ----------------------------------------------------------------------------------


@functools.cache
def _dcgm_labels() -> list[dict[str, str]]:
    """The label sets of DCGM_FI_DEV_GPU_UTIL and DCGM_FI_DEV_SLOWDOWN_TEMP in the real scrape: two GPUs
    of two hosts, as dcgm-exporter labels them."""
    found = {}
    for family in text_string_to_metric_families(DCGM_SCRAPE.read_text()):
        for sample in family.samples:
            if sample.name in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_SLOWDOWN_TEMP"):
                found[sample.labels["UUID"]] = dict(sample.labels)
    assert len(found) == 2
    return list(found.values())


def _gpus() -> list[tuple[dict[str, str], str]]:
    """(dcgm-exporter's labels, deployment): llama on the first host's GPU, mistral on the second's."""
    first, second = _dcgm_labels()
    return [(first, "llama"), (second, "mistral")]


def _state_at(ts: int, host: str) -> ExporterState:
    """What the auditor on `host` holds at `ts`: its own GPU, and the deployments' figures from the store
    the auditors share. llama runs away for the last two hours (20 $/h instead of 5), mistral pays 6 of
    its 10 $/h for idle GPUs, the inference collector fails for the last half hour."""
    minute = (ts - T0) // 60
    state = ExporterState()
    samples = []
    for labels, deployment in _gpus():
        if labels["Hostname"] != host:
            continue
        samples.append(
            GpuSample(
                ts=ts,
                host=labels["Hostname"],
                gpu_uuid=labels["UUID"],
                gpu_index=int(labels["gpu"]),
                gpu_name=labels["modelName"],
                deployment=deployment,
                util_pct=90.0 if deployment == "llama" else 20.0,
                sm_active_pct=45.0 if deployment == "llama" else 5.0,
                power_w=60.0,
                mem_used_bytes=14 * 2**30,
                energy_j=1000.0 + 60.0 * 60 * minute,
            )
        )
    state.set_gpu_samples(samples)
    llama_rate = Decimal(20 if ts >= SPIKE_FROM else 5)
    state.set_deployments(
        [
            DeploymentFigures(
                deployment="llama",
                tokens_per_s=100.0,
                cost_rate_usd_per_h=llama_rate,
                cost_per_mtok_usd={"1h": llama_rate / Decimal("0.36"), "1d": Decimal("14")},
                idle_cost_month_usd=Decimal("0.01") * minute,
                breakeven_utilization={
                    "openai:gpt-4o": Decimal("0.4"),
                    "anthropic:claude-3-5-haiku": Decimal("0.9"),
                },
                utilization={
                    ("1h", "gpu_util"): 0.9,
                    ("1h", "sm_active"): 0.45,
                    ("1h", "throughput_util"): 0.5,
                },
            ),
            DeploymentFigures(
                deployment="mistral",
                tokens_per_s=5.0,
                cost_rate_usd_per_h=Decimal(10),
                cost_per_mtok_usd={"1h": Decimal("555.6"), "1d": None},
                idle_cost_month_usd=Decimal("0.1") * minute,
                breakeven_utilization={"openai:gpt-4o": Decimal("0.7")},
                utilization={("1h", "gpu_util"): 0.2, ("1d", "gpu_util"): 0.25},
            ),
        ]
    )
    state.record_success("nvml", ts)
    state.record_success("inference", min(ts, DOWN_FROM - 60))
    if ts >= DOWN_FROM:
        state.record_errors("inference", ["unreachable"] * ((ts - DOWN_FROM) // 60 + 1), down=True)
    return state


def _scrape_minutes() -> list[int]:
    """No auditor target in the first hour (`absent` has its moment), then a scrape every two minutes
    (within Prometheus' five-minute lookback), every minute for the last two hours."""
    spike = (SPIKE_FROM - T0) // 60
    return [*range(60, spike, 2), *range(spike, MINUTES)]


def _instance(host: str) -> str:
    return f"{host}:9478"


def _exporter_series() -> Iterator[Series]:
    """Every minute's scrape of the real exporter on each of the two hosts, as Prometheus stores it. The
    second host's exporter stops answering for the last half hour (its last figures go stale)."""
    hosts = [labels["Hostname"] for labels, _ in _gpus()]
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[float, float]]] = defaultdict(list)
    for minute in _scrape_minutes():
        ts = T0 + 60 * minute
        for host in hosts:
            if host == hosts[1] and ts >= DOWN_FROM:
                continue
            text = generate_latest(Exporter(_state_at(ts, host), "127.0.0.1:0").registry).decode()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    labels = {**sample.labels, "job": JOB, "instance": _instance(host)}
                    samples[(sample.name, tuple(sorted(labels.items())))].append((ts, sample.value))
    for (name, label_items), points in samples.items():
        yield Series(name, dict(label_items), points)
    # Prometheus' own `up` for each target.
    for host in hosts:
        down = host == hosts[1]
        points = [(T0 + 60 * m, 0.0 if down and T0 + 60 * m >= DOWN_FROM else 1.0) for m in _scrape_minutes()]
        yield Series("up", {"job": JOB, "instance": _instance(host)}, points)


def _dcgm_series() -> Iterator[Series]:
    for labels, deployment in _gpus():
        scraped = {**labels, "job": "dcgm-exporter", "instance": f"{labels['Hostname']}:9400"}
        busy = deployment == "llama"
        minutes = range(MINUTES)
        yield Series(
            "DCGM_FI_DEV_GPU_UTIL", scraped, [(T0 + 60 * m, 90.0 if busy else 20.0) for m in minutes]
        )
        yield Series(
            "DCGM_FI_PROF_SM_ACTIVE", scraped, [(T0 + 60 * m, 0.45 if busy else 0.05) for m in minutes]
        )
        yield Series(
            "up",
            {"job": "dcgm-exporter", "instance": scraped["instance"]},
            [(T0 + 60 * m, 1.0) for m in minutes],
        )


def _groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load((RULES / "recording.yaml").read_text())["groups"]
    return groups


RECENT_S = 4 * 3600
"""The queries look at the last hours only; a recorded series another rule reads over a long range
(`[7d]`) is backfilled over the whole history, the rest over these last hours (it saves most of the
backfill's time)."""


def _backfill_rules(server: PromServer, level: int, group: dict[str, Any], work: Path, tsdb: Path) -> None:
    """One group's recorded series as blocks in `tsdb`. Each group's recent pass starts ten minutes after
    the pass of the group it reads: started at the same instant, promtool 2.42 wrote no block at all."""
    everything = " ".join(r["expr"] for g in _groups() for r in g["rules"])
    long = [r for r in group["rules"] if re.search(re.escape(r["record"]) + r"(\{[^}]*\})?\[", everything)]
    short = [r for r in group["rules"] if r not in long]
    recent = END - RECENT_S + level * 600
    for name, rules, start in (("long", long, T0), ("short", short, recent)):
        if not rules:
            continue
        path = work / f"{group['name']}.{name}.yaml"
        path.write_text(yaml.safe_dump({"groups": [{**group, "rules": rules}]}))
        blocks = work / f"{group['name']}.{name}.blocks"
        done = _promtool(
            "tsdb", "create-blocks-from", "rules", f"--url={server.url}", f"--start={start}",
            f"--end={END + 1}", f"--output-dir={blocks}", path,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        made = [b for b in blocks.iterdir() if b.is_dir()] if blocks.exists() else []
        assert made, f"no blocks recorded for {group['name']}: {done.stdout}{done.stderr}"
        for block in made:
            shutil.move(str(block), tsdb / block.name)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PromServer]:
    require_prometheus()
    work = tmp_path_factory.mktemp("prom")
    history = work / "history.om"
    with history.open("w") as out:
        write_openmetrics([*_exporter_series(), *_dcgm_series()], out)
    tsdb = work / "tsdb"
    backfill(history, tsdb)
    # Recording rules over the history, a group at a time: each reads what the one before wrote, so
    # Prometheus restarts over the new blocks between groups.
    for level, group in enumerate(_groups()):
        with serve(tsdb) as server:
            _backfill_rules(server, level, group, work, tsdb)
    with serve(tsdb) as server:
        yield server


# -- every expression returns series -------------------------------------------------------------


def _rule_expressions() -> list[tuple[str, str]]:
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                found.append((rule.get("record") or rule["alert"], rule["expr"]))
    return found


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def _grafana(expr: str) -> str:
    """The expression as Grafana sends it with every deployment selected (the variable's allValue)."""
    [variable] = [v for v in _dashboard()["templating"]["list"] if v["name"] == "deployment"]
    return expr.replace("$deployment", variable["allValue"])


def _dashboard_expressions() -> list[tuple[str, str]]:
    return [
        (f"{panel['title']} / {target['refId']}", _grafana(target["expr"]))
        for panel in _dashboard()["panels"]
        for target in panel["targets"]
    ]


AT = {"AuditorExporterAbsent": T0 + 30 * 60}
"""Where an expression only answers at another moment: `absent(up{job="gpu-auditor"})` before the first
auditor target appears. Everything else is evaluated at the end of the history."""


@pytest.mark.slow
@pytest.mark.parametrize(("name", "expr"), _rule_expressions(), ids=[n for n, _ in _rule_expressions()])
def test_every_rule_expression_returns_series(prometheus: PromServer, name: str, expr: str) -> None:
    result = prometheus.query(expr, at=AT.get(name, END))
    assert result, f"{name}: {expr} returned nothing"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "expr"), _dashboard_expressions(), ids=[n for n, _ in _dashboard_expressions()]
)
def test_every_dashboard_expression_returns_series(prometheus: PromServer, name: str, expr: str) -> None:
    result = prometheus.query_range(expr, END - 3 * 3600, END, 300)
    assert result, f"{name}: {expr} returned nothing"
    assert all(series["values"] for series in result)


@pytest.mark.slow
def test_the_alerts_pick_out_what_the_history_holds(prometheus: PromServer) -> None:
    """Not only series: the right ones. The runaway is llama's, the idle cost mistral's, the dead
    exporter node-2's, the failing collector inference."""
    alerts = dict(_rule_expressions())

    def labels(name: str, key: str) -> set[str]:
        return {s["metric"].get(key, "") for s in prometheus.query(alerts[name], at=END)}

    assert labels("AuditorBurnRateHigh", "deployment") == {"llama"}
    assert labels("AuditorIdleCostHigh", "deployment") == {"mistral"}
    assert labels("AuditorExporterDown", "instance") == {_instance(_gpus()[1][0]["Hostname"])}
    assert labels("AuditorCollectorDown", "collector") == {"inference"}
    assert labels("AuditorCollectorStalled", "collector") == {"inference"}
    [idle] = prometheus.query(alerts["AuditorIdleCostHigh"], at=END)
    assert float(idle["value"][1]) == pytest.approx(0.6, rel=1e-6)  # 6 of 10 $/h idle
    assert prometheus.query(alerts["AuditorExporterAbsent"], at=END) == []


@pytest.mark.slow
def test_dcgm_series_join_the_auditors_deployment_on_uuid(prometheus: PromServer) -> None:
    """The join the exporter's label names exist for: dcgm-exporter's SM activity per deployment (before
    the second host's exporter went down; after, its GPU has no deployment to join)."""
    before = DOWN_FROM - 120
    result = prometheus.query("deployment:dcgm_sm_active:avg", at=before)
    by_deployment = {s["metric"]["deployment"]: float(s["value"][1]) for s in result}
    assert by_deployment == {"llama": 0.45, "mistral": 0.05}
    after = prometheus.query("deployment:dcgm_sm_active:avg", at=END)
    assert {s["metric"]["deployment"] for s in after} == {"llama"}
    joined = prometheus.query(
        "DCGM_FI_DEV_GPU_UTIL * on (Hostname, gpu) group_left (deployment)"
        " max by (Hostname, gpu, deployment) (auditor_gpu_info)",
        at=before,
    )
    assert {s["metric"]["deployment"] for s in joined} == {"llama", "mistral"}


@pytest.mark.slow
def test_utilization_by_deployment_is_the_last_hours_by_measure(prometheus: PromServer) -> None:
    result = prometheus.query("deployment:auditor_utilization_ratio:max", at=END)
    found = {(s["metric"]["deployment"], s["metric"]["measure"]): float(s["value"][1]) for s in result}
    assert found == {
        ("llama", "gpu_util"): 0.9,
        ("llama", "sm_active"): 0.45,
        ("llama", "throughput_util"): 0.5,
        ("mistral", "gpu_util"): 0.2,  # its day's 0.25 is another window
    }


@pytest.mark.slow
def test_the_dashboard_variable_lists_the_deployments(prometheus: PromServer) -> None:
    [variable] = [v for v in _dashboard()["templating"]["list"] if v["name"] == "deployment"]
    match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
    assert match, variable["query"]
    metric, label = match.groups()
    series = prometheus.api("series", **{"match[]": metric, "start": END - 3600, "end": END})
    assert {s[label] for s in series} == {"llama", "mistral"}


# -- the dashboard's shape ------------------------------------------------------------------------


def test_the_dashboard_is_well_formed() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs)
    titles = " ".join(p["title"].lower() for p in panels)
    for wanted in ("cost per million tokens", "idle cost", "utilization by deployment", "break-even"):
        assert wanted in titles
    # Panels read the recorded per-deployment series, never every GPU's (the point at fleet scale).
    recorded = {r["record"] for g in _groups() for r in g["rules"]}
    for name, expr in _dashboard_expressions():
        if "auditor_" in expr and "up{" not in expr:
            uses_recorded = any(r in expr for r in recorded)
            assert uses_recorded or "auditor_idle_cost_usd_total" in expr or "auditor_collector_up" in expr, (
                name
            )
