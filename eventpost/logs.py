"""JSON logs: one line per record on stdout with time, level, service, request_id, message
and any extra fields passed with ``extra=``. The request ID travels in a context variable so
every record written while handling a request or a message carries it."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()) | {
    "message",
    "asctime",
    "taskName",
}


_EMAIL_SEGMENT = re.compile(r"[^/]*(?:@|%40)[^/]*", re.IGNORECASE)


def loggable_path(path: str) -> str:
    """A request path fit for logs: segments holding an email address (as in
    ``/v1/users/me/emails/{email}``) are masked, so logs carry no personal addresses."""
    return _EMAIL_SEGMENT.sub("***", path)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "service": self.service,
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send every log record of this process to stdout as JSON, tagged with ``service``."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pika logs every frame at INFO/DEBUG; its warnings are what matter.
    logging.getLogger("pika").setLevel(logging.WARNING)
