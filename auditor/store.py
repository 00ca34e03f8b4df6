"""The store: SQLAlchemy Core over SQLite (WAL, the embedded default) or PostgreSQL (fleets).

Only `_configure_sqlite` knows a dialect; every query is portable Core. Money is kept exactly
(`ExactDecimal`); timestamps are UTC epoch seconds. Writes are batched, one transaction a batch.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import date
from decimal import Decimal
from enum import Enum
from itertools import islice
from operator import attrgetter
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    Connection,
    Date,
    Double,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    Select,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection, Dialect
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.schema import CreateIndex
from sqlalchemy.types import TypeDecorator, TypeEngine

from auditor.config import IdleLoadedRule, parse_store_url
from auditor.costing import MEASURED_CAPACITY_MINUTES, UtilizationMeasures, run_totals
from auditor.model import (
    COST_LINE_FIELDS,
    MINUTE_S,
    Alert,
    AlertState,
    CostBasis,
    CostLine,
    DeploymentMinute,
    GpuMinute,
    GpuSample,
    ServerSample,
    cost_line_key,
)

SQLITE_BUSY_TIMEOUT_MS = 10_000
POSTGRES_CONNECT_TIMEOUT_S = 10
"""An unreachable database server fails a command (or a daemon job, or doctor) in this many seconds,
not after the kernel's two minutes of TCP retries."""
HOUR_S = 3600
DAY_S = 86_400
MINUTE_RETENTION_DAYS = 14
"""Days minute roll-ups are kept by default; the tiers answer for older time."""
MIN_MINUTE_RETENTION_DAYS = 2
"""A large fleet's minutes are kept at least this long, however many GPUs (`minute_retention_s`)."""


DEFAULT_MINUTE_ROWS_MAX = 3_500_000
"""`store.minute_rows_max`'s default: GPU-minute rows kept at most (~1 GB in SQLite)."""


def fleet_minute_window_s(gpus: int, max_rows: int = DEFAULT_MINUTE_ROWS_MAX) -> float:
    """The default minute window for `gpus` GPUs: `MINUTE_RETENTION_DAYS`, cut so that their minutes
    stay under `max_rows` rows, never under `MIN_MINUTE_RETENTION_DAYS`."""
    if gpus <= 0:
        return float(MINUTE_RETENTION_DAYS * DAY_S)
    fits_s = max_rows / gpus * MINUTE_S
    return float(max(min(fits_s, MINUTE_RETENTION_DAYS * DAY_S), MIN_MINUTE_RETENTION_DAYS * DAY_S))


class StoreError(Exception):
    """The store cannot be opened or used; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class CostLineChange:
    """What a replacement of cost lines did: lines added, removed, rewritten, and left as they were."""

    added: int = 0
    removed: int = 0
    changed: int = 0
    unchanged: int = 0

    def __add__(self, other: CostLineChange) -> CostLineChange:
        return CostLineChange(
            self.added + other.added,
            self.removed + other.removed,
            self.changed + other.changed,
            self.unchanged + other.unchanged,
        )

    @property
    def changed_anything(self) -> bool:
        return bool(self.added or self.removed or self.changed)


@dataclass(frozen=True, slots=True)
class CostLineCoverage:
    """One billing source's lines in the store: the days covered and the days the source may still revise."""

    source: str
    first_day: date
    last_day: date
    lines: int
    days: int
    estimated_days: int


@dataclass(frozen=True, slots=True)
class BillingSync:
    """One sync of a billing source, or one import of bill files: what was read and what it changed."""

    source: str
    kind: str
    """The source's kind (`focus_files`, `aws_cost_explorer`, ...), or `import` for `billing import`."""
    synced_ts: float
    origin: str
    """What was read: the files, the S3 manifest, the query."""
    period_start_ts: int | None = None
    period_end_ts: int | None = None
    rows_read: int = 0
    lines_added: int = 0
    lines_removed: int = 0
    lines_changed: int = 0
    lines_unchanged: int = 0
    requests: int = 0
    """Paid API requests made (Cost Explorer: $0.01 each)."""
    id: int | None = None


class ExactDecimal(TypeDecorator[Decimal]):
    """Money without rounding: NUMERIC on PostgreSQL, the decimal's text on SQLite (which has no decimal)."""

    impl = String
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(40))
        return dialect.type_descriptor(Numeric(38, 18, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return str(value)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return value if isinstance(value, Decimal) else Decimal(value)


metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_ts", Double, nullable=False),
)

gpu_samples = Table(
    "gpu_samples",
    metadata,
    Column("ts", Double, nullable=False),
    Column("host", String(255), nullable=False),
    Column("gpu_uuid", String(96), nullable=False),
    Column("gpu_index", Integer, nullable=False),
    Column("deployment", String(64)),
    Column("gpu_name", String(128)),
    Column("util_pct", Double),
    Column("mem_util_pct", Double),
    Column("sm_active_pct", Double),
    Column("tensor_active_pct", Double),
    Column("mem_used_bytes", BigInteger),
    Column("mem_total_bytes", BigInteger),
    Column("power_w", Double),
    Column("energy_j", Double),
    Column("sm_clock_mhz", Integer),
    Column("process_count", Integer),
    Column("process_mem_bytes", BigInteger),
    Index("ix_gpu_samples_uuid_ts", "gpu_uuid", "ts"),
    Index("ix_gpu_samples_ts", "ts"),
)

server_samples = Table(
    "server_samples",
    metadata,
    Column("ts", Double, nullable=False),
    Column("host", String(255), nullable=False),
    Column("deployment", String(64), nullable=False),
    Column("instance", String(512), nullable=False),
    Column("server_kind", String(16)),
    Column("model_name", String(255)),
    Column("prompt_tokens_total", Double),
    Column("generation_tokens_total", Double),
    Column("requests_running", Double),
    Column("requests_waiting", Double),
    Column("kv_cache_usage", Double),
    Column("prefill_seconds_total", Double),  # schema 4
    Column("decode_seconds_total", Double),  # schema 4
    Index("ix_server_samples_series_ts", "deployment", "instance", "ts"),
    Index("ix_server_samples_ts", "ts"),
)

gpu_minutes = Table(
    "gpu_minutes",
    metadata,
    Column("minute_ts", BigInteger, nullable=False),
    Column("host", String(255), nullable=False),
    Column("gpu_uuid", String(96), nullable=False),
    Column("gpu_index", Integer, nullable=False),
    Column("deployment", String(64)),
    Column("observed_s", Double, nullable=False),
    Column("util_observed_s", Double, nullable=False),
    Column("idle_s", Double, nullable=False),
    Column("loaded_s", Double, nullable=False),
    Column("gpu_util", Double),
    Column("gpu_util_max", Double),
    Column("sm_active", Double),
    Column("energy_j", Double),
    Column("power_mean_w", Double),
    Column("mem_used_max_bytes", BigInteger),
    Column("mem_total_bytes", BigInteger),
    PrimaryKeyConstraint("gpu_uuid", "minute_ts"),
    Index("ix_gpu_minutes_minute", "minute_ts"),
    Index("ix_gpu_minutes_deployment_minute", "deployment", "minute_ts"),
)

deployment_minutes = Table(
    "deployment_minutes",
    metadata,
    Column("minute_ts", BigInteger, nullable=False),
    Column("deployment", String(64), nullable=False),
    Column("instances", Integer, nullable=False),
    Column("server_observed_s", Double, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("generation_tokens", BigInteger, nullable=False),
    Column("request_busy_s", Double, nullable=False),
    Column("requests_running_mean", Double),
    Column("requests_waiting_mean", Double),
    Column("kv_cache_mean", Double),
    Column("kv_cache_max", Double),
    Column("gpu_observed_s", Double, nullable=False),
    Column("gpu_util", Double),
    Column("sm_active", Double),
    Column("request_busy", Double),
    Column("throughput_util", Double),
    Column("prefill_s", Double),  # schema 4
    Column("decode_s", Double),  # schema 4
    PrimaryKeyConstraint("deployment", "minute_ts"),
    Index("ix_deployment_minutes_minute", "minute_ts"),
)

cost_lines = Table(
    "cost_lines",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("day", Date, nullable=False),
    Column("source", String(64), nullable=False),
    Column("account", String(128), nullable=False),
    Column("resource", String(512), nullable=False),
    Column("usage_type", String(255), nullable=False),
    Column("amount_usd", ExactDecimal, nullable=False),
    Column("deployment", String(64)),
    Column("usage_hours", ExactDecimal),
    Column("gpu_hours", ExactDecimal),
    Column("basis", String(16), nullable=False),
    Column("estimated", Boolean, nullable=False),
    # schema 5 (FOCUS terms): added by `_migration_cost_lines_focus` to older stores, nullable there.
    Column("charge_period_start_ts", BigInteger),
    Column("charge_period_end_ts", BigInteger),
    Column("billing_period_start_ts", BigInteger),
    Column("billed_cost", ExactDecimal),
    Column("effective_cost", ExactDecimal),
    Column("list_cost", ExactDecimal),
    Column("billing_currency", String(3)),
    Column("usd_rate", ExactDecimal),
    Column("charge_category", String(32)),
    Column("pricing_category", String(32)),
    Column("commitment_discount_id", String(512)),
    Column("provider", String(64)),
    Column("sub_account", String(128)),
    Column("region", String(64)),
    Column("sku_id", String(255)),
    Column("tags_json", Text),
    Column("line_key", String(64)),
    Index("ix_cost_lines_source_account_day", "source", "account", "day"),
    Index("ix_cost_lines_day", "day"),
    Index("ix_cost_lines_source_key", "source", "line_key", unique=True),
    Index("ix_cost_lines_source_period", "source", "billing_period_start_ts"),
)

alerts = Table(
    "alerts",
    metadata,
    Column("rule", String(64), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("state", String(16), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("first_seen_ts", Double, nullable=False),
    Column("last_seen_ts", Double, nullable=False),
    Column("last_sent_ts", Double),
    Column("payload", Text, nullable=False),
    PrimaryKeyConstraint("rule", "subject"),
)


def _migration_1(conn: Connection) -> None:
    """The first schema. Later migrations add to it (ALTER TABLE, new tables), never edit what it made."""
    metadata.create_all(conn, checkfirst=True)


# -- schema 2: the alert outbox (its own MetaData: migration 1's `create_all` must never make it) --

outbox_metadata = MetaData()

outbox = Table(
    "outbox",
    outbox_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(400), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("channel", String(255)),
    Column("text", Text, nullable=False),
    Column("blocks", Text, nullable=False),
    Column("attachment", LargeBinary),
    Column("attachment_name", String(255)),
    Column("created_ts", Double, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_ts", Double, nullable=False),
    Column("last_error", Text),
    Column("posted_ref", String(255)),
    Column("sent_ts", Double),
    Column("sent_ref", String(255)),
    Index("ix_outbox_pending", "sent_ts", "next_attempt_ts"),
    Index("ix_outbox_key", "key"),
)


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message waiting for Slack (or sent): marked sent only after Slack accepted it."""

    key: str
    """What it is about: `rule|subject` for an alert, `digest|2026-W47` for a digest."""
    kind: str
    """`firing`, `escalated`, `resolved` or `digest`."""
    severity: str
    channel: str | None
    """None: the sender's default (an incoming webhook has its own channel)."""
    text: str
    """The plain-text fallback (notifications, screen readers)."""
    blocks: str
    """Block Kit blocks as JSON."""
    created_ts: float
    attachment: bytes | None = None
    """A file to upload with the message (the digest's chart)."""
    attachment_name: str | None = None
    id: int | None = None
    attempts: int = 0
    next_attempt_ts: float = 0.0
    last_error: str | None = None
    posted_ref: str | None = None
    """The message's Slack `ts` once posted, when its attachment is still to be uploaded."""
    sent_ts: float | None = None
    sent_ref: str | None = None


def _migration_2(conn: Connection) -> None:
    """Schema 2: the outbox, where messages wait until Slack has accepted them."""
    outbox_metadata.create_all(conn, checkfirst=True)


# -- schema 3: roll-up tiers. Minute rows are kept a short window (`store.minute_retention_days`); --
# the tiers are kept for the roll-up retention and written with the minutes, in the same transaction,
# so a window longer than the minute window is still answered, exactly as the minutes would have.
#
# Deployment rows hold, per quarter-hour, the very sums the costing path reads (`Bucket`): the
# quarter-hour because every time zone's offset from UTC is a whole number of quarter-hours (India
# +5:30 and Nepal +5:45 included), so each row lies in one local hour and one local day in every
# zone, and a window's figures from these rows equal those from its minutes. GPU rows are per UTC
# hour (a GPU's own history: observed, idle and loaded seconds, activity, energy, memory): GPU rows
# are most of the store, and nothing that needs a local day boundary finer than an hour reads them.

tier_metadata = MetaData()

deployment_quarter_hours = Table(
    "deployment_quarter_hours",
    tier_metadata,
    Column("bucket_ts", BigInteger, nullable=False),
    Column("deployment", String(64), nullable=False),
    Column("gpu_observed_s", Double, nullable=False),
    Column("gpu_idle_s", Double, nullable=False),
    Column("gpu_util_weighted", Double, nullable=False),
    Column("gpu_util_s", Double, nullable=False),
    Column("sm_active_weighted", Double, nullable=False),
    Column("sm_active_s", Double, nullable=False),
    Column("energy_j", Double),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("generation_tokens", BigInteger, nullable=False),
    Column("server_observed_s", Double, nullable=False),
    Column("request_busy_weighted", Double, nullable=False),
    Column("request_busy_s", Double, nullable=False),
    Column("served_tokens", BigInteger, nullable=False),
    Column("served_wall_s", Double, nullable=False),
    Column("gpu_minutes", Integer, nullable=False),
    Column("minutes_with_gpus", Integer, nullable=False),
    Column("prefill_s", Double),  # schema 4
    Column("decode_s", Double),  # schema 4
    Column("served_peak_tokens", BigInteger),  # schema 6
    PrimaryKeyConstraint("deployment", "bucket_ts"),
)

gpu_hours = Table(
    "gpu_hours",
    tier_metadata,
    Column("hour_ts", BigInteger, nullable=False),
    Column("gpu_uuid", String(96), nullable=False),
    Column("deployment", String(64)),
    Column("host", String(255), nullable=False),
    Column("gpu_index", Integer, nullable=False),
    Column("minutes", Integer, nullable=False),
    Column("observed_s", Double, nullable=False),
    Column("util_observed_s", Double, nullable=False),
    Column("idle_s", Double, nullable=False),
    Column("loaded_s", Double, nullable=False),
    Column("gpu_util_weighted", Double, nullable=False),
    Column("gpu_util_s", Double, nullable=False),
    Column("gpu_util_max", Double),
    Column("sm_active_weighted", Double, nullable=False),
    Column("sm_active_s", Double, nullable=False),
    Column("energy_j", Double),
    Column("mem_used_max_bytes", BigInteger),
    Column("mem_total_bytes", BigInteger),
    # schema 7: idle-loaded at the rule's default definition (`_idle_loaded_terms`), so the rule's
    # week of history is there for a fleet whose minutes are kept ~2 days. NULL: not known.
    Column("activity_known_s", Double),
    Column("idle_loaded_s", Double),
    Column("working_minutes", Integer),
    Index("ix_gpu_hours_uuid_hour", "gpu_uuid", "hour_ts"),
    Index("ix_gpu_hours_hour", "hour_ts"),
)


# -- schema 4: prefill and decode seconds (vLLM's phase histograms' sums), to split $/Mtok by direction --
_PHASE_COLUMNS = (
    ("server_samples", ("prefill_seconds_total", "decode_seconds_total")),
    ("deployment_minutes", ("prefill_s", "decode_s")),
    ("deployment_quarter_hours", ("prefill_s", "decode_s")),
)


def _add_phase_columns(conn: Connection) -> None:
    """The nullable phase-time columns, on the tables that lack them (a store made by migrations 1 and 3
    of this version has them already: they build the tables as declared)."""
    tables = {t.name: t for t in (server_samples, deployment_minutes, deployment_quarter_hours)}
    for name, columns in _PHASE_COLUMNS:
        # The columns of an empty result: one cheap query, where reflection is a dozen catalog joins
        # (the daemon migrates at start, before its first sample).
        present = set(conn.execute(select(text("*")).select_from(text(name)).limit(0)).keys())
        for column in columns:
            if column not in present:
                column_type = tables[name].c[column].type.compile(dialect=conn.dialect)
                conn.execute(text(f"ALTER TABLE {name} ADD COLUMN {column} {column_type}"))


def _migration_4(conn: Connection) -> None:
    """Schema 4: prefill and decode seconds on server samples, deployment minutes and the quarter-hour
    tier. Rows already there keep NULL: unknown, so their windows split by the API's price ratio."""
    _add_phase_columns(conn)


def _migration_3(conn: Connection) -> None:
    """Schema 3: the roll-up tiers, filled from the minute rows already there (a day at a time), so
    an existing store answers from them at once; the retention job then thins the minutes."""
    tier_metadata.create_all(conn, checkfirst=True)
    _add_phase_columns(conn)  # the rebuild below reads and writes every declared column
    first = min(
        (
            v
            for t in (gpu_minutes, deployment_minutes)
            if (v := conn.execute(select(func.min(t.c.minute_ts))).scalar()) is not None
        ),
        default=None,
    )
    last = max(
        (
            v
            for t in (gpu_minutes, deployment_minutes)
            if (v := conn.execute(select(func.max(t.c.minute_ts))).scalar()) is not None
        ),
        default=None,
    )
    if first is None or last is None:
        return
    _rebuild_tiers(conn, int(first), int(last) + 60)


def _rebuild_tiers(conn: Connection, start_ts: float, end_ts: float) -> None:
    """The tiers of [start, end) recomputed from the minute rows, a day at a time."""
    day = _floor(start_ts, DAY_S)
    while day < end_ts:
        _refresh_tiers(conn, max(day, start_ts), min(day + DAY_S, end_ts))
        day += DAY_S


# -- schema 5: cost lines in FOCUS terms, and the record of billing syncs and imports ----------------

billing_metadata = MetaData()

billing_syncs = Table(
    "billing_syncs",
    billing_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("synced_ts", Double, nullable=False),
    Column("period_start_ts", BigInteger),
    Column("period_end_ts", BigInteger),
    Column("origin", Text, nullable=False),
    Column("rows_read", BigInteger, nullable=False),
    Column("lines_added", Integer, nullable=False),
    Column("lines_removed", Integer, nullable=False),
    Column("lines_changed", Integer, nullable=False),
    Column("lines_unchanged", Integer, nullable=False),
    Column("requests", Integer, nullable=False),
    Index("ix_billing_syncs_source", "source", "synced_ts"),
)

_FOCUS_COLUMNS = (
    "charge_period_start_ts",
    "charge_period_end_ts",
    "billing_period_start_ts",
    "billed_cost",
    "effective_cost",
    "list_cost",
    "billing_currency",
    "usd_rate",
    "charge_category",
    "pricing_category",
    "commitment_discount_id",
    "provider",
    "sub_account",
    "region",
    "sku_id",
    "tags_json",
    "line_key",
)


def _migration_cost_lines_focus(conn: Connection) -> None:
    """Cost lines in FOCUS terms: the new columns added (nullable; existing rows kept, their FOCUS costs
    unknown, so the costing path keeps their `amount_usd`), each existing row given its stable key, the
    source name widened to a configured billing source's, and the sync record created."""
    present = set(conn.exec_driver_sql("SELECT * FROM cost_lines LIMIT 0").keys())
    for name in _FOCUS_COLUMNS:
        if name not in present:
            column_type = cost_lines.c[name].type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE cost_lines ADD COLUMN {name} {column_type}")
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("ALTER TABLE cost_lines ALTER COLUMN source TYPE VARCHAR(64)")
    rows = conn.execute(select(cost_lines).where(cost_lines.c.line_key.is_(None))).all()
    seen: set[tuple[str, str]] = set()
    for row in rows:
        line = _with_enums(_records(CostLine, [row])[0])
        key = line.line_key
        if (line.source, key) in seen:  # two identical old rows: both kept, told apart by their id
            key = f"{key[:40]}-{row.id}"
        seen.add((line.source, key))
        conn.execute(update(cost_lines).where(cost_lines.c.id == row.id).values(line_key=key))
    for index in cost_lines.indexes:
        # IF NOT EXISTS, not checkfirst: index reflection is a pg_catalog scan slow enough on a loaded
        # PostgreSQL to keep a starting daemon migrating for minutes.
        conn.execute(CreateIndex(index, if_not_exists=True))
    billing_metadata.create_all(conn, checkfirst=True)


# -- schema 6: each quarter-hour's best run of MEASURED_CAPACITY_MINUTES served minutes (the measured
# capacity of a window older than the minutes kept) ------------------------------------------------


def _migration_served_peaks(conn: Connection) -> None:
    """Schema 6: `served_peak_tokens` on the quarter-hour tier, filled from the minute rows still kept
    (a day at a time); quarter-hours whose minutes are gone keep NULL (no measured peak)."""
    present = set(conn.exec_driver_sql("SELECT * FROM deployment_quarter_hours LIMIT 0").keys())
    if "served_peak_tokens" not in present:
        column_type = deployment_quarter_hours.c.served_peak_tokens.type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(
            f"ALTER TABLE deployment_quarter_hours ADD COLUMN served_peak_tokens {column_type}"
        )
    dm = deployment_minutes
    first, last = conn.execute(select(func.min(dm.c.minute_ts), func.max(dm.c.minute_ts))).one()
    if first is None or last is None:
        return
    day = _floor(int(first), DAY_S)
    while day <= int(last):
        _refresh_peaks(conn, day, day + DAY_S)
        day += DAY_S


# -- schema 7: idle-loaded seconds on the GPU-hour tier ---------------------------------------------

_IDLE_LOADED_COLUMNS = ("activity_known_s", "idle_loaded_s", "working_minutes")


def _migration_idle_loaded_hours(conn: Connection) -> None:
    """Schema 7: the GPU-hour tier's idle-loaded columns, filled from the minute rows still kept (a
    day at a time); hours whose minutes are gone keep NULL (unknown to idle-loaded, as before)."""
    present = set(conn.exec_driver_sql("SELECT * FROM gpu_hours LIMIT 0").keys())
    for name in _IDLE_LOADED_COLUMNS:
        if name not in present:
            column_type = gpu_hours.c[name].type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE gpu_hours ADD COLUMN {name} {column_type}")
    g, gh = gpu_minutes, gpu_hours
    first, last = conn.execute(select(func.min(g.c.minute_ts), func.max(g.c.minute_ts))).one()
    if first is None or last is None:
        return
    statement = (
        update(gh)
        .where(
            gh.c.hour_ts == bindparam("h"),
            gh.c.gpu_uuid == bindparam("u"),
            gh.c.deployment.is_not_distinct_from(bindparam("d")),
        )
        .values(activity_known_s=bindparam("k"), idle_loaded_s=bindparam("i"), working_minutes=bindparam("w"))
    )
    hour = g.c.minute_ts - g.c.minute_ts % HOUR_S
    day = _floor(int(first), DAY_S)
    while day <= int(last):
        query = (
            select(hour, g.c.gpu_uuid, g.c.deployment, *_idle_loaded_hour_sums())
            .select_from(_with_server(g))
            .where(g.c.minute_ts >= day, g.c.minute_ts < day + DAY_S)
            .group_by(hour, g.c.gpu_uuid, g.c.deployment)
        )
        rows = [{"h": h, "u": u, "d": d, "k": k, "i": i, "w": w} for h, u, d, k, i, w in conn.execute(query)]
        if rows:
            conn.execute(statement, rows)
        day += DAY_S


MIGRATION_LOCK_KEY = zlib.crc32(b"gpu-auditor:migrate")
"""The PostgreSQL advisory lock held while migrating (named as `Store.try_lock` names its locks)."""


def _schema_version(conn: Connection) -> int:
    if not conn.dialect.has_table(conn, "schema_version"):
        return 0
    version = conn.execute(select(func.max(schema_version.c.version))).scalar()
    return int(version or 0)


# -- schema 8: cost-line keys that tell provider, region and currency apart ---------------------------

_REKEY_PAGE_ROWS = 10_000


def _key_before_schema_8(line: CostLine) -> str:
    """`cost_line_key` as it was before schema 8, without provider, region and currency: two FOCUS lines
    that differed only there shared a key, and the second one's import failed."""
    parts = (
        line.account,
        line.sub_account or "",
        line.day.isoformat(),
        "" if line.charge_period_start_ts is None else str(line.charge_period_start_ts),
        "" if line.charge_period_end_ts is None else str(line.charge_period_end_ts),
        line.resource,
        line.usage_type,
        line.sku_id or "",
        line.charge_category or "",
        line.pricing_category or "",
        line.commitment_discount_id or "",
        line.deployment or "",
        line.basis.value,
    )
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()


def _migration_cost_line_places(conn: Connection) -> None:
    """Schema 8: the lines keyed by `cost_line_key` get its new key, which also hashes provider, region
    and currency, so a re-import after the upgrade finds its lines unchanged. Lines their source keys
    itself (the billing APIs' keys, an old duplicate told apart by its id) keep theirs."""
    rekey = update(cost_lines).where(cost_lines.c.id == bindparam("row_id")).values(line_key=bindparam("key"))
    last_id = -1
    while True:
        page = select(cost_lines).where(cost_lines.c.id > last_id).order_by(cost_lines.c.id)
        rows = conn.execute(page.limit(_REKEY_PAGE_ROWS)).all()
        if not rows:
            return
        last_id = int(rows[-1].id)
        changes = []
        for row, line in zip(rows, _records(CostLine, rows), strict=True):
            line = _with_enums(line)
            if line.line_key == _key_before_schema_8(line):
                changes.append({"row_id": row.id, "key": cost_line_key(line)})
        if changes:
            conn.execute(rekey, changes)


# Forward migrations, in order: MIGRATIONS[n - 1] takes the schema from version n - 1 to n.
MIGRATIONS = (
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
    _migration_cost_lines_focus,
    _migration_served_peaks,
    _migration_idle_loaded_hours,
    _migration_cost_line_places,
)
SCHEMA_VERSION = len(MIGRATIONS)


def _configure_sqlite(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers (`auditor status`, the report) never block the daemon's writes, nor it them.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def _configure_sqlite_read_only(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def create_store_engine(url: str, *, read_only: bool = False) -> Engine:
    """An engine for a supported URL; for SQLite, the file's directory is created if missing.

    read_only: look, never create: a SQLite file that does not exist is a StoreError, and it is
    opened with `mode=ro`; PostgreSQL sessions are read-only transactions."""
    try:
        parsed = parse_store_url(url)
    except ValueError as exc:
        raise StoreError(f"store URL {shown_url(url)}: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if read_only and database != ":memory:" and not database.startswith("file:"):
            if not Path(database).is_file():
                raise StoreError(
                    f"no store at {database}: the daemon creates it when it first runs; "
                    "check store.url, or start `auditor daemon`"
                )
            engine = create_engine(
                f"sqlite:///file:{database}?mode=ro&uri=true",
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            )
            event.listen(engine, "connect", _configure_sqlite_read_only)
            return engine
        if database != ":memory:" and not database.startswith("file:"):
            directory = Path(database).parent
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the store's directory {directory}: {exc.strerror}; "
                    "set store.url to a writable place"
                ) from None
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    try:
        if read_only:
            return create_engine(
                parsed,
                pool_pre_ping=True,
                connect_args={
                    "options": "-c default_transaction_read_only=on",
                    "connect_timeout": POSTGRES_CONNECT_TIMEOUT_S,
                },
            )
        return create_engine(
            parsed, pool_pre_ping=True, connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}
        )
    except ModuleNotFoundError as exc:
        raise StoreError(
            f"a PostgreSQL store needs the driver psycopg, which is not installed ({exc.name}): "
            "install gpu-auditor with its `postgres` extra (pip install 'gpu-auditor[postgres]')"
        ) from None


def shown_url(url: str) -> str:
    """The URL as it may be printed: any password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(not a URL)"


@dataclass(frozen=True, slots=True)
class _RecordShape:
    """A record class's field names, and one getter that reads them all into a tuple."""

    names: tuple[str, ...]
    values: attrgetter[Any]


_SHAPES: dict[type, _RecordShape] = {}


def _shape(cls: type) -> _RecordShape:
    shape = _SHAPES.get(cls)
    if shape is None:
        names = tuple(f.name for f in fields(cls))
        shape = _SHAPES[cls] = _RecordShape(names, attrgetter(*names))
    return shape


def _record_values(record: object) -> dict[str, Any]:
    """A record's fields as a plain dict (no deep copy: every field is a scalar); enums become their
    text, as they are stored."""
    shape = _shape(type(record))
    values = dict(zip(shape.names, shape.values(record), strict=True))
    for key, value in values.items():
        if isinstance(value, Enum):
            values[key] = value.value
    return values


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RecordRows(Generic[T]):
    """Records of `cls` as plain tuples in its fields' order: a bulk roll-up's rows (fleet mode
    writes a chunk's 100k+ GPU minutes), without a dataclass object per row."""

    cls: type[T]
    tuples: Iterable[tuple[Any, ...]]
    """Read once (a generator may make them a batch at a time: then `count` is required)."""
    count: int | None = None

    def __len__(self) -> int:
        if self.count is not None:
            return self.count
        if not isinstance(self.tuples, Sized):
            raise TypeError("RecordRows made by a generator needs its count")
        return len(self.tuples)


COPY_MIN_ROWS = 1000
"""From this many rows, PostgreSQL is sent a COPY instead of an executemany (several times faster)."""


INSERT_BATCH = 10_000

_COPY_TYPES = {BigInteger: "int8", Integer: "int4", Double: "float8", String: "text"}


def _copy_rows(conn: Connection, table: Table, names: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> None:
    """COPY rows (plain scalars, None for NULL) into a PostgreSQL table in its binary format (the
    server parses no text, the client formats in C), in the caller's transaction."""
    types = [_COPY_TYPES[type(table.c[name].type)] for name in names]
    driver: Any = conn.connection.driver_connection  # psycopg's Connection
    statement = f"COPY {table.name} ({', '.join(names)}) FROM STDIN (FORMAT BINARY)"
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


def _insert_tuples(
    conn: Connection,
    table: Table,
    names: Sequence[str],
    tuples: Iterable[tuple[Any, ...]],
    count: int,
    *,
    copy: bool = True,
) -> None:
    """Insert `count` rows given as tuples of plain scalars in `names`' order: `executemany` in
    batches, or a COPY on PostgreSQL for a bulk write (`copy`: the columns are of `_COPY_TYPES`), in
    the caller's transaction."""
    if not count:
        return
    if copy and conn.dialect.name == "postgresql" and count >= COPY_MIN_ROWS:
        _copy_rows(conn, table, names, tuples)
        return
    names = tuple(names)
    sql, order = _insert_statement(conn.dialect, table, names)
    rows = iter(tuples)
    while batch := list(islice(rows, INSERT_BATCH)):
        if order is None:
            conn.exec_driver_sql(sql, [dict(zip(names, t, strict=True)) for t in batch])
        elif order == names:
            conn.exec_driver_sql(sql, batch)
        else:
            where = [names.index(name) for name in order]
            conn.exec_driver_sql(sql, [tuple(t[i] for i in where) for t in batch])


_INSERTS: dict[tuple[str, str, str, tuple[str, ...]], tuple[str, tuple[str, ...] | None]] = {}


def _insert_statement(
    dialect: Dialect, table: Table, names: tuple[str, ...]
) -> tuple[str, tuple[str, ...] | None]:
    """The INSERT of `names` into `table` for `dialect`, and the order its positional parameters take
    (None: it binds by name); compiled once a process (a replay or a roll-up writes a few tables
    many times, and compiling costs about as much as a small chunk's rows)."""
    key = (dialect.name, str(dialect.paramstyle), table.fullname, names)
    known = _INSERTS.get(key)
    if known is None:
        compiled = insert(table).compile(dialect=dialect, column_keys=list(names))
        order = getattr(compiled, "positiontup", None)
        known = _INSERTS[key] = (
            str(compiled),
            tuple(order) if compiled.positional and order is not None else None,
        )
    return known


def _insert_records(conn: Connection, table: Table, records: Sequence[object] | RecordRows[Any]) -> None:
    """Insert records whose fields are the table's columns, all plain scalars (samples, roll-ups):
    one statement, rows built straight from the fields as tuples (dicts for a driver that binds by
    name), handed to the driver's `executemany` in the caller's transaction (a COPY on PostgreSQL
    for a bulk write).

    SQLAlchemy's own executemany processes every row's parameters in Python, which was most of the
    time of a write; these tables have no column type that needs it."""
    if not records:
        return
    if isinstance(records, RecordRows):
        _insert_tuples(conn, table, _shape(records.cls).names, records.tuples, len(records))
        return
    shape = _shape(type(records[0]))
    compiled = insert(table).compile(dialect=conn.dialect, column_keys=list(shape.names))
    order = getattr(compiled, "positiontup", None)
    rows: list[Any]
    if not compiled.positional or order is None:
        rows = [dict(zip(shape.names, shape.values(r), strict=True)) for r in records]
    elif tuple(order) == shape.names:
        rows = [shape.values(r) for r in records]
    else:
        picked = attrgetter(*order)
        rows = [picked(r) for r in records]
    conn.exec_driver_sql(str(compiled), rows)


R = TypeVar("R")


def _records(cls: type[R], rows: Iterable[Any]) -> list[R]:
    names = _shape(cls).names
    return [cls(**{name: getattr(row, name) for name in names}) for row in rows]


class Store:
    """All reads and writes of the auditor's tables."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pass = threading.local()
        """The current thread's one pass (`one_pass`): the daemon's jobs and exporter run in threads."""

    @property
    def _tier_cache(self) -> _TierCache | None:
        cache: _TierCache | None = getattr(self._pass, "cache", None)
        return cache

    @_tier_cache.setter
    def _tier_cache(self, cache: _TierCache | None) -> None:
        self._pass.cache = cache

    @contextmanager
    def one_pass(self) -> Iterator[Store]:
        """Within it, the windows costed (the report's month, the rules' 7- and 21-day windows, runaway
        spend's baseline) share one read of the quarter-hour tier: each tier row is read once, and
        only the windows' ragged ends are read from the minute rows. Writes through this store drop
        what was read; nested uses share the outer one."""
        if self._tier_cache is not None:
            yield self
            return
        self._tier_cache = _TierCache()
        try:
            yield self
        finally:
            self._tier_cache = None

    def _written(self) -> None:
        if self._tier_cache is not None:
            self._tier_cache = _TierCache()

    @classmethod
    def open(cls, url: str, *, migrate: bool = True, read_only: bool = False) -> Store:
        """read_only: open an existing store to look at it; nothing is created or migrated."""
        store = cls(create_store_engine(url, read_only=read_only))
        if migrate and not read_only:
            store.migrate()
        return store

    def close(self) -> None:
        self.engine.dispose()

    # -- schema ---------------------------------------------------------------------------------

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return _schema_version(conn)

    def migrate(self) -> int:
        """Bring the schema to SCHEMA_VERSION, each step in its own transaction; returns the version."""
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"the store's schema is version {current}, newer than this program's {SCHEMA_VERSION}: "
                "upgrade gpu-auditor"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    # Replicas (or a command and the daemon) starting together on one database: one
                    # migrates, the others wait for its transaction, then find the step done.
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                    if _schema_version(conn) >= version:
                        continue
                MIGRATIONS[version - 1](conn)
                conn.execute(insert(schema_version).values(version=version, applied_ts=time.time()))
        return SCHEMA_VERSION

    # -- raw samples ----------------------------------------------------------------------------

    def add_gpu_samples(self, samples: Sequence[GpuSample]) -> None:
        if samples:
            with self.engine.begin() as conn:
                _insert_records(conn, gpu_samples, samples)

    def add_server_samples(self, samples: Sequence[ServerSample]) -> None:
        if samples:
            with self.engine.begin() as conn:
                _insert_records(conn, server_samples, samples)

    def gpu_samples(self, start_ts: float, end_ts: float) -> list[GpuSample]:
        """Samples with start_ts <= ts < end_ts, ordered by GPU then time."""
        query = (
            select(gpu_samples)
            .where(gpu_samples.c.ts >= start_ts, gpu_samples.c.ts < end_ts)
            .order_by(gpu_samples.c.gpu_uuid, gpu_samples.c.ts)
        )
        with self.engine.connect() as conn:
            return _records(GpuSample, conn.execute(query))

    def last_gpu_samples_before(self, ts: float) -> list[GpuSample]:
        """Each GPU's last sample before ts: the left end of its first interval in a roll-up window."""
        ranked = select(
            gpu_samples,
            func.row_number()
            .over(partition_by=gpu_samples.c.gpu_uuid, order_by=gpu_samples.c.ts.desc())
            .label("rank"),
        ).where(gpu_samples.c.ts < ts)
        sub = ranked.subquery()
        query = select(*[sub.c[c.name] for c in gpu_samples.columns]).where(sub.c.rank == 1)
        with self.engine.connect() as conn:
            return _records(GpuSample, conn.execute(query))

    def server_samples(self, start_ts: float, end_ts: float) -> list[ServerSample]:
        """Samples with start_ts <= ts < end_ts, ordered by deployment, instance, then time."""
        query = (
            select(server_samples)
            .where(server_samples.c.ts >= start_ts, server_samples.c.ts < end_ts)
            .order_by(server_samples.c.deployment, server_samples.c.instance, server_samples.c.ts)
        )
        with self.engine.connect() as conn:
            return _records(ServerSample, conn.execute(query))

    def last_server_samples_before(self, ts: float) -> list[ServerSample]:
        ranked = select(
            server_samples,
            func.row_number()
            .over(
                partition_by=(server_samples.c.deployment, server_samples.c.instance),
                order_by=server_samples.c.ts.desc(),
            )
            .label("rank"),
        ).where(server_samples.c.ts < ts)
        sub = ranked.subquery()
        query = select(*[sub.c[c.name] for c in server_samples.columns]).where(sub.c.rank == 1)
        with self.engine.connect() as conn:
            return _records(ServerSample, conn.execute(query))

    # -- roll-ups -------------------------------------------------------------------------------

    def replace_minutes(
        self,
        start_minute_ts: int,
        end_minute_ts: int,
        gpu_rows: Sequence[GpuMinute] | RecordRows[GpuMinute],
        deployment_rows: Sequence[DeploymentMinute] | RecordRows[DeploymentMinute],
    ) -> None:
        """Replace every roll-up row in [start, end) at once, so that re-running a roll-up changes nothing."""
        self._written()
        with self.engine.begin() as conn:
            for table, rows in ((gpu_minutes, gpu_rows), (deployment_minutes, deployment_rows)):
                conn.execute(
                    delete(table).where(
                        table.c.minute_ts >= start_minute_ts, table.c.minute_ts < end_minute_ts
                    )
                )
                _insert_records(conn, table, rows)
            _refresh_tiers(conn, start_minute_ts, end_minute_ts)

    def replace_tiers(
        self,
        start_minute_ts: int,
        end_minute_ts: int,
        gpu_rows: RecordRows[GpuMinute],
        deployment_rows: RecordRows[DeploymentMinute],
        quarter_hour_rows: Sequence[tuple[Any, ...]],
        gpu_hour_rows: Sequence[tuple[Any, ...]],
    ) -> None:
        """Replace every roll-up row in [start, end) (the tiers of every quarter-hour and hour it
        touches) with tier rows the caller summed itself, as tuples in their tables' column order,
        and the minute rows it keeps, which may be none or some of the span's (a simulation:
        `collectors.replay_tiers`). The tiers are not summed again from the minutes."""
        self._written()
        first_q, after_q = _floor(start_minute_ts, BUCKET_S), _ceil(end_minute_ts, BUCKET_S)
        first_h, after_h = _floor(start_minute_ts, HOUR_S), _ceil(end_minute_ts, HOUR_S)
        with self.engine.begin() as conn:
            for table, column, start, end in (
                (gpu_minutes, gpu_minutes.c.minute_ts, start_minute_ts, end_minute_ts),
                (deployment_minutes, deployment_minutes.c.minute_ts, start_minute_ts, end_minute_ts),
                (deployment_quarter_hours, deployment_quarter_hours.c.bucket_ts, first_q, after_q),
                (gpu_hours, gpu_hours.c.hour_ts, first_h, after_h),
            ):
                conn.execute(delete(table).where(column >= start, column < end))
            _insert_records(conn, gpu_minutes, gpu_rows)
            _insert_records(conn, deployment_minutes, deployment_rows)
            for table, rows in ((deployment_quarter_hours, quarter_hour_rows), (gpu_hours, gpu_hour_rows)):
                _insert_tuples(conn, table, [c.name for c in table.columns], rows, len(rows))

    def drop_gpu_minutes(self, start_ts: float, end_ts: float) -> int:
        """Delete the GPU-minute rows of the whole hours in [start, end), whose tier rows are written
        (what `prune` does past the minute window, done as a fleet backfill goes, so that a month's
        backfill never holds a month of GPU minutes); returns the rows deleted. Deployment minutes
        stay (a handful per minute; the quarter-hours' served peaks read them across chunk edges)."""
        first, after = _ceil(start_ts, HOUR_S), _floor(end_ts, HOUR_S)
        if first >= after:
            return 0
        self._written()
        g = gpu_minutes
        with self.engine.begin() as conn:
            result = conn.execute(delete(g).where(g.c.minute_ts >= first, g.c.minute_ts < after))
            return int(result.rowcount)

    @contextmanager
    def try_lock(self, name: str) -> Iterator[bool]:
        """Hold an exclusive lock named `name` across every process sharing this store, without
        waiting: True when this process holds it. PostgreSQL: a session advisory lock (several fleet
        replicas, one writer at a time); SQLite: always True (one host writes its file, and SQLite
        serialises writers itself)."""
        if self.engine.dialect.name != "postgresql":
            yield True
            return
        key = zlib.crc32(f"gpu-auditor:{name}".encode())
        with self.engine.connect() as conn:
            held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar())
            conn.commit()
            try:
                yield held
            finally:
                if held:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    conn.commit()

    def rebuild_tiers(self, start_ts: float, end_ts: float) -> None:
        """Recompute the roll-up tiers over [start, end) from the minute rows (after minutes were
        written by other means than `replace_minutes`: an import, a bulk load)."""
        self._written()
        with self.engine.begin() as conn:
            _rebuild_tiers(conn, start_ts, end_ts)

    def gpu_minutes(self, start_ts: float, end_ts: float, deployment: str | None = None) -> list[GpuMinute]:
        query = select(gpu_minutes).where(
            gpu_minutes.c.minute_ts >= start_ts, gpu_minutes.c.minute_ts < end_ts
        )
        if deployment is not None:
            query = query.where(gpu_minutes.c.deployment == deployment)
        query = query.order_by(gpu_minutes.c.minute_ts, gpu_minutes.c.gpu_uuid)
        with self.engine.connect() as conn:
            return _records(GpuMinute, conn.execute(query))

    def deployment_minutes(
        self, start_ts: float, end_ts: float, deployment: str | None = None
    ) -> list[DeploymentMinute]:
        query = select(deployment_minutes).where(
            deployment_minutes.c.minute_ts >= start_ts, deployment_minutes.c.minute_ts < end_ts
        )
        if deployment is not None:
            query = query.where(deployment_minutes.c.deployment == deployment)
        query = query.order_by(deployment_minutes.c.minute_ts, deployment_minutes.c.deployment)
        with self.engine.connect() as conn:
            return _records(DeploymentMinute, conn.execute(query))

    def last_minute_ts(self) -> int | None:
        """The newest rolled-up minute, or None before the first roll-up."""
        with self.engine.connect() as conn:
            value = conn.execute(select(func.max(gpu_minutes.c.minute_ts))).scalar()
            other = conn.execute(select(func.max(deployment_minutes.c.minute_ts))).scalar()
        known = [int(v) for v in (value, other) if v is not None]
        return max(known) if known else None

    def window_buckets(
        self, start_ts: float, end_ts: float, names: Sequence[str]
    ) -> dict[str, dict[int, Bucket]]:
        """Per deployment, per quarter-hour (its start, epoch s): sums of its minutes in [start, end).

        Whole quarter-hours come from the tier (`deployment_quarter_hours`), the ragged ends from the
        minute rows: the same figures as summing the minutes, at a cost that does not grow with the
        number of GPUs, and still there after the minutes are pruned."""
        return _window_buckets(self.engine, start_ts, end_ts, names, self._tier_cache)

    def served_peak_tokens(self, start_ts: float, end_ts: float, deployment: str) -> int | None:
        """The most tokens the deployment served in MEASURED_CAPACITY_MINUTES consecutive observed
        minutes inside [start, end) (its measured capacity), or None: from the tier's per-quarter-hour
        peaks, and the minute rows at the window's ends."""
        return _served_peak_tokens(self.engine, start_ts, end_ts, deployment, self._tier_cache)

    def activity_bounds(self, names: Sequence[str]) -> dict[str, tuple[int, int]]:
        """Per deployment with data: (its first observed minute, the end of its last), epoch seconds.

        Over every roll-up kept, GPUs' and servers': the default active period of a rated deployment.
        The quarter-hour tier gives the first and last quarter-hours (back past the minutes' retention);
        the minute rows of just those two quarter-hours, where still kept, give the minute itself: a few
        index lookups, never a scan of a fleet's minutes. Read once per `one_pass`."""
        cache = self._tier_cache
        if cache is not None and all(name in cache.bounds for name in names):
            return {name: known for name in names if (known := cache.bounds[name]) is not None}
        bounds: dict[str, tuple[int, int]] = {}
        if not names:
            return bounds
        dq = deployment_quarter_hours
        tier = (
            select(dq.c.deployment, func.min(dq.c.bucket_ts), func.max(dq.c.bucket_ts))
            .where(dq.c.deployment.in_(names), (dq.c.gpu_observed_s > 0) | (dq.c.server_observed_s > 0))
            .group_by(dq.c.deployment)
        )
        with self.engine.connect() as conn:
            coarse = {name: (int(first), int(last)) for name, first, last in conn.execute(tier)}
            for name in names:
                if name in coarse:
                    first_q, last_q = coarse[name]
                    first = _observed_minute(conn, name, first_q, first_q + BUCKET_S, last=False)
                    last = _observed_minute(conn, name, last_q, last_q + BUCKET_S, last=True)
                    bounds[name] = (
                        first_q if first is None else first,
                        last_q + BUCKET_S if last is None else last + MINUTE_S,
                    )
                else:  # minutes without a tier row (written before the tiers existed)
                    first = _observed_minute(conn, name, None, None, last=False)
                    last = _observed_minute(conn, name, None, None, last=True)
                    if first is not None and last is not None:
                        bounds[name] = (first, last + MINUTE_S)
        if cache is not None:
            cache.bounds.update({name: bounds.get(name) for name in names})
        return bounds

    # -- cost lines -----------------------------------------------------------------------------

    def replace_cost_lines(
        self,
        source: str,
        account: str | None,
        start_day: date,
        end_day: date,
        lines: Sequence[CostLine],
    ) -> CostLineChange:
        """Replace one source's lines for days in [start_day, end_day) (of one account, or all of them
        with None), in one transaction: a re-read of a restated bill replaces what it restates, and
        syncing the same window twice changes nothing (lines are matched by their stable key)."""
        for line in lines:
            if (
                line.source != source
                or (account is not None and line.account != account)
                or not start_day <= line.day < end_day
            ):
                raise ValueError(f"cost line {line} is outside the window it replaces")
        where = [cost_lines.c.source == source, cost_lines.c.day >= start_day, cost_lines.c.day < end_day]
        if account is not None:
            where.append(cost_lines.c.account == account)
        with self.engine.begin() as conn:
            return _replace_lines(conn, source, and_(*where), lines)

    def replace_billing_periods(
        self, source: str, periods: Mapping[int, Sequence[CostLine]]
    ) -> CostLineChange:
        """Replace one source's lines of whole billing periods (keyed by `BillingPeriodStart`, UTC epoch
        seconds), all in one transaction: a re-delivered month replaces the old one, a re-import of the
        same file changes nothing, and a file that fails to read changes nothing at all."""
        change = CostLineChange()
        with self.engine.begin() as conn:
            for period_ts, lines in sorted(periods.items()):
                for line in lines:
                    if line.source != source or line.billing_period_start_ts != period_ts:
                        raise ValueError(f"cost line {line} is outside the billing period it replaces")
                where = and_(cost_lines.c.source == source, cost_lines.c.billing_period_start_ts == period_ts)
                change += _replace_lines(conn, source, where, lines)
        return change

    def cost_lines(
        self,
        start_day: date,
        end_day: date,
        deployment: str | None = None,
        *,
        source: str | None = None,
    ) -> list[CostLine]:
        """Lines for days in [start_day, end_day), as stored (`CostLine.costed` picks the cost metric)."""
        query = select(*_LINE_COLUMNS).where(cost_lines.c.day >= start_day, cost_lines.c.day < end_day)
        if deployment is not None:
            query = query.where(cost_lines.c.deployment == deployment)
        if source is not None:
            query = query.where(cost_lines.c.source == source)
        query = query.order_by(cost_lines.c.day, cost_lines.c.id)
        with self.engine.connect() as conn:
            return [_stored_line(row) for row in conn.execute(query)]

    def cost_line_coverage(self) -> list[CostLineCoverage]:
        """Per source: the days its lines cover, how many lines, and the days still estimated."""
        c = cost_lines.c
        query = (
            select(c.source, func.min(c.day), func.max(c.day), func.count(), func.count(func.distinct(c.day)))
            .group_by(c.source)
            .order_by(c.source)
        )
        estimated = (
            select(c.source, func.count(func.distinct(c.day))).where(c.estimated.is_(True)).group_by(c.source)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
            still = {str(name): int(n) for name, n in conn.execute(estimated)}
        return [
            CostLineCoverage(
                source=str(name),
                first_day=_as_date(first),
                last_day=_as_date(last),
                lines=int(count),
                days=int(days),
                estimated_days=still.get(str(name), 0),
            )
            for name, first, last, count, days in rows
        ]

    def record_billing_sync(self, sync: BillingSync) -> None:
        """Remember a sync or an import (`billing status` shows the last of each source)."""
        values = _record_values(sync)
        if values["id"] is None:
            del values["id"]
        with self.engine.begin() as conn:
            conn.execute(insert(billing_syncs).values(**values))

    def billing_syncs(self, source: str | None = None) -> list[BillingSync]:
        """Syncs and imports, oldest first (of one source, or of all)."""
        query = select(billing_syncs).order_by(billing_syncs.c.synced_ts, billing_syncs.c.id)
        if source is not None:
            query = query.where(billing_syncs.c.source == source)
        with self.engine.connect() as conn:
            return _records(BillingSync, conn.execute(query))

    # -- alerts ---------------------------------------------------------------------------------

    def alerts(self) -> list[Alert]:
        with self.engine.connect() as conn:
            rows = _records(Alert, conn.execute(select(alerts).order_by(alerts.c.rule, alerts.c.subject)))
        return [
            Alert(**{**_record_values(a), "state": AlertState(a.state)})  # stored as text
            for a in rows
        ]

    def put_alert(self, alert: Alert) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(alerts).where(alerts.c.rule == alert.rule, alerts.c.subject == alert.subject))
            conn.execute(insert(alerts).values(**_record_values(alert)))

    # -- retention ------------------------------------------------------------------------------

    def minute_retention_s(self, now_ts: float, days: int | None, max_rows: int) -> float:
        """How long to keep minute roll-ups: `days` when configured, else `MINUTE_RETENTION_DAYS` cut to
        what keeps the GPU minutes under `max_rows` for the GPUs the hour tier saw in the last day
        (never under `MIN_MINUTE_RETENTION_DAYS`): a 1,024-GPU fleet's 14 days of minutes are 5+ GB."""
        if days is not None:
            return float(days * DAY_S)
        gh = gpu_hours
        with self.engine.connect() as conn:
            gpus = conn.execute(
                select(func.count(func.distinct(gh.c.gpu_uuid))).where(gh.c.hour_ts >= now_ts - DAY_S)
            ).scalar()
        return fleet_minute_window_s(int(gpus or 0), max_rows)

    def prune(
        self,
        now_ts: float,
        raw_retention_s: float,
        rollup_retention_s: float,
        minute_retention_s: float = MINUTE_RETENTION_DAYS * DAY_S,
    ) -> dict[str, int]:
        """Delete what is past its retention: raw samples, minute roll-ups (whole UTC hours, so that an
        hour is in the minute tier whole or not at all), and the tiers; returns rows deleted per table."""
        minute_cut_ts = _floor(now_ts - min(minute_retention_s, rollup_retention_s), HOUR_S)
        deleted: dict[str, int] = {}
        self._written()
        with self.engine.begin() as conn:
            for table, column, cut_ts in (
                (gpu_samples, gpu_samples.c.ts, now_ts - raw_retention_s),
                (server_samples, server_samples.c.ts, now_ts - raw_retention_s),
                (gpu_minutes, gpu_minutes.c.minute_ts, minute_cut_ts),
                (deployment_minutes, deployment_minutes.c.minute_ts, minute_cut_ts),
                (gpu_hours, gpu_hours.c.hour_ts, now_ts - rollup_retention_s),
                (deployment_quarter_hours, deployment_quarter_hours.c.bucket_ts, now_ts - rollup_retention_s),
            ):
                result = conn.execute(delete(table).where(column < cut_ts))
                deleted[table.name] = result.rowcount
        return deleted

    # -- alert lifecycle and outbox (issue 4) ---------------------------------------------------

    def save_alert_changes(self, changed: Sequence[Alert], messages: Sequence[OutboxMessage]) -> None:
        """Write alerts' new states and queue their messages in one transaction: a crash between
        the two can neither lose a notification nor leave one queued for a state never recorded."""
        with self.engine.begin() as conn:
            for alert in changed:
                conn.execute(
                    delete(alerts).where(alerts.c.rule == alert.rule, alerts.c.subject == alert.subject)
                )
                conn.execute(insert(alerts).values(**_record_values(alert)))
            for message in messages:
                conn.execute(insert(outbox).values(**_outbox_values(message)))

    def enqueue(self, message: OutboxMessage) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(insert(outbox).values(**_outbox_values(message)))
            key = result.inserted_primary_key
            return int(key[0]) if key else 0

    def outbox_pending(self, now_ts: float, limit: int = 100) -> list[OutboxMessage]:
        """Unsent messages due by now_ts, oldest first."""
        query = (
            select(outbox)
            .where(outbox.c.sent_ts.is_(None), outbox.c.next_attempt_ts <= now_ts)
            .order_by(outbox.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return _records(OutboxMessage, conn.execute(query))

    def outbox_messages(self, key: str | None = None) -> list[OutboxMessage]:
        """Every message (sent or not), oldest first; only those of `key` when given."""
        query = select(outbox).order_by(outbox.c.id)
        if key is not None:
            query = query.where(outbox.c.key == key)
        with self.engine.connect() as conn:
            return _records(OutboxMessage, conn.execute(query))

    def outbox_mark_sent(self, message_id: int, sent_ts: float, sent_ref: str | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(outbox)
                .where(outbox.c.id == message_id)
                .values(sent_ts=sent_ts, sent_ref=sent_ref, attachment=None, last_error=None)
            )

    def outbox_mark_failed(
        self, message_id: int, error: str, next_attempt_ts: float, posted_ref: str | None
    ) -> None:
        """Count a failed attempt; `posted_ref` keeps a part already delivered from being sent again."""
        with self.engine.begin() as conn:
            conn.execute(
                update(outbox)
                .where(outbox.c.id == message_id)
                .values(
                    attempts=outbox.c.attempts + 1,
                    last_error=error[:2000],
                    next_attempt_ts=next_attempt_ts,
                    posted_ref=posted_ref,
                )
            )

    def prune_outbox(self, before_ts: float) -> int:
        """Delete messages sent before before_ts; unsent ones are never deleted."""
        with self.engine.begin() as conn:
            result = conn.execute(delete(outbox).where(outbox.c.sent_ts < before_ts))
            return result.rowcount

    def gpu_minute_counts(
        self, start_ts: float, end_ts: float, names: Sequence[str]
    ) -> dict[str, tuple[int, int]]:
        """Per deployment: (minutes with at least one GPU observed, GPU-minutes observed) in [start, end):
        the GPUs a deployment usually runs, from the tier (and the minutes at the window's ends)."""
        return _gpu_minute_counts(self.engine, start_ts, end_ts, names, self._tier_cache)

    def idle_loaded_spans(
        self,
        spans: Sequence[tuple[float, float]],
        below: float,
        min_mem_used_bytes: int,
        uuids: Sequence[str] | None = None,
    ) -> dict[str, list[IdleSpan]]:
        """Per GPU with a minute row in the spans (those in `uuids` when given): its idle-loaded sums in
        each span, summed in SQL (a fleet's GPU-minutes are never loaded as records)."""
        if not spans or (uuids is not None and not uuids):
            return {}
        found: dict[str, list[IdleSpan]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(_idle_span_query(spans, below, min_mem_used_bytes, uuids)):
                found[row[0]] = [
                    IdleSpan(
                        known_s=float(row[i] or 0.0),
                        idle_s=float(row[i + 1] or 0.0),
                        activity_weighted=float(row[i + 2] or 0.0),
                        working_minutes=int(row[i + 3] or 0),
                        mem_used_max_bytes=int(row[i + 4] or 0),
                    )
                    for i in range(1, 1 + 5 * len(spans), 5)
                ]
        return found

    def idle_loaded_history(
        self,
        spans: Sequence[tuple[float, float]],
        below: float,
        min_mem_used_bytes: int,
        uuids: Sequence[str],
    ) -> dict[str, list[IdleHours]]:
        """Per GPU of `uuids` with a minute row or a GPU-hour row in the spans: its idle-loaded sums in
        each span. The minute rows answer the part of a span from the oldest minute kept on, exactly as
        `idle_loaded_spans`; the GPU-hour tier answers the whole hours of it before that (a fleet keeps
        ~2 days of minutes, the rule looks a week back). A span's part before the minutes that starts
        inside an hour loses that hour's first minutes; with a `below` or `min_mem_used_bytes` other
        than the tier's (the rule's defaults), only the minutes answer."""
        if not spans or not uuids:
            return {}
        kept_from = self.oldest_minute_ts()
        minute_spans = [(a if kept_from is None else max(a, kept_from), b) for a, b in spans]
        found: dict[str, list[IdleHours]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(_idle_span_query(minute_spans, below, min_mem_used_bytes, uuids)):
                found[row[0]] = [
                    IdleHours(float(row[i] or 0.0), float(row[i + 1] or 0.0), int(row[i + 3] or 0))
                    for i in range(1, 1 + 5 * len(spans), 5)
                ]
            hour_spans = [
                (_ceil(a, HOUR_S), _floor(b if kept_from is None else min(b, kept_from), HOUR_S))
                for a, b in spans
            ]
            tier_answers = (below, min_mem_used_bytes) == (
                TIER_IDLE_LOADED_BELOW,
                TIER_IDLE_LOADED_MIN_MEM_BYTES,
            )
            if tier_answers and any(a < b for a, b in hour_spans):
                for row in conn.execute(_idle_hour_query(hour_spans, uuids)):
                    hours = [
                        IdleHours(float(row[i] or 0.0), float(row[i + 1] or 0.0), int(row[i + 2] or 0))
                        for i in range(1, 1 + 3 * len(spans), 3)
                    ]
                    before = found.get(row[0])
                    found[row[0]] = (
                        hours if before is None else [a + b for a, b in zip(before, hours, strict=True)]
                    )
        return found

    def oldest_minute_ts(self) -> int | None:
        """The oldest GPU-minute row kept (None when there is none): time before it is answered by the
        tiers alone. GPU minutes are what retention (and a fleet backfill, past the minute window)
        deletes; deployment minutes go with them or stay longer."""
        with self.engine.connect() as conn:
            first = conn.execute(select(func.min(gpu_minutes.c.minute_ts))).scalar()
        return None if first is None else int(first)

    def last_gpu_places(self, start_ts: float, end_ts: float) -> dict[str, GpuWhere]:
        """Per GPU with a minute row in [start, end): its host, index and deployment in its last one."""
        g = gpu_minutes
        last = (
            select(g.c.gpu_uuid, func.max(g.c.minute_ts).label("last_ts"))
            .where(g.c.minute_ts >= start_ts, g.c.minute_ts < end_ts)
            .group_by(g.c.gpu_uuid)
            .subquery("last")
        )
        query = select(g.c.gpu_uuid, g.c.host, g.c.gpu_index, g.c.deployment).join(
            last, and_(g.c.gpu_uuid == last.c.gpu_uuid, g.c.minute_ts == last.c.last_ts)
        )
        with self.engine.connect() as conn:
            return {row[0]: GpuWhere(row[1], int(row[2]), row[3]) for row in conn.execute(query)}

    def gpus_seen(self, start_ts: float, end_ts: float) -> list[tuple[str | None, str]]:
        """(deployment, GPU UUID) of every GPU with a raw sample or a rolled-up minute in [start, end)."""
        raw = (
            select(gpu_samples.c.deployment, gpu_samples.c.gpu_uuid)
            .where(gpu_samples.c.ts >= start_ts, gpu_samples.c.ts < end_ts)
            .distinct()
        )
        rolled = (
            select(gpu_minutes.c.deployment, gpu_minutes.c.gpu_uuid)
            .where(
                gpu_minutes.c.minute_ts >= start_ts,
                gpu_minutes.c.minute_ts < end_ts,
                gpu_minutes.c.observed_s > 0,
            )
            .distinct()
        )
        with self.engine.connect() as conn:
            seen = {(row[0], row[1]) for row in conn.execute(raw)}
            seen |= {(row[0], row[1]) for row in conn.execute(rolled)}
        return sorted(seen, key=lambda pair: (pair[0] or "", pair[1]))


# -- cost reads: roll-ups summed in SQL for the one costing path (`auditor.analysis.cost_window`) -----
#
# A month of minute roll-ups for a fleet is millions of rows: loading each as a Python object is too
# slow and too big. Here the database sums them by deployment and quarter-hour (every time zone's
# offset is a whole number of quarter-hours, so a quarter-hour lies in one local hour and one local
# day), and the costing folds the quarter-hours into days, hours of the week, and the window.

BUCKET_S = 900


@dataclass(slots=True)
class Bucket:
    """Sums over one deployment's minutes in one quarter-hour (or any union of quarter-hours)."""

    gpu_observed_s: float = 0.0
    gpu_idle_s: float = 0.0
    gpu_util_weighted: float = 0.0
    gpu_util_s: float = 0.0
    sm_active_weighted: float = 0.0
    sm_active_s: float = 0.0
    energy_j: float | None = None
    prompt_tokens: int = 0
    generation_tokens: int = 0
    server_observed_s: float = 0.0
    request_busy_weighted: float = 0.0
    request_busy_s: float = 0.0
    served_tokens: int = 0
    """Tokens of the minutes a server was observed in (the numerator of throughput_util)."""
    served_wall_s: float = 0.0
    prefill_s: float | None = None
    """Servers' prefill seconds (vLLM), summed where exposed; None: not measured in these minutes."""
    decode_s: float | None = None

    def add(self, other: Bucket) -> None:
        self.gpu_observed_s += other.gpu_observed_s
        self.gpu_idle_s += other.gpu_idle_s
        self.gpu_util_weighted += other.gpu_util_weighted
        self.gpu_util_s += other.gpu_util_s
        self.sm_active_weighted += other.sm_active_weighted
        self.sm_active_s += other.sm_active_s
        if other.energy_j is not None:
            self.energy_j = (self.energy_j or 0.0) + other.energy_j
        self.prompt_tokens += other.prompt_tokens
        self.generation_tokens += other.generation_tokens
        self.server_observed_s += other.server_observed_s
        self.request_busy_weighted += other.request_busy_weighted
        self.request_busy_s += other.request_busy_s
        self.served_tokens += other.served_tokens
        self.served_wall_s += other.served_wall_s
        if other.prefill_s is not None:
            self.prefill_s = (self.prefill_s or 0.0) + other.prefill_s
        if other.decode_s is not None:
            self.decode_s = (self.decode_s or 0.0) + other.decode_s

    def measures(self, capacity_tokens_per_s: float | None) -> UtilizationMeasures:
        """The four measures over these minutes, as `costing.utilization_measures` defines them."""
        throughput = None
        if capacity_tokens_per_s and self.served_wall_s > 0:
            throughput = self.served_tokens / self.served_wall_s / capacity_tokens_per_s
        return UtilizationMeasures(
            gpu_util=_ratio(self.gpu_util_weighted, self.gpu_util_s),
            sm_active=_ratio(self.sm_active_weighted, self.sm_active_s),
            request_busy=_ratio(self.request_busy_weighted, self.request_busy_s),
            throughput_util=throughput,
        )


def _ratio(total: float, seconds: float) -> float | None:
    return total / seconds if seconds > 0 else None


def merged(buckets: Iterable[Bucket]) -> Bucket:
    total = Bucket()
    for bucket in buckets:
        total.add(bucket)
    return total


def _known(value: ColumnElement[Any], weight: ColumnElement[Any]) -> ColumnElement[Any]:
    """`weight` where the measure is known and weighs something, else 0 (costing's `_weighted`)."""
    return case((and_(value.is_not(None), weight > 0), weight), else_=0.0)


def _of_deployments(column: Column[Any], names: Sequence[str] | None) -> ColumnElement[bool]:
    return column.is_not(None) if names is None else column.in_(names)


def _gpu_bucket_query(start_ts: float, end_ts: float, names: Sequence[str] | None) -> Select[Any]:
    g, dm = gpu_minutes, deployment_minutes
    util_s = _known(g.c.gpu_util, g.c.util_observed_s)
    sm_s = _known(g.c.sm_active, g.c.util_observed_s)
    # First per deployment-minute (the GROUP BY follows the (deployment, minute_ts) index: no sort),
    # then one join per deployment-minute, not per GPU-minute, for the idle rule.
    per_minute = (
        select(
            g.c.deployment.label("deployment"),
            g.c.minute_ts.label("minute_ts"),
            func.sum(g.c.observed_s).label("observed_s"),
            func.sum(g.c.idle_s).label("idle_s"),
            func.sum(func.coalesce(g.c.gpu_util, 0.0) * util_s).label("util_w"),
            func.sum(util_s).label("util_s"),
            func.sum(func.coalesce(g.c.sm_active, 0.0) * sm_s).label("sm_w"),
            func.sum(sm_s).label("sm_s"),
            func.sum(g.c.energy_j).label("energy_j"),
            func.count(case((g.c.observed_s > 0, 1))).label("gpus"),
        )
        .where(g.c.minute_ts >= start_ts, g.c.minute_ts < end_ts, _of_deployments(g.c.deployment, names))
        .group_by(g.c.deployment, g.c.minute_ts)
        .subquery("per_minute")
    )
    m = per_minute.c
    bucket = (m.minute_ts - m.minute_ts % BUCKET_S).label("bucket")
    # The idle rule: no request running where the server is known, else under the idle threshold.
    idle = case((dm.c.request_busy.is_not(None), m.observed_s * (1 - dm.c.request_busy)), else_=m.idle_s)
    return (
        select(
            m.deployment,
            bucket,
            func.sum(m.observed_s),
            func.sum(idle),
            func.sum(m.util_w),
            func.sum(m.util_s),
            func.sum(m.sm_w),
            func.sum(m.sm_s),
            func.sum(m.energy_j),
            func.sum(m.gpus),
            func.sum(case((m.gpus > 0, 1), else_=0)),
        )
        .select_from(
            per_minute.outerjoin(dm, and_(dm.c.deployment == m.deployment, dm.c.minute_ts == m.minute_ts))
        )
        .group_by(m.deployment, bucket)
    )


def _server_bucket_query(start_ts: float, end_ts: float, names: Sequence[str] | None) -> Select[Any]:
    dm = deployment_minutes
    bucket = (dm.c.minute_ts - dm.c.minute_ts % BUCKET_S).label("bucket")
    served = dm.c.server_observed_s > 0
    busy_s = _known(dm.c.request_busy, dm.c.server_observed_s)
    instances = case((dm.c.instances > 1, dm.c.instances), else_=1)
    return (
        select(
            dm.c.deployment,
            bucket,
            func.sum(dm.c.prompt_tokens),
            func.sum(dm.c.generation_tokens),
            func.sum(dm.c.server_observed_s),
            func.sum(func.coalesce(dm.c.request_busy, 0.0) * busy_s),
            func.sum(busy_s),
            func.sum(case((served, dm.c.prompt_tokens + dm.c.generation_tokens), else_=0)),
            func.sum(case((served, dm.c.server_observed_s / instances), else_=0.0)),
            func.sum(dm.c.prefill_s),
            func.sum(dm.c.decode_s),
        )
        .where(dm.c.minute_ts >= start_ts, dm.c.minute_ts < end_ts, _of_deployments(dm.c.deployment, names))
        .group_by(dm.c.deployment, bucket)
    )


def _minute_buckets(
    conn: Connection,
    start_ts: float,
    end_ts: float,
    names: Sequence[str] | None,
    gpu_counts: dict[tuple[str, int], tuple[int, int]] | None = None,
) -> dict[str, dict[int, Bucket]]:
    """Per deployment (every one when `names` is None), per quarter-hour: the sums of its minutes;
    with `gpu_counts`, also (GPU-minutes observed, minutes with a GPU observed) per (deployment,
    quarter-hour) there, from the same scan."""
    result: dict[str, dict[int, Bucket]] = {name: {} for name in names or ()}
    if names is not None and not names:
        return result
    for row in conn.execute(_gpu_bucket_query(start_ts, end_ts, names)):
        if gpu_counts is not None:
            gpu_counts[(row[0], int(row[1]))] = (int(row[9] or 0), int(row[10] or 0))
        b = result.setdefault(row[0], {}).setdefault(int(row[1]), Bucket())
        b.gpu_observed_s = float(row[2] or 0.0)
        b.gpu_idle_s = float(row[3] or 0.0)
        b.gpu_util_weighted, b.gpu_util_s = float(row[4] or 0.0), float(row[5] or 0.0)
        b.sm_active_weighted, b.sm_active_s = float(row[6] or 0.0), float(row[7] or 0.0)
        b.energy_j = None if row[8] is None else float(row[8])
    for row in conn.execute(_server_bucket_query(start_ts, end_ts, names)):
        b = result.setdefault(row[0], {}).setdefault(int(row[1]), Bucket())
        b.prompt_tokens, b.generation_tokens = int(row[2] or 0), int(row[3] or 0)
        b.server_observed_s = float(row[4] or 0.0)
        b.request_busy_weighted, b.request_busy_s = float(row[5] or 0.0), float(row[6] or 0.0)
        b.served_tokens, b.served_wall_s = int(row[7] or 0), float(row[8] or 0.0)
        b.prefill_s = None if row[9] is None else float(row[9])
        b.decode_s = None if row[10] is None else float(row[10])
    return result


_BUCKET_FIELDS = tuple(f.name for f in fields(Bucket))


def _floor(ts: float, step: int) -> int:
    return math.floor(ts / step) * step


def _ceil(ts: float, step: int) -> int:
    return math.ceil(ts / step) * step


def _refresh_tiers(conn: Connection, start_ts: float, end_ts: float) -> None:
    """Recompute the tier rows of every quarter-hour and hour that [start, end) touches from the minute
    rows now in the store, in the caller's transaction: the tiers never disagree with the minutes,
    and rolling a window up twice gives the same rows."""
    dq = deployment_quarter_hours
    first_q, after_q = _floor(start_ts, BUCKET_S), _ceil(end_ts, BUCKET_S)
    conn.execute(delete(dq).where(dq.c.bucket_ts >= first_q, dq.c.bucket_ts < after_q))
    counts: dict[tuple[str, int], tuple[int, int]] = {}
    buckets = _minute_buckets(conn, first_q, after_q, None, counts)
    rows = [
        {
            "bucket_ts": bucket_ts,
            "deployment": name,
            **{f: getattr(b, f) for f in _BUCKET_FIELDS},
            "gpu_minutes": counts.get((name, bucket_ts), (0, 0))[0],
            "minutes_with_gpus": counts.get((name, bucket_ts), (0, 0))[1],
        }
        for name, by_bucket in buckets.items()
        for bucket_ts, b in by_bucket.items()
    ]
    if rows:
        conn.execute(insert(dq), rows)
    # A run that ends in the next quarter-hour may hold minutes of this window: that one too.
    _refresh_peaks(conn, first_q, after_q + BUCKET_S)
    g, gh = gpu_minutes, gpu_hours
    first_h, after_h = _floor(start_ts, HOUR_S), _ceil(end_ts, HOUR_S)
    conn.execute(delete(gh).where(gh.c.hour_ts >= first_h, gh.c.hour_ts < after_h))
    util_s = _known(g.c.gpu_util, g.c.util_observed_s)
    sm_s = _known(g.c.sm_active, g.c.util_observed_s)
    hour = (g.c.minute_ts - g.c.minute_ts % HOUR_S).label("hour_ts")
    per_hour = (
        select(
            hour,
            g.c.gpu_uuid,
            g.c.deployment,
            func.max(g.c.host),
            func.max(g.c.gpu_index),
            func.count(),
            func.sum(g.c.observed_s),
            func.sum(g.c.util_observed_s),
            func.sum(g.c.idle_s),
            func.sum(g.c.loaded_s),
            func.sum(func.coalesce(g.c.gpu_util, 0.0) * util_s),
            func.sum(util_s),
            func.max(g.c.gpu_util_max),
            func.sum(func.coalesce(g.c.sm_active, 0.0) * sm_s),
            func.sum(sm_s),
            func.sum(g.c.energy_j),
            func.max(g.c.mem_used_max_bytes),
            func.max(g.c.mem_total_bytes),
            *_idle_loaded_hour_sums(),
        )
        .select_from(_with_server(g))
        .where(g.c.minute_ts >= first_h, g.c.minute_ts < after_h)
        .group_by(hour, g.c.gpu_uuid, g.c.deployment)
    )
    conn.execute(insert(gh).from_select([c.name for c in gh.columns], per_hour))


def _refresh_peaks(conn: Connection, first_q: int, after_q: int) -> None:
    """Each quarter-hour's `served_peak_tokens` in [first_q, after_q): the most tokens served in
    MEASURED_CAPACITY_MINUTES consecutive observed minutes ending in it (from the minutes before it
    too), NULL where no such run ends in it. Quarter-hours without minute rows are left as they are
    (their minutes are pruned: the tier is all that is left of them)."""
    dm, dq = deployment_minutes, deployment_quarter_hours
    reach = (MEASURED_CAPACITY_MINUTES - 1) * MINUTE_S
    query = (
        select(
            dm.c.deployment,
            dm.c.minute_ts,
            dm.c.server_observed_s > 0,
            dm.c.prompt_tokens + dm.c.generation_tokens,
        )
        .where(dm.c.minute_ts >= first_q - reach, dm.c.minute_ts < after_q)
        .order_by(dm.c.deployment, dm.c.minute_ts)
    )
    kept: set[tuple[str, int]] = set()
    served: dict[str, list[tuple[int, int]]] = {}
    for name, minute_ts, observed, tokens in conn.execute(query):
        if minute_ts >= first_q:
            kept.add((name, _floor(minute_ts, BUCKET_S)))
        if observed:
            served.setdefault(name, []).append((int(minute_ts), int(tokens or 0)))
    peaks: dict[tuple[str, int], int] = {}
    for name, minutes in served.items():
        for last_ts, tokens in run_totals(minutes):
            key = (name, _floor(last_ts, BUCKET_S))
            if last_ts >= first_q and tokens >= peaks.get(key, -1):
                peaks[key] = tokens
    if kept:
        statement = (
            update(dq)
            .where(dq.c.deployment == bindparam("d"), dq.c.bucket_ts == bindparam("q"))
            .values(served_peak_tokens=bindparam("p"))
        )
        conn.execute(statement, [{"d": name, "q": q, "p": peaks.get((name, q))} for name, q in sorted(kept)])


def _served_peak_tokens(
    engine: Engine, start_ts: float, end_ts: float, name: str, cache: _TierCache | None = None
) -> int | None:
    """The most tokens served in MEASURED_CAPACITY_MINUTES consecutive observed minutes inside [start,
    end): runs ending in whole quarter-hours that lie wholly inside from the tier, the others from the
    minute rows at the window's ends."""
    reach = (MEASURED_CAPACITY_MINUTES - 1) * MINUTE_S
    first_whole, after_whole = _ceil(start_ts + reach, BUCKET_S), _floor(end_ts, BUCKET_S)
    best: int | None = None
    edges: list[tuple[float, float, float]] = [(start_ts, end_ts, start_ts)]
    with engine.connect() as conn:
        if first_whole < after_whole:
            edges = [
                (start_ts, first_whole, start_ts),
                (max(start_ts, after_whole - reach), end_ts, after_whole),
            ]
            dq = deployment_quarter_hours
            if cache is None:
                best = conn.execute(
                    select(func.max(dq.c.served_peak_tokens)).where(
                        dq.c.deployment == name, dq.c.bucket_ts >= first_whole, dq.c.bucket_ts < after_whole
                    )
                ).scalar()
            else:
                cache.fill(conn, first_whole, after_whole)
                best = max(
                    (
                        row.served_peak_tokens
                        for _, row in cache.between(name, first_whole, after_whole)
                        if row.served_peak_tokens is not None
                    ),
                    default=None,
                )
        for edge_start, edge_end, ends_from in edges:
            if edge_start < edge_end:
                for last_ts, tokens in run_totals(_served(conn, edge_start, edge_end, name)):
                    if last_ts >= ends_from and (best is None or tokens > best):
                        best = tokens
    return None if best is None else int(best)


def _observed_minute(
    conn: Connection, name: str, start_ts: int | None, end_ts: int | None, *, last: bool
) -> int | None:
    """The first (the last) minute in [start, end) (anywhere, when None) with the deployment's GPUs or
    server observed."""
    pick = func.max if last else func.min
    found: list[int] = []
    for table, observed in (
        (gpu_minutes, gpu_minutes.c.observed_s),
        (deployment_minutes, deployment_minutes.c.server_observed_s),
    ):
        query = select(pick(table.c.minute_ts)).where(table.c.deployment == name, observed > 0)
        if start_ts is not None and end_ts is not None:
            query = query.where(table.c.minute_ts >= start_ts, table.c.minute_ts < end_ts)
        value = conn.execute(query).scalar()
        if value is not None:
            found.append(int(value))
    if not found:
        return None
    return max(found) if last else min(found)


def _gpu_minute_counts(
    engine: Engine, start_ts: float, end_ts: float, names: Sequence[str], cache: _TierCache | None = None
) -> dict[str, tuple[int, int]]:
    """Per deployment: (minutes with a GPU observed, GPU-minutes observed) in [start, end), whole
    quarter-hours from the tier, the ends from the minute rows."""
    totals = dict.fromkeys(names, (0, 0))
    if not names:
        return totals

    def add(name: str, minutes: Any, gpus: Any) -> None:
        known = totals[name]
        totals[name] = (known[0] + int(minutes or 0), known[1] + int(gpus or 0))

    dq = deployment_quarter_hours
    first_whole, after_whole = _ceil(start_ts, BUCKET_S), _floor(end_ts, BUCKET_S)
    parts: list[Select[Any]] = []
    edges: list[tuple[float, float]] = [(start_ts, end_ts)]
    with engine.connect() as conn:
        if first_whole < after_whole:
            edges = [(start_ts, first_whole), (after_whole, end_ts)]
            if cache is None:
                parts.append(
                    select(dq.c.deployment, func.sum(dq.c.minutes_with_gpus), func.sum(dq.c.gpu_minutes))
                    .where(
                        dq.c.bucket_ts >= first_whole,
                        dq.c.bucket_ts < after_whole,
                        dq.c.deployment.in_(names),
                    )
                    .group_by(dq.c.deployment)
                )
            else:
                cache.fill(conn, first_whole, after_whole)
                for name in names:
                    for _, row in cache.between(name, first_whole, after_whole):
                        add(name, row.minutes_with_gpus, row.gpu_minutes)
        g = gpu_minutes
        parts.extend(
            select(g.c.deployment, func.count(func.distinct(g.c.minute_ts)), func.count())
            .where(g.c.minute_ts >= a, g.c.minute_ts < b, g.c.observed_s > 0, g.c.deployment.in_(names))
            .group_by(g.c.deployment)
            for a, b in edges
            if a < b
        )
        for query in parts:
            for name, minutes, gpus in conn.execute(query):
                add(name, minutes, gpus)
    return totals


@dataclass(slots=True)
class _TierRow:
    bucket: Bucket
    gpu_minutes: int
    minutes_with_gpus: int
    served_peak_tokens: int | None


def _tier_rows(
    conn: Connection, start_ts: int, end_ts: int, names: Sequence[str] | None
) -> Iterable[tuple[str, int, _TierRow]]:
    """(deployment, quarter-hour, its row) of the tier rows in [start, end)."""
    dq = deployment_quarter_hours
    query = select(
        dq.c.deployment,
        dq.c.bucket_ts,
        dq.c.gpu_minutes,
        dq.c.minutes_with_gpus,
        dq.c.served_peak_tokens,
        *(dq.c[f] for f in _BUCKET_FIELDS),
    ).where(dq.c.bucket_ts >= start_ts, dq.c.bucket_ts < end_ts)
    if names is not None:
        query = query.where(dq.c.deployment.in_(names))
    for row in conn.execute(query):
        yield row[0], int(row[1]), _TierRow(Bucket(*row[5:]), int(row[2]), int(row[3]), row[4])


class _TierCache:
    """The tier rows of every deployment over the spans read so far in one pass (`Store.one_pass`):
    the report's month and the rules' 7- and 21-day windows each read only what no earlier window
    read, and their ragged ends from the minutes."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[int, _TierRow]] = {}
        self.bounds: dict[str, tuple[int, int] | None] = {}
        """`Store.activity_bounds` of the deployments asked for so far (None: no data)."""
        self.spans: list[tuple[int, int]] = []
        """Disjoint [start, end) spans of whole quarter-hours held, in order."""

    def missing(self, start_ts: int, end_ts: int) -> list[tuple[int, int]]:
        gaps, at = [], start_ts
        for lo, hi in self.spans:
            if hi <= at:
                continue
            if lo >= end_ts:
                break
            if lo > at:
                gaps.append((at, lo))
            at = max(at, hi)
        if at < end_ts:
            gaps.append((at, end_ts))
        return gaps

    def fill(self, conn: Connection, start_ts: int, end_ts: int) -> None:
        for lo, hi in self.missing(start_ts, end_ts):
            for name, bucket_ts, row in _tier_rows(conn, lo, hi, None):
                self.rows.setdefault(name, {})[bucket_ts] = row
            self.spans.append((lo, hi))
        self.spans.sort()
        joined: list[tuple[int, int]] = []
        for lo, hi in self.spans:
            if joined and lo <= joined[-1][1]:
                joined[-1] = (joined[-1][0], max(joined[-1][1], hi))
            else:
                joined.append((lo, hi))
        self.spans = joined

    def between(self, name: str, start_ts: int, end_ts: int) -> Iterable[tuple[int, _TierRow]]:
        for bucket_ts, row in self.rows.get(name, {}).items():
            if start_ts <= bucket_ts < end_ts:
                yield bucket_ts, row


def _window_buckets(
    engine: Engine,
    start_ts: float,
    end_ts: float,
    names: Sequence[str],
    cache: _TierCache | None = None,
) -> dict[str, dict[int, Bucket]]:
    """Per deployment, per quarter-hour: whole quarter-hours from the tier, the ends from the minutes."""
    result: dict[str, dict[int, Bucket]] = {name: {} for name in names}
    if not names:
        return result
    first_whole, after_whole = _ceil(start_ts, BUCKET_S), _floor(end_ts, BUCKET_S)
    with engine.connect() as conn:
        edges: list[tuple[float, float]] = [(start_ts, end_ts)]
        if first_whole < after_whole:
            if cache is None:
                for name, bucket_ts, row in _tier_rows(conn, first_whole, after_whole, names):
                    result[name][bucket_ts] = row.bucket
            else:
                cache.fill(conn, first_whole, after_whole)
                for name in names:
                    into = result[name]
                    for bucket_ts, row in cache.between(name, first_whole, after_whole):
                        into[bucket_ts] = row.bucket
            edges = [(start_ts, first_whole), (after_whole, end_ts)]
        for edge_start, edge_end in edges:
            if edge_start < edge_end:
                for name, by_bucket in _minute_buckets(conn, edge_start, edge_end, names).items():
                    result[name].update(by_bucket)
    # In time order, whatever was read first: the figures summed from them are then the same to the
    # last bit however the window was read (the tier cache's spans, the minutes kept at its ends).
    return {name: dict(sorted(by_bucket.items())) for name, by_bucket in result.items()}


def _served(conn: Connection, start_ts: float, end_ts: float, name: str) -> list[tuple[int, int]]:
    """(minute_ts, tokens) of the minutes a server was observed in, in time order."""
    dm = deployment_minutes
    query = (
        select(dm.c.minute_ts, dm.c.prompt_tokens + dm.c.generation_tokens)
        .where(
            dm.c.deployment == name,
            dm.c.minute_ts >= start_ts,
            dm.c.minute_ts < end_ts,
            dm.c.server_observed_s > 0,
        )
        .order_by(dm.c.minute_ts)
    )
    return [(int(ts), int(tokens)) for ts, tokens in conn.execute(query)]


@dataclass(frozen=True, slots=True)
class IdleSpan:
    """One GPU's minutes in one span, as idle-loaded judges them (`Store.idle_loaded_spans`)."""

    known_s: float
    """Seconds observed in minutes whose activity (`sm_active`, else `gpu_util`) is known."""
    idle_s: float
    """Of those, seconds of idle-loaded minutes."""
    activity_weighted: float
    """Activity × seconds over the known minutes (its mean: ÷ known_s)."""
    working_minutes: int
    """Minutes with a known activity that were not idle-loaded."""
    mem_used_max_bytes: int
    """The most memory in use in a known, observed minute (0 when none)."""


@dataclass(frozen=True, slots=True)
class IdleHours:
    """One GPU's idle-loaded history in one span (`Store.idle_loaded_history`): from the minute rows
    where they are kept, from the GPU-hour tier's whole hours before them."""

    known_s: float
    """Seconds observed with a known activity."""
    idle_s: float
    """Of those, seconds idle-loaded."""
    working_minutes: int
    """Minutes with a known activity that were not idle-loaded."""

    def __add__(self, other: IdleHours) -> IdleHours:
        return IdleHours(
            self.known_s + other.known_s,
            self.idle_s + other.idle_s,
            self.working_minutes + other.working_minutes,
        )


@dataclass(frozen=True, slots=True)
class GpuWhere:
    """Where a GPU was in its last minute of a window."""

    host: str
    gpu_index: int
    deployment: str | None


TIER_IDLE_LOADED_BELOW: float = IdleLoadedRule.model_fields["below"].default
TIER_IDLE_LOADED_MIN_MEM_BYTES: int = IdleLoadedRule.model_fields["min_mem_used_bytes"].default
"""The idle-loaded definition the GPU-hour tier is summed at: the rule's defaults. A rule configured
otherwise is answered from the minute rows alone."""


def _with_server(g: Table) -> Any:
    """GPU minutes joined to their deployment's server minute (at most one: its primary key)."""
    dm = deployment_minutes
    return g.outerjoin(dm, and_(dm.c.deployment == g.c.deployment, dm.c.minute_ts == g.c.minute_ts))


def _idle_loaded_terms(
    below: float, min_mem_used_bytes: int
) -> tuple[ColumnElement[Any], ColumnElement[bool], ColumnElement[bool]]:
    """(activity, known, idle-loaded) of a GPU minute joined by `_with_server`: idle-loaded's
    definition, in one place for the minute rows and the GPU-hour tier."""
    g, dm = gpu_minutes, deployment_minutes
    activity = func.coalesce(g.c.sm_active, g.c.gpu_util)
    known = activity.is_not(None)
    # Idle-loaded: activity strictly under `below`, no request running on its deployment's server
    # (where known), and a model held (a process holding memory, or enough memory in use).
    idle = and_(
        known,
        activity < below,
        ~and_(dm.c.request_busy.is_not(None), dm.c.request_busy > 0).self_group(),
        (g.c.loaded_s > 0)
        | and_(g.c.mem_used_max_bytes.is_not(None), g.c.mem_used_max_bytes >= min_mem_used_bytes),
    )
    return activity, known, idle


def _idle_loaded_hour_sums() -> list[ColumnElement[Any]]:
    """The GPU-hour tier's idle-loaded columns, over minutes joined by `_with_server`, at the tier's
    definition: known seconds, idle-loaded seconds, working (known, not idle-loaded) minutes."""
    g = gpu_minutes
    _, known, idle = _idle_loaded_terms(TIER_IDLE_LOADED_BELOW, TIER_IDLE_LOADED_MIN_MEM_BYTES)
    return [
        func.sum(case((known, g.c.observed_s), else_=0.0)),
        func.sum(case((idle, g.c.observed_s), else_=0.0)),
        func.sum(case((and_(known, ~idle), 1), else_=0)),
    ]


def _idle_span_query(
    spans: Sequence[tuple[float, float]],
    below: float,
    min_mem_used_bytes: int,
    uuids: Sequence[str] | None,
) -> Select[Any]:
    g = gpu_minutes
    activity, known, idle = _idle_loaded_terms(below, min_mem_used_bytes)
    columns: list[ColumnElement[Any]] = [g.c.gpu_uuid]
    for start_ts, end_ts in spans:
        inside = and_(g.c.minute_ts >= start_ts, g.c.minute_ts < end_ts)
        columns += [
            func.sum(case((and_(inside, known), g.c.observed_s), else_=0.0)),
            func.sum(case((and_(inside, idle), g.c.observed_s), else_=0.0)),
            func.sum(case((and_(inside, known), activity * g.c.observed_s), else_=0.0)),
            func.sum(case((and_(inside, known, ~idle), 1), else_=0)),
            func.max(
                case(
                    (and_(inside, known, g.c.observed_s > 0), func.coalesce(g.c.mem_used_max_bytes, 0)),
                    else_=0,
                )
            ),
        ]
    query = (
        select(*columns)
        .select_from(_with_server(g))
        .where(g.c.minute_ts >= min(a for a, _ in spans), g.c.minute_ts < max(b for _, b in spans))
        .group_by(g.c.gpu_uuid)
    )
    if uuids is not None:
        query = query.where(g.c.gpu_uuid.in_(uuids))
    return query


def _idle_hour_query(spans: Sequence[tuple[int, int]], uuids: Sequence[str]) -> Select[Any]:
    """Per GPU in `uuids`, per span [first hour, after): the GPU-hour tier's idle-loaded sums."""
    gh = gpu_hours
    columns: list[ColumnElement[Any]] = [gh.c.gpu_uuid]
    for first_h, after_h in spans:
        inside = and_(gh.c.hour_ts >= first_h, gh.c.hour_ts < after_h)
        columns += [
            func.sum(case((inside, gh.c.activity_known_s), else_=0.0)),
            func.sum(case((inside, gh.c.idle_loaded_s), else_=0.0)),
            func.sum(case((inside, gh.c.working_minutes), else_=0)),
        ]
    return (
        select(*columns)
        .where(
            gh.c.hour_ts >= min(a for a, _ in spans),
            gh.c.hour_ts < max(b for _, b in spans),
            gh.c.gpu_uuid.in_(uuids),
        )
        .group_by(gh.c.gpu_uuid)
    )


def _outbox_values(message: OutboxMessage) -> dict[str, Any]:
    values = _record_values(message)
    if values["id"] is None:
        del values["id"]
    return values


def _with_enums(line: CostLine) -> CostLine:
    return _stored_line(_shape(CostLine).values(line))


_LINE_COLUMNS = tuple(cost_lines.c[name] for name in COST_LINE_FIELDS)
"""The table's columns in `CostLine`'s field order: a row selected with them is the line's values."""
_BASIS, _ESTIMATED, _CURRENCY, _USD_RATE, _LINE_KEY = (
    COST_LINE_FIELDS.index(name)
    for name in ("basis", "estimated", "billing_currency", "usd_rate", "line_key")
)


def _stored_line(row: Sequence[Any]) -> CostLine:
    """A line from its stored values in `COST_LINE_FIELDS` order: the basis as its enum, and what a
    line stored before schema 4 (currency, rate) or 8 (key) lacks, filled in."""
    values = list(row)
    values[_BASIS] = CostBasis(values[_BASIS])
    values[_ESTIMATED] = bool(values[_ESTIMATED])
    if values[_CURRENCY] is None:
        values[_CURRENCY] = "USD"
    if values[_USD_RATE] is None:
        values[_USD_RATE] = Decimal(1)
    if values[_LINE_KEY] is None:
        values[_LINE_KEY] = ""
    return CostLine(*values)


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


_COMPARED = tuple(name for name in _shape(CostLine).names if name != "line_key")


def _replace_lines(
    conn: Connection, source: str, where: ColumnElement[bool], lines: Sequence[CostLine]
) -> CostLineChange:
    """Make the lines matching `where` exactly `lines`: lines are matched by key; an unchanged line is
    left as it is (a re-import writes nothing), a changed one rewritten, a vanished one deleted."""
    incoming: dict[str, CostLine] = {}
    for line in lines:
        if line.line_key in incoming:
            raise ValueError(
                f"two cost lines of source {source} share the key {line.line_key}: "
                f"{incoming[line.line_key]} and {line}"
            )
        incoming[line.line_key] = line
    existing: dict[str, tuple[int, CostLine]] = {}
    for row in conn.execute(select(cost_lines.c.id, *_LINE_COLUMNS).where(where)):
        line = _stored_line(row[1:])
        existing[line.line_key or str(row[0])] = (int(row[0]), line)
    removed = [row_id for key, (row_id, _) in existing.items() if key not in incoming]
    changed: list[int] = []
    added: list[CostLine] = []
    unchanged = 0
    for key, line in incoming.items():
        known = existing.get(key)
        if known is None:
            added.append(line)
        elif _same(known[1], line):
            unchanged += 1
        else:
            changed.append(known[0])
            added.append(line)
    gone = removed + changed
    for at in range(0, len(gone), 500):
        conn.execute(delete(cost_lines).where(cost_lines.c.id.in_(gone[at : at + 500])))
    _insert_tuples(
        conn, cost_lines, COST_LINE_FIELDS, _bound_lines(conn.dialect, added), len(added), copy=False
    )
    return CostLineChange(
        added=len(added) - len(changed), removed=len(removed), changed=len(changed), unchanged=unchanged
    )


_compared_values = attrgetter(*_COMPARED)


def _same(a: CostLine, b: CostLine) -> bool:
    return bool(_compared_values(a) == _compared_values(b))


def _bound_lines(dialect: Dialect, lines: Iterable[CostLine]) -> Iterator[tuple[Any, ...]]:
    """Lines as rows of `COST_LINE_FIELDS`, each value bound as SQLAlchemy binds its column's type
    (money as its text on SQLite, the day, the flag) and the basis as its text: what SQLAlchemy's own
    executemany did row by row, most of a big bill's import (49k lines: 1.5 s)."""
    processors = [
        (at, processor)
        for at, name in enumerate(COST_LINE_FIELDS)
        if (processor := cost_lines.c[name].type.dialect_impl(dialect).bind_processor(dialect)) is not None
    ]
    values = _shape(CostLine).values
    for line in lines:
        row = list(values(line))
        row[_BASIS] = CostBasis(row[_BASIS]).value
        for at, processor in processors:
            row[at] = processor(row[at])
        yield tuple(row)
