"""The broker's log: one handler on stderr, text for a terminal or one JSON object per line.

``configure(format, level)`` installs it on the root logger, so uvicorn's loggers (given no
config of their own: ``server.run`` passes ``log_config=None``) and ours share it. A record's
``extra`` fields (the request log's ``request_id``, ``route``, ``status`` ...) are JSON keys, or
``key=value`` after the message in text. Nothing here filters secrets: the callers never log
them (no headers, no query strings, no bodies; ``observe.requests`` logs the route template).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["LOG_FORMATS", "JsonFormatter", "TextFormatter", "configure"]

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

# Attributes every LogRecord has: whatever else a record carries came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value for key, value in vars(record).items() if key not in _STANDARD and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ...extras, "exception"?}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` for a person at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        extras = " ".join(f"{key}={value}" for key, value in _extras(record).items() if value is not None)
        return f"{text} {extras}" if extras else text


def configure(log_format: LogFormat, level: str) -> None:
    """Send every log record at ``level`` or above to stderr in ``log_format``.

    Raises:
        ValueError: ``level`` is no logging level.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs each request's full URL at INFO: a webhook's URL (Slack's) is its secret.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
