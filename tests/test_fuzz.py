"""Fuzzing the inputs a person or a server controls: no exception escapes but the project's own clear
errors (issue 13). Hypothesis generates the inputs; each property holds for every one of them."""

from __future__ import annotations

import contextlib
import tempfile
import tomllib
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from auditor.cli import main
from auditor.config import ConfigError, parse_config
from auditor.units import parse_positive, parse_token_count, parse_usd
from collectors.inference import catalog_lines, parse_server_metrics
from collectors.interface import CollectorError
from collectors.metric_catalog import CATALOG
from collectors.replay import ReplayError, read_trace_loads

NAMES = sorted({e.source for e in CATALOG})
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

label_value = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12)
number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["NaN", "+Inf", "-Inf", "1e400", "-0", "0x10", "", "1_000", "１２"]),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
)


@st.composite
def series_line(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from([*NAMES, "vllm:other", "garbage{", "# TYPE", ""]))
    labels = draw(
        st.dictionaries(
            st.sampled_from(["model_name", "name", "engine", "le", 'a"b']), label_value, max_size=3
        )
    )
    rendered = ",".join(f'{k}="{v}"' for k, v in labels.items())
    braces = draw(st.sampled_from(["{%s}", "{%s", "%s}", "{%s}}"])) % rendered if labels else ""
    return f"{name}{braces} {draw(number)}{draw(st.sampled_from(['', ' 123', ' x', ' # {a=1} 1']))}"


@FUZZ
@given(st.lists(series_line(), max_size=30), st.sampled_from(["auto", "vllm", "sglang", "tgi"]))
def test_the_metrics_parser_raises_only_collector_errors(lines: list[str], kind: str) -> None:
    text = "\n".join(lines)
    parsed = raised = None
    try:
        parsed = parse_server_metrics(text, kind=kind)
    except CollectorError as exc:
        raised = exc
    assert raised is None or "\n" not in str(raised)
    for value in parsed.values.values() if parsed else ():
        assert value == value and abs(value) != float("inf")  # NaN and ±Inf never become a reading


@FUZZ
@given(st.text(max_size=400))
def test_arbitrary_text_is_never_more_than_a_parse_problem(text: str) -> None:
    with contextlib.suppress(CollectorError):
        parse_server_metrics(text)
    assert all(line.split("{")[0].split()[0] in NAMES for line in catalog_lines(text.splitlines()))


config_value = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**20), max_value=10**20),
        st.floats(allow_nan=False),
        st.text(max_size=20),
        st.sampled_from(
            ["sqlite:////tmp/x.db", "postgresql://u:p@h/d", "mysql://x", "1e308", "UTC", "static"]
        ),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
SECTIONS = ["store", "daemon", "prices", "rules", "slack", "timezone", "deployments"]


def _toml(value: object) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if value == value and abs(value) != float("inf") else "0"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{_toml(k)} = {_toml(v)}" for k, v in value.items()) + "}"


@FUZZ
@given(st.dictionaries(st.sampled_from(SECTIONS), config_value, max_size=4))
def test_the_config_loader_raises_only_config_errors(document: dict[str, object]) -> None:
    text = "\n".join(f"{key} = {_toml(value)}" for key, value in document.items())
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        assume(False)  # the generator wrote TOML it cannot read back (duplicate keys, say)
    problems: list[str] = []
    try:
        parse_config(text)
    except ConfigError as exc:
        problems = exc.problems or ["(none)"]
    assert all("\n" not in p for p in problems)


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_config_text_raises_only_config_errors(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_config(text)


numeric_text = st.one_of(
    st.text(alphabet="0123456789.eE+-_,$KMBGTkmbx ", max_size=12),
    st.sampled_from(["1e400", "1e999999", "-1", "NaN", "inf", "1e-400", "9" * 60, "1e18", "1e19"]),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
)


@FUZZ
@given(numeric_text)
def test_numeric_options_raise_only_value_errors(text: str) -> None:
    for parse in (parse_token_count, parse_usd, lambda t: parse_positive(t, "hours", maximum=Decimal(744))):
        with contextlib.suppress(ValueError):  # a ValueError is the clear answer; anything else fails
            parse(text)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(numeric_text, numeric_text, numeric_text)
def test_breakeven_on_any_numbers_exits_cleanly(
    capsys: pytest.CaptureFixture[str], tokens: str, usd: str, hours: str
) -> None:
    args = ["breakeven", "--prompt-tokens", tokens, "--generation-tokens", "1M", "--gpus", "1"]
    args += ["--gpu-hourly-usd", usd, "--hours", hours, "--json"]
    with pytest.raises(SystemExit) as exited:
        main(args)
    _, err = capsys.readouterr()
    assert exited.value.code in (0, 2), err
    assert "Traceback" not in err


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=600) | st.text(max_size=600).map(str.encode))
def test_the_trace_reader_raises_only_its_own_errors(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.csv"
        path.write_bytes(b"TIMESTAMP,ContextTokens,GeneratedTokens\n" + data)
        with contextlib.suppress(ReplayError):
            read_trace_loads(path)
