"""Keep secrets out of everything a run writes: manifests, W&B config, logs.

A secret is the value of any environment variable whose name contains KEY, TOKEN, SECRET or
PASSWORD (WANDB_API_KEY, HF_TOKEN, AZURE_CLIENT_SECRET, ...). Values are read at call time, so a key
put into the environment later in the run (the Azure Key Vault read) is covered too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

SECRET_NAME_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
MIN_SECRET_LENGTH = 6
"""Shorter values (flags such as "1" or "false") are not secrets, and redacting them would mangle text."""
MASK = "***"


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-named environment variables, longest first (so no secret is half-redacted)."""
    environ = os.environ if environ is None else environ
    values = {
        value
        for name, value in environ.items()
        if any(part in name.upper() for part in SECRET_NAME_PARTS) and len(value) >= MIN_SECRET_LENGTH
    }
    return sorted(values, key=len, reverse=True)


def redact(obj, secrets: list[str] | None = None):
    """A copy of `obj` (str, or dicts / lists / tuples of them, recursively) with every secret value
    replaced by ***. Other values are returned unchanged."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(obj, str):
        for secret in secrets:
            obj = obj.replace(secret, MASK)
        return obj
    if isinstance(obj, Mapping):
        return {redact(key, secrets): redact(value, secrets) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact(value, secrets) for value in obj)
    return obj


class RedactingFilter(logging.Filter):
    """Rewrites each log record's message (arguments merged in) with secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = secret_values()
        if secrets:
            message = record.getMessage()
            redacted = redact(message, secrets)
            if redacted != message:
                record.msg, record.args = redacted, None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redact(record.exc_text, secrets)
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Add a RedactingFilter to every handler of `logger` (default: the root logger).

    Filters on handlers see records from every child logger, unlike filters on a logger."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
