"""The broker's log: one handler on stderr, text for a terminal or one JSON object per line.

``configure(format, level)`` installs it on the root logger, so uvicorn's loggers (given no
config of their own: ``server.run`` passes ``log_config=None``) and ours share it. A record's
``extra`` fields (the request log's ``request_id``, ``route``, ``status`` ...) are JSON keys, or
``key=value`` after the message in text. Nothing here filters secrets: the callers never log
them (no headers, no query strings, no bodies; ``observe.requests`` logs the route template).
Text is for a terminal, so each record is one line with what it shows escaped
(``shared.terminal.text``: a newline or an escape sequence in a name cannot forge a line or
drive the terminal); JSON is exact. uvicorn's ``color_message`` (its message again, with ANSI
colours) is left out of both, and alembic's start-up plugin list is held at warning.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

from access.shared import terminal

__all__ = ["LOG_FORMATS", "JsonFormatter", "TextFormatter", "configure"]

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

# Attributes every LogRecord has: whatever else a record carries came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


_LEFT_OUT = frozenset({"color_message"})  # uvicorn's: its message again, with ANSI colours


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD and key not in _LEFT_OUT and not key.startswith("_")
    }


def _shown(value: object) -> str:
    text = str(value)
    return text if text.isascii() and text.isprintable() else terminal.text(text)


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
        text = f"{record.asctime} {record.levelname} {_shown(record.name)}: {_shown(record.message)}"
        extras = " ".join(
            f"{_shown(key)}={_shown(value)}" for key, value in _extras(record).items() if value is not None
        )
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
    # alembic lists its autogenerate plugins at INFO on every start: noise, nothing to act on.
    for name in ("httpx", "httpcore", "alembic.runtime.plugins"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
