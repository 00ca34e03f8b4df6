"""Commands of the rules and alerts: `rules check`, `digest`."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Annotated

import typer
from sqlalchemy.engine import make_url

import rules
from auditor.alert_jobs import (
    DigestCycle,
    DigestOutcome,
    digest_cycle,
    digest_key,
    make_digest,
    rule_context,
)
from auditor.cli.common import (
    EXIT_FINDING,
    ConfigOption,
    JsonOption,
    api_catalog,
    app,
    fatal,
    gpu_catalog,
    open_store,
    require_config,
)
from auditor.config import Config
from auditor.model import Severity
from auditor.output import emit, output_format, render_json
from auditor.results import findings_result
from auditor.units import format_share
from reports.digest import digest_text, parse_week
from reports.json_form import digest_object
from reports.slack import WEBHOOK_AT_LEAST_ONCE, SlackConfigError, slack_sender
from reports.terminal import findings_text

rules_app = typer.Typer(
    help="Evaluate the rules: recommendations with the dollars at stake.", no_args_is_help=True
)
app.add_typer(rules_app, name="rules")


@rules_app.command("check")
def rules_check(
    rule: Annotated[
        list[str] | None,
        typer.Option("--rule", help="Only this rule (repeat it); default: every enabled rule."),
    ] = None,
    config_path: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate the rules now and print the findings, most dollars first.

    Exit status 1 when a finding is a warning or critical, 0 otherwise."""
    config = require_config(config_path)
    store = open_store(config)
    now = datetime.now(tz=UTC)
    try:
        context = rule_context(config, store, now, api_catalog(config), gpu_catalog())
        findings = rules.evaluate(context, rule)
        newest = store.last_minute_ts()
    except ValueError as exc:
        fatal(f"--rule: {exc}" if rule else str(exc))
    finally:
        store.close()
    result = findings_result(now, findings, rules.at_stake(findings), _nothing_found(config, now, newest))
    emit(result, output_format(as_json), findings_text)
    verdicts = [f for f in findings if f.verdict]
    if any(f.severity in (Severity.WARNING, Severity.CRITICAL) for f in verdicts):
        raise typer.Exit(EXIT_FINDING)


def _nothing_found(config: Config, now: datetime, newest_minute_ts: int | None) -> str:
    """What "no findings" means: which store was read, as of when, and why nothing was decided."""
    store = make_url(config.store.url).render_as_string(hide_password=True)
    head = f"No findings in {store} as of {now:%Y-%m-%d %H:%M} UTC"
    if newest_minute_ts is None:
        return f"{head}: it holds no roll-ups yet (is the daemon running there? see `auditor doctor`)."
    newest = datetime.fromtimestamp(newest_minute_ts, tz=UTC)
    if (now - newest).days >= config.rules.move_to_api.window_days:
        return (
            f"{head}: its newest data is from {newest:%Y-%m-%d %H:%M} UTC, before the rules' windows "
            f"(the last {config.rules.move_to_api.window_days} days); `auditor report --month "
            f"{newest:%Y-%m}` shows that month's recommendations."
        )
    return f"{head}: no rule's threshold is crossed."


@app.command()
def digest(
    week: Annotated[
        str | None, typer.Option(help="ISO week, e.g. 2026-W47 (default: the last complete week).")
    ] = None,
    send: Annotated[bool, typer.Option("--send", help="Send it to Slack (once per week).")] = False,
    config_path: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """The weekly digest: utilization, tokens, cost, idle cost, API equivalent, recommendations."""
    if week is not None:
        try:
            parse_week(week)
        except ValueError as exc:
            fatal(f"--week: {exc}")
    if send and as_json:
        fatal("give --send or --json, not both")
    config = require_config(config_path)
    store = open_store(config)
    now = datetime.now(tz=UTC)
    try:
        if not send:
            made = make_digest(
                config, store, now, week, api_catalog=api_catalog(config), gpu_catalog=gpu_catalog()
            )
            print(render_json(digest_object(made)) if as_json else digest_text(made))
            return
        try:
            sender = slack_sender(config.slack, os.environ)
        except SlackConfigError as exc:
            fatal(str(exc))
        if sender is None:
            fatal(
                f"no Slack configured: export {config.slack.token_env} (a bot token), set slack.token_file, "
                "or slack.webhook_url_env"
            )
        cycle = digest_cycle(
            config,
            store,
            now,
            sender,
            week,
            send_unknown=True,
            retry_now=True,
            api_catalog=api_catalog(config),
            gpu_catalog=gpu_catalog(),
        )
        last_error = next((m.last_error for m in store.outbox_messages(digest_key(cycle.week))), None)
    finally:
        store.close()
    message = digest_send_message(cycle, last_error)
    if sender.webhook is not None and cycle.outcome in (DigestOutcome.SENT, DigestOutcome.SENT_QUEUED):
        message += f" ({WEBHOOK_AT_LEAST_ONCE})"
    print(message)
    if cycle.outcome in (DigestOutcome.WAITING, DigestOutcome.NO_DATA):
        raise typer.Exit(EXIT_FINDING)


def digest_send_message(cycle: DigestCycle, last_error: str | None = None) -> str:
    """What `digest --send` did on this run, in one line."""
    week = f"digest {cycle.week}"
    unknown = ""
    if cycle.digest is not None and cycle.digest.unknown:
        unknown = f" (the week is unknown: {format_share(cycle.digest.coverage)} of it observed; it says so)"
    when = (
        ""
        if cycle.sent_ts is None
        else datetime.fromtimestamp(cycle.sent_ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
    )
    match cycle.outcome:
        case DigestOutcome.SENT:
            return f"{week} sent{unknown}"
        case DigestOutcome.SENT_QUEUED:
            return f"{week} sent: it was queued by an earlier run and had not gone out until now"
        case DigestOutcome.SENT_BEFORE:
            return f"{week} was sent on {when}: not sent again"
        case DigestOutcome.NO_DATA:
            return f"{week} not sent: no data for {cycle.week} (nothing was observed or billed in it)"
        case DigestOutcome.WAITING:
            reason = f" ({last_error})" if last_error else ""
            return (
                f"{week} queued, not delivered{reason}: the daemon's next flush or the next "
                "`auditor digest --send` retries it"
            )
        case _:
            return f"{week} not sent ({cycle.outcome.value})"
