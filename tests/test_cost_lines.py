"""Cost lines in FOCUS terms: the schema-5 migration keeps old rows, replacements are keyed and
idempotent, billing periods replace whole, and the configured cost metric picks the cost counted."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import column, insert, select, table, text
from sqlalchemy.sql.expression import ColumnClause

from auditor.config import ConfigError, parse_config
from auditor.model import COST_LINE_FIELDS, CostBasis, CostLine, CostMetric
from auditor.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    BillingSync,
    CostLineChange,
    Store,
    _key_before_schema_8,
    _migration_cost_line_places,
    _migration_cost_lines_focus,
    _record_values,
    cost_lines,
    schema_version,
)

SEPT = int(datetime(2024, 9, 1, tzinfo=UTC).timestamp())
OCT = int(datetime(2024, 10, 1, tzinfo=UTC).timestamp())


def _hour(period: int, hour: int, billed: str, effective: str, **kw: object) -> CostLine:
    start = period + hour * 3600
    values: dict[str, object] = {
        "day": datetime.fromtimestamp(start, UTC).date(),
        "source": "aws-focus",
        "account": "1234567890123",
        "resource": "i-0a1b2c3d4e5f",
        "usage_type": "BoxUsage:g5.4xlarge",
        "amount_usd": Decimal(effective),
        "deployment": "llama",
        "usage_hours": Decimal(1),
        "gpu_hours": Decimal(1),
        "charge_period_start_ts": start,
        "charge_period_end_ts": start + 3600,
        "billing_period_start_ts": period,
        "billed_cost": Decimal(billed),
        "effective_cost": Decimal(effective),
        "list_cost": Decimal("1.624"),
        "charge_category": "Usage",
        "pricing_category": "Standard",
        "provider": "AWS",
        "sub_account": "51738928782",
        "region": "us-west-2",
        "sku_id": "G95FST5FTYV3JSRX",
        "tags_json": '{"application": "llama"}',
    }
    values.update(kw)
    return CostLine(**values)  # type: ignore[arg-type]


def test_every_focus_field_survives_a_write_and_a_read(store_url: str) -> None:
    store = Store.open(store_url)
    line = _hour(SEPT, 5, "1.624", "1.1", commitment_discount_id="arn:aws:savingsplans::1:sp/abc")
    store.replace_billing_periods("aws-focus", {SEPT: [line]})
    (back,) = store.cost_lines(date(2024, 9, 1), date(2024, 9, 2))
    assert back == line
    assert back.line_key == line.line_key != ""


def test_lines_are_stored_as_sqlalchemy_itself_binds_their_columns(store_url: str) -> None:
    """The bulk write binds each value as its column's type does (money as its text on SQLite, the
    day, the flag, the basis as its text): the stored row equals the one SQLAlchemy's own INSERT
    writes, value for value and type for type."""
    store = Store.open(store_url)
    lines = [
        _hour(SEPT, 1, "1.624", "0E-12", estimated=True, basis=CostBasis.AMORTIZED),
        _hour(SEPT, 2, "-3.000000000000000001", "12345678901234567890.123456789012345678", deployment=None),
        _hour(
            SEPT, 3, "0.1", "0.1", usage_hours=None, gpu_hours=None, tags_json=None, usd_rate=Decimal("0.92")
        ),
    ]
    store.replace_billing_periods("aws-focus", {SEPT: lines})
    # Untyped columns: the driver's values, as stored, with no result processing.
    columns: list[ColumnClause[Any]] = [column(name) for name in COST_LINE_FIELDS]
    raw = select(*columns).select_from(table("cost_lines")).order_by(column("charge_period_start_ts"))
    with store.engine.begin() as conn:
        ours = conn.execute(raw).all()
        conn.execute(text("DELETE FROM cost_lines"))
        conn.execute(insert(cost_lines), [_record_values(line) for line in lines])
        theirs = conn.execute(raw).all()
    assert len(ours) == 3
    for mine, reference in zip(ours, theirs, strict=True):
        assert [(type(v), v) for v in mine] == [(type(v), v) for v in reference]


def test_a_reimport_changes_nothing_and_a_redelivered_month_replaces_the_old(store_url: str) -> None:
    store = Store.open(store_url)
    month = [_hour(SEPT, h, "1.624", "1.2") for h in range(48)]
    first = store.replace_billing_periods("aws-focus", {SEPT: month})
    assert first == CostLineChange(added=48)
    assert store.replace_billing_periods("aws-focus", {SEPT: month}) == CostLineChange(unchanged=48)
    # The month re-delivered: its last hour revised, one hour gone, one new; October untouched.
    october = [_hour(OCT, 0, "2", "2")]
    store.replace_billing_periods("aws-focus", {OCT: october})
    revised = [*month[:46], _hour(SEPT, 47, "1.624", "0.9"), _hour(SEPT, 60, "1", "1")]
    change = store.replace_billing_periods("aws-focus", {SEPT: revised})
    assert change == CostLineChange(added=1, removed=1, changed=1, unchanged=46)
    lines = store.cost_lines(date(2024, 9, 1), date(2024, 11, 1))
    assert len(lines) == 49
    assert sum((x.amount_usd for x in lines), Decimal(0)) == Decimal("1.2") * 46 + Decimal("0.9") + 1 + 2


def test_a_line_outside_its_period_or_a_repeated_key_is_refused_and_nothing_written(store_url: str) -> None:
    store = Store.open(store_url)
    with pytest.raises(ValueError, match="outside the billing period"):
        store.replace_billing_periods("aws-focus", {OCT: [_hour(SEPT, 1, "1", "1")]})
    twice = _hour(SEPT, 1, "1", "1")
    with pytest.raises(ValueError, match="share the key"):
        store.replace_billing_periods("aws-focus", {SEPT: [twice, twice]})
    assert store.cost_lines(date(2024, 1, 1), date(2025, 1, 1)) == []


def test_the_cost_metric_picks_the_focus_cost_and_converts_it(store_url: str) -> None:
    line = _hour(
        SEPT, 1, "1.624", "1.1", list_cost=Decimal("2.0"), billing_currency="EUR", usd_rate=Decimal("1.5")
    )
    assert line.costed(CostMetric.EFFECTIVE).amount_usd == Decimal("1.65")
    assert line.costed(CostMetric.BILLED).amount_usd == Decimal("2.436")
    assert line.costed(CostMetric.LIST).amount_usd == Decimal("3.0")
    rated = CostLine(
        day=date(2024, 9, 1),
        source="static",
        account="",
        resource="llama",
        usage_type="GPU-hours",
        amount_usd=Decimal(48),
        basis=CostBasis.LIST,
    )
    assert rated.costed(CostMetric.BILLED) is rated  # a rate states no FOCUS cost: its amount stands


def test_negative_lines_are_kept(store_url: str) -> None:
    store = Store.open(store_url)
    credit = _hour(SEPT, 2, "-5.00", "-5.00", charge_category="Credit", usage_type="Credit")
    store.replace_billing_periods("aws-focus", {SEPT: [_hour(SEPT, 2, "1.624", "1.624"), credit]})
    total = sum((x.amount_usd for x in store.cost_lines(date(2024, 9, 1), date(2024, 9, 2))), Decimal(0))
    assert total == Decimal("-3.376")


_OLD_COST_LINES = """
CREATE TABLE cost_lines (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, day DATE NOT NULL, source VARCHAR(16) NOT NULL,
    account VARCHAR(128) NOT NULL, resource VARCHAR(512) NOT NULL, usage_type VARCHAR(255) NOT NULL,
    amount_usd VARCHAR(40) NOT NULL, deployment VARCHAR(64), usage_hours VARCHAR(40),
    gpu_hours VARCHAR(40), basis VARCHAR(16) NOT NULL, estimated BOOLEAN NOT NULL)
"""


def test_an_older_store_keeps_its_cost_lines_through_the_migration(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = Store.open(url, migrate=False)
    with old.engine.begin() as conn:
        mine = MIGRATIONS.index(_migration_cost_lines_focus) + 1
        for version in range(1, mine):  # every schema before FOCUS cost lines
            MIGRATIONS[version - 1](conn)
            conn.execute(insert(schema_version).values(version=version, applied_ts=0.0))
        conn.execute(text("DROP TABLE cost_lines"))
        conn.execute(text(_OLD_COST_LINES))
        for amount in ("24.144", "24.144"):  # two identical rows (an old double sync): both kept
            conn.execute(
                text(
                    "INSERT INTO cost_lines (day, source, account, resource, usage_type, amount_usd, "
                    "deployment, usage_hours, gpu_hours, basis, estimated) VALUES "
                    "('2026-10-03', 'aws', 'demo', 'i-0demo', 'BoxUsage:g5.xlarge', :a, NULL, '24', NULL, "
                    "'invoiced', 0)"
                ),
                {"a": amount},
            )
    old.close()
    store = Store.open(url)
    assert store.schema_version() == SCHEMA_VERSION
    lines = store.cost_lines(date(2026, 10, 1), date(2026, 11, 1))
    assert [x.amount_usd for x in lines] == [Decimal("24.144")] * 2
    assert lines[0].billing_currency == "USD" and lines[0].effective_cost is None
    assert lines[0].costed(CostMetric.EFFECTIVE).amount_usd == Decimal("24.144")
    assert len({x.line_key for x in lines}) == 2
    # The old day-based API still replaces its window, now keyed.
    change = store.replace_cost_lines("aws", "demo", date(2026, 10, 1), date(2026, 11, 1), [])
    assert change == CostLineChange(removed=2)


def test_billing_status_records(store_url: str) -> None:
    store = Store.open(store_url)
    store.replace_billing_periods(
        "aws-focus", {SEPT: [_hour(SEPT, h, "1", "1", estimated=h > 30) for h in range(60)]}
    )
    (coverage,) = store.cost_line_coverage()
    assert (coverage.source, coverage.first_day, coverage.last_day) == (
        "aws-focus",
        date(2024, 9, 1),
        date(2024, 9, 3),
    )
    assert (coverage.lines, coverage.days, coverage.estimated_days) == (60, 3, 2)
    sync = BillingSync(source="aws-focus", kind="import", synced_ts=1.0, origin="a.csv", rows_read=1000)
    store.record_billing_sync(sync)
    (back,) = store.billing_syncs()
    assert back.origin == "a.csv" and back.rows_read == 1000 and back.id is not None


def test_billing_config_is_discriminated_by_kind_and_names_what_is_allowed() -> None:
    config = parse_config(
        """
[billing]
cost_metric = "billed"
currency_rates = { EUR = 1.08 }
[billing.attribution]
tag_keys = ["deployment"]
resources = { "i-0abc" = "llama" }
[[billing.sources]]
kind = "focus_files"
name = "bills"
paths = ["/var/lib/auditor/bills"]
[[billing.sources]]
kind = "focus_s3"
name = "aws-export"
bucket = "my-billing"
prefix = "focus/gpu-export"
[[billing.sources]]
kind = "focus_bigquery"
name = "gcp-focus"
table = "proj.billing.focus_v1"
"""
    )
    assert config.billing.cost_metric is CostMetric.BILLED
    assert config.billing.currency_rates == {"EUR": Decimal("1.08")}
    assert [s.kind for s in config.billing.sources] == ["focus_files", "focus_s3", "focus_bigquery"]
    assert parse_config("").billing.cost_metric is CostMetric.EFFECTIVE
    with pytest.raises(ConfigError) as info:
        parse_config('[[billing.sources]]\nkind = "focus_s3"\nname = "x"\nbucket = "my-bucket"\npath = "a"\n')
    assert info.value.problems == [
        "<config>: billing.sources[0].path: unknown key; "
        "allowed here: bucket, endpoint_url, kind, name, prefix, region"
    ]
    with pytest.raises(ConfigError, match="cost_metric"):
        parse_config('[billing]\ncost_metric = "amortized"\n')


def test_lines_that_differ_only_in_provider_region_or_currency_are_lines_of_their_own(store_url: str) -> None:
    store = Store.open(store_url)
    lines = [
        _hour(SEPT, 1, "1", "1"),
        _hour(SEPT, 1, "1", "1", region="us-east-1"),
        _hour(SEPT, 1, "1", "1", provider="Microsoft"),
        _hour(SEPT, 1, "1", "1", billing_currency="EUR", usd_rate=Decimal("1.1")),
    ]
    assert len({line.line_key for line in lines}) == 4
    assert store.replace_billing_periods("aws-focus", {SEPT: lines}) == CostLineChange(added=4)
    assert store.replace_billing_periods("aws-focus", {SEPT: lines}) == CostLineChange(unchanged=4)


def test_schema_8_rekeys_the_lines_keyed_by_the_old_key_and_keeps_a_source_s_own(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'seven.db'}"
    store = Store.open(url)
    month = [_hour(SEPT, h, "1.624", "1.2") for h in range(3)]
    store.replace_billing_periods("aws-focus", {SEPT: month})
    own = _hour(SEPT, 0, "1", "1", source="aws-ce", line_key="a-key-the-source-made-itself")
    store.replace_cost_lines("aws-ce", None, date(2024, 9, 1), date(2024, 9, 2), [own])
    with store.engine.begin() as conn:  # as a schema-7 store left them
        for line in month:
            conn.execute(
                text("UPDATE cost_lines SET line_key = :old WHERE line_key = :new"),
                {"old": _key_before_schema_8(line), "new": line.line_key},
            )
        eight = MIGRATIONS.index(_migration_cost_line_places) + 1
        conn.execute(text("DELETE FROM schema_version WHERE version >= :v"), {"v": eight})
    store.close()
    store = Store.open(url)
    assert store.schema_version() == SCHEMA_VERSION
    # The re-import finds every line as it was: the keys were brought up to date, not left to look new.
    assert store.replace_billing_periods("aws-focus", {SEPT: month}) == CostLineChange(unchanged=3)
    (kept,) = [x for x in store.cost_lines(date(2024, 9, 1), date(2024, 9, 2)) if x.source == "aws-ce"]
    assert kept.line_key == "a-key-the-source-made-itself"
