"""The store on real SQLite files: migrations, exact money, windowed replacement, retention, WAL."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import insert, inspect, text

from auditor.model import (
    Alert,
    AlertState,
    CostBasis,
    CostLine,
    DeploymentMinute,
    GpuMinute,
    GpuSample,
    ServerSample,
)
from auditor.store import _PHASE_COLUMNS, MIGRATIONS, SCHEMA_VERSION, Store, StoreError, schema_version


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'auditor.db'}"


def test_migrates_an_empty_database_and_reopens(store_url: str) -> None:
    store = Store.open(store_url)
    assert store.schema_version() == SCHEMA_VERSION
    tables = set(inspect(store.engine).get_table_names())
    assert {
        "gpu_samples",
        "server_samples",
        "gpu_minutes",
        "deployment_minutes",
        "cost_lines",
        "alerts",
    } <= tables
    store.close()
    again = Store.open(store_url)  # migrating a current schema is a no-op
    assert again.schema_version() == SCHEMA_VERSION
    again.close()


@pytest.mark.parametrize("old_version", [2, 3])
def test_an_old_store_gains_phase_time_columns_and_keeps_its_rows(store_url: str, old_version: int) -> None:
    """A store from before schema 4 (no prefill/decode columns) migrates in place: its rows stay, with
    the phase times unknown (NULL), and new rows carry them."""
    old = Store.open(store_url, migrate=False)
    for version, migration in enumerate(MIGRATIONS[:old_version], start=1):
        with old.engine.begin() as conn:
            migration(conn)
            conn.execute(insert(schema_version).values(version=version, applied_ts=0.0))
    with old.engine.begin() as conn:  # the tables as the older program made them
        for table, columns in _PHASE_COLUMNS:
            if inspect(conn).has_table(table):
                for column in columns:
                    conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        conn.execute(
            text(
                "INSERT INTO server_samples (ts, host, deployment, instance, prompt_tokens_total) "
                "VALUES (900, 'h', 'llama', 'i', 5)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO deployment_minutes (minute_ts, deployment, instances, server_observed_s, "
                "prompt_tokens, generation_tokens, request_busy_s, gpu_observed_s) "
                "VALUES (960, 'llama', 1, 60, 100, 20, 30, 0)"
            )
        )
    old.close()
    store = Store.open(store_url)
    assert store.schema_version() == SCHEMA_VERSION
    (sample,) = store.server_samples(0, 1000)
    assert sample.prompt_tokens_total == 5 and sample.prefill_seconds_total is None
    (minute,) = store.deployment_minutes(0, 1000)
    assert minute.prompt_tokens == 100 and (minute.prefill_s, minute.decode_s) == (None, None)
    store.rebuild_tiers(900, 1800)
    (bucket,) = store.window_buckets(900, 1800, ["llama"])["llama"].values()
    assert bucket.prompt_tokens == 100 and (bucket.prefill_s, bucket.decode_s) == (None, None)
    store.add_server_samples([ServerSample(ts=960, host="h", deployment="llama", instance="i",
                                           prefill_seconds_total=1.5, decode_seconds_total=4.0)])  # fmt: skip
    assert [s.decode_seconds_total for s in store.server_samples(0, 1000)] == [None, 4.0]
    store.close()


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    store = Store.open(_url(tmp_path))
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 10_000


def test_refuses_a_newer_schema(store_url: str) -> None:
    store = Store.open(store_url)
    with store.engine.begin() as conn:
        conn.execute(insert(schema_version).values(version=SCHEMA_VERSION + 1, applied_ts=0.0))
    store.close()
    with pytest.raises(StoreError, match="upgrade gpu-auditor"):
        Store.open(store_url)


def test_bad_store_urls_say_what_to_use(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"sqlite:////path/to/auditor\.db"):
        Store.open("not a url")
    with pytest.raises(StoreError, match="unsupported database scheme 'mysql'"):
        Store.open("mysql://u@h/db")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot create the store's directory"):
        Store.open(f"sqlite:///{blocker / 'sub' / 'a.db'}")


def _line(day: date, amount: str, account: str = "123456789012") -> CostLine:
    return CostLine(
        day=day,
        source="aws",
        account=account,
        resource="i-0abc",
        usage_type="BoxUsage:p5.48xlarge",
        amount_usd=Decimal(amount),
        deployment="llama",
        usage_hours=Decimal(24),
        gpu_hours=Decimal(192),
        basis=CostBasis.INVOICED,
        estimated=True,
    )


def test_cost_lines_keep_money_exact_and_a_resync_replaces_its_window(store_url: str) -> None:
    store = Store.open(store_url)
    october = (date(2026, 10, 1), date(2026, 11, 1))
    first = [_line(date(2026, 10, d), "1320.9612345678") for d in range(1, 32)]
    store.replace_cost_lines("aws", "123456789012", *october, first)
    store.replace_cost_lines("aws", "123456789012", *october, first)  # the same sync twice
    other = _line(date(2026, 10, 3), "7.01", account="210987654321")
    store.replace_cost_lines("aws", "210987654321", *october, [other])
    lines = store.cost_lines(*october)
    assert len(lines) == 32
    assert sum((line.amount_usd for line in lines), Decimal(0)) == Decimal("1320.9612345678") * 31 + Decimal(
        "7.01"
    )
    assert lines[0] == first[0]  # enums, booleans and decimals come back as they went in
    # AWS restates the 30th and 31st: re-reading those days replaces only them.
    store.replace_cost_lines(
        "aws",
        "123456789012",
        date(2026, 10, 30),
        date(2026, 11, 1),
        [_line(date(2026, 10, 30), "1000"), _line(date(2026, 10, 31), "1000")],
    )
    total = sum((line.amount_usd for line in store.cost_lines(*october)), Decimal(0))
    assert total == Decimal("1320.9612345678") * 29 + 2000 + Decimal("7.01")
    with pytest.raises(ValueError, match="outside the window"):
        store.replace_cost_lines("aws", "123456789012", date(2026, 11, 1), date(2026, 12, 1), first[:1])


def test_prune_keeps_what_is_within_retention(store_url: str) -> None:
    store = Store.open(store_url)
    now = 1_790_000_000.0
    store.add_gpu_samples(
        [
            GpuSample(ts=now - 49 * 3600, host="h", gpu_uuid="g", gpu_index=0),
            GpuSample(ts=now - 47 * 3600, host="h", gpu_uuid="g", gpu_index=0),
        ]
    )
    deleted = store.prune(now, raw_retention_s=48 * 3600, rollup_retention_s=397 * 86400)
    assert deleted["gpu_samples"] == 1
    assert [s.ts for s in store.gpu_samples(0, now)] == [now - 47 * 3600]


def test_alerts_survive_a_reopen(store_url: str) -> None:
    store = Store.open(store_url)
    alert = Alert(
        rule="move-to-api",
        subject="llama",
        state=AlertState.FIRING,
        severity="warning",
        first_seen_ts=1.0,
        last_seen_ts=2.0,
        last_sent_ts=None,
        payload='{"saving_usd": "2700.00"}',
    )
    store.put_alert(alert)
    store.put_alert(alert)  # an update, not a duplicate
    store.close()
    assert Store.open(store_url).alerts() == [alert]


WRITER = textwrap.dedent(
    """
    import sys, time
    from auditor.model import GpuSample
    from auditor.store import Store
    store = Store.open(sys.argv[1])
    for batch in range(40):
        store.add_gpu_samples([GpuSample(ts=batch * 100.0 + i, host="h", gpu_uuid="g", gpu_index=0,
                                         util_pct=50.0) for i in range(100)])
        time.sleep(0.01)
    """
)


def test_a_reader_reads_while_the_writer_writes(tmp_path: Path) -> None:
    url = _url(tmp_path)
    Store.open(url).close()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, url])
    reader = Store.open(url, migrate=False)
    counts = []
    try:
        while writer.poll() is None:
            counts.append(len(reader.gpu_samples(0, 10**9)))
            time.sleep(0.005)
    finally:
        writer.wait(timeout=60)
    assert writer.returncode == 0
    assert len(set(counts)) > 2  # the reads really happened while the writer was writing
    assert counts == sorted(counts)  # reads see whole batches, never going back
    assert all(c % 100 == 0 for c in counts)  # never half a batch: each is one transaction
    assert len(reader.gpu_samples(0, 10**9)) == 4000


def test_every_field_of_samples_and_minutes_survives_a_write_and_a_read(store_url: str) -> None:
    """The fast write path builds rows from the fields by position: a column out of order or a None
    written as something else would show here."""
    store = Store.open(store_url)
    gpu = GpuSample(
        ts=1_790_000_001.5, host="h", gpu_uuid="GPU-1", gpu_index=3, deployment="d", gpu_name="H100",
        util_pct=41.0, mem_util_pct=12.5, sm_active_pct=None, tensor_active_pct=7.0,
        mem_used_bytes=70 * 2**30, mem_total_bytes=80 * 2**30, power_w=350.25, energy_j=1.5e9,
        sm_clock_mhz=1980, process_count=1, process_mem_bytes=None,
    )  # fmt: skip
    server = ServerSample(
        ts=1_790_000_002.0, host="h", deployment="d", instance="http://h:8000/metrics",
        server_kind="vllm", model_name=None, prompt_tokens_total=1e6, generation_tokens_total=2e5,
        requests_running=3.0, requests_waiting=None, kv_cache_usage=0.4,
    )  # fmt: skip
    minute = GpuMinute(
        minute_ts=1_790_000_040, host="h", gpu_uuid="GPU-1", gpu_index=3, deployment=None,
        observed_s=59.5, util_observed_s=50.0, idle_s=10.25, loaded_s=59.5, gpu_util=0.41,
        gpu_util_max=None, sm_active=0.3, energy_j=None, power_mean_w=350.0,
        mem_used_max_bytes=70 * 2**30, mem_total_bytes=None,
    )  # fmt: skip
    row = DeploymentMinute(
        minute_ts=1_790_000_040, deployment="d", instances=2, server_observed_s=120.0,
        prompt_tokens=12_345, generation_tokens=678, request_busy_s=30.5, requests_running_mean=None,
        requests_waiting_mean=0.5, kv_cache_mean=0.25, kv_cache_max=None, gpu_observed_s=59.5,
        gpu_util=None, sm_active=0.3, request_busy=0.25, throughput_util=None,
    )  # fmt: skip
    store.add_gpu_samples([gpu])
    store.add_server_samples([server])
    store.replace_minutes(1_790_000_040, 1_790_000_100, [minute], [row])
    assert store.gpu_samples(0, 2e9) == [gpu]
    assert store.server_samples(0, 2e9) == [server]
    assert store.gpu_minutes(0, 2e9) == [minute]
    assert store.deployment_minutes(0, 2e9) == [row]
    store.close()


def test_replicas_starting_together_migrate_a_new_postgresql_store_once(postgres_url: str) -> None:
    """Fleet replicas (or a command beside the daemon) opening one fresh database at once: one migrates,
    the others wait for it; none fails on a table another has just created."""
    from sqlalchemy import create_engine

    name = f"race_{time.time_ns()}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = postgres_url.rsplit("/", 1)[0] + f"/{name}"
    opener = "import sys; from auditor.store import Store; Store.open(sys.argv[1]).close()"
    try:
        openers = [
            subprocess.Popen([sys.executable, "-c", opener, url], stderr=subprocess.PIPE) for _ in range(4)
        ]
        errors = [p.communicate(timeout=120)[1].decode() for p in openers]
        assert [p.returncode for p in openers] == [0, 0, 0, 0], errors
        store = Store.open(url, migrate=False)
        with store.engine.connect() as conn:
            applied = (
                conn.execute(text("SELECT version FROM schema_version ORDER BY version")).scalars().all()
            )
        store.close()
        assert applied == list(range(1, SCHEMA_VERSION + 1))  # each step once
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
