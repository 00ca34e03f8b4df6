"""Secrets out of every line the program writes: log records and error messages alike.

Two ways a secret is recognised:
- by its shape: a password in a URL's user info (`postgresql://user:PASSWORD@host`), a Slack webhook
  URL, a Slack or Bearer token, an AWS access key id, a credential in a query string or in a
  libpq key/value DSN;
- by its value: the process registers the secrets it reads (the Slack token, the webhook URL, the
  AWS secret key, the store's password) with `register_secret`, and every later line has them hidden
  whatever their shape.

`RedactingFilter` goes on every log handler (ours, and those that slack_sdk's or urllib3's loggers
propagate to); the CLI's failure boundary passes every message through `redact`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping

MASK = "***"
MIN_SECRET_CHARS = 6
"""Shorter registered values are not masked on their own: `***` for every `abc` would garble lines."""

SECRET_ENV_VARS = (
    "SLACK_BOT_TOKEN",
    "SLACK_WEBHOOK_URL",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "PGPASSWORD",
    "AUDITOR_EXPORTER_PASSWORD",
)
"""Environment variables whose values are secrets wherever they appear."""

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Slack incoming webhooks and workflow triggers: the path is the secret.
    (re.compile(r"(https?://hooks\.slack(?:-gov)?\.com/)[^\s'\"<>,]+"), rf"\1{MASK}"),
    # Slack tokens: bot, user, app, config, refresh.
    (re.compile(r"\bxox[abeoprs]-[A-Za-z0-9-]+"), f"xox-{MASK}"),
    (re.compile(r"\bxapp-[A-Za-z0-9-]+"), f"xapp-{MASK}"),
    # A password in a URL's user info: scheme://user:password@host (the user name is kept).
    (re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*):[^\s@/'\"]*@"), rf"\1:{MASK}@"),
    # Authorization headers and bearer tokens.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), rf"\1 {MASK}"),
    # AWS access key ids.
    (re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{16}\b"), f"AKIA{MASK}"),
    # Credentials in a query string or a libpq DSN: token=…, password=…, X-Amz-Signature=…
    (
        re.compile(
            r"(?i)\b((?:access_?token|token|api_?key|apikey|password|passwd|secret|signature"
            r"|client_secret|x-amz-signature|x-amz-credential|x-amz-security-token|sig)\s*[=:]\s*)"
            r"(?!\*\*\*)[^\s&'\",;]+"
        ),
        rf"\1{MASK}",
    ),
)

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Hide this exact value (and its URL-quoted form) in every line written from now on."""
    if value is None:
        return
    value = value.strip()
    if len(value) < MIN_SECRET_CHARS:
        return
    from urllib.parse import quote

    with _lock:
        _secrets.add(value)
        _secrets.add(quote(value, safe=""))


def register_env_secrets(env: Mapping[str, str], names: Iterable[str] = SECRET_ENV_VARS) -> None:
    for name in names:
        register_secret(env.get(name))


def redact(text: str) -> str:
    """The text with every secret it holds replaced by `***`."""
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """A handler filter: the record's message, arguments and traceback are redacted before formatting."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a library's malformed format string: show it as it came
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_on_all_handlers(root: logging.Logger | None = None) -> int:
    """Put one RedactingFilter on every handler of every logger that exists now (the root's included);
    returns how many handlers got it. Loggers created later propagate to the root's handlers."""
    root = root or logging.getLogger()
    loggers: list[logging.Logger] = [root]
    loggers.extend(
        logger for logger in root.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    )
    count = 0
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
                count += 1
    return count
