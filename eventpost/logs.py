"""JSON logs: one line per record on stdout with time, level, service, request_id, message
and any extra fields passed with ``extra=``. The request ID travels in a context variable so
every record written while handling a request or a message carries it."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time

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
    if "@" not in path and "%40" not in path:  # the common case, without the regex
        return path
    return _EMAIL_SEGMENT.sub("***", path)


# One encoder for every record (json.dumps with options builds a new one on each call).
_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service
        self._second: tuple[int, str] = (-1, "")

    def _time(self, created: float) -> str:
        """``2026-12-03T12:00:00.123Z`` (UTC, milliseconds); the part up to the second is
        formatted once per second."""
        second = int(created)
        cached = self._second
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._second = cached
        return f"{cached[1]}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self._time(record.created),
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
        return _ENCODER.encode(entry)


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send every log record of this process to stdout as JSON, tagged with ``service``."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The JSON lines carry none of a record's source file, line, thread or process fields:
    # not collecting them takes a third off every record (the stack walk for the caller
    # above all), which counts on the hot path's one line per request.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # pika logs every frame at INFO/DEBUG; its warnings are what matter.
    logging.getLogger("pika").setLevel(logging.WARNING)
