"""Logging set-up: readable text or JSON lines, with every configured secret masked."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from config.settings import Settings

# Ids of what the current task works on (channel, event, ticket, conversation); every log
# line carries them, so one ticket's story can be grepped out of a busy log.
log_context: ContextVar[dict[str, Any] | None] = ContextVar("firstline_log_context", default=None)


class ContextIds(logging.Filter):
    """Copies :data:`log_context` onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Attach the ids; always keep the record."""
        for key, value in (log_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class RedactSecrets(logging.Filter):
    """Replaces any configured secret that appears in a log record with ``***``.

    Tokens are SecretStr in the settings, but a library may still put one into a URL it
    logs (the Telegram Bot API path carries the token); this catches it at the last step.
    """

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 6]

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask secrets in the formatted message; always keep the record."""
        if not self.secrets:
            return True
        msg = record.getMessage()
        masked = msg
        for secret in self.secrets:
            masked = masked.replace(secret, "***")
        if masked != msg:
            record.msg = masked
            record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            for secret in self.secrets:
                text = text.replace(secret, "***")
            record.exc_text = text
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the extra ids (ticket, conversation) when given."""

    def format(self, record: logging.LogRecord) -> str:
        """Serialise ``record``."""
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("ticket", "conversation", "channel", "event_id", "target", "sla"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value in the settings."""
    values = [
        settings.telegram.bot_token,
        settings.telegram.webhook_secret,
        settings.slack.bot_token,
        settings.slack.app_token,
        settings.slack.signing_secret,
    ]
    return [v.get_secret_value() for v in values if v is not None]


def setup_logging(settings: Settings, stream: Any = None) -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if settings.log.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(ContextIds())
    handler.addFilter(RedactSecrets(secrets_of(settings)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log.level.upper())
    # Chatty libraries stay at warnings unless debugging.
    if root.level > logging.DEBUG:
        for name in ("aiosqlite", "sqlalchemy.engine", "apscheduler", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
