"""JSON logs: one line per record on stdout with time, level, service, request_id, message
and any extra fields passed with ``extra=``. The request ID travels in a context variable so
every record written while handling a request or a message carries it."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any, TextIO

import orjson

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


def _encode(entry: Mapping[str, object]) -> str:
    # orjson: a third of the cost of a request's log line went into the json module's
    # encoder; a value JSON has no form for is logged as its str().
    return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


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

    def _entry(
        self, created: float, level: str, logger: str, message: str, request_id: object
    ) -> dict[str, object]:
        """The common fields of a line (the context's request ID unless one is given)."""
        return {
            "time": self._time(created),
            "level": level,
            "service": self.service,
            "request_id": request_id or request_id_var.get(),
            "logger": logger,
            "message": message,
        }

    def line(self, level: int, logger: str, message: str, fields: Mapping[str, object]) -> str:
        """The line :meth:`format` would write for a record of ``logger`` at ``level`` made
        now with ``message`` and ``extra=fields`` (see :func:`log_line`)."""
        name = logging.getLevelName(level)
        entry = self._entry(time.time(), name, logger, message, fields.get("request_id"))
        for key, value in fields.items():
            if key not in entry:
                entry[key] = value
        return _encode(entry)

    def format(self, record: logging.LogRecord) -> str:
        entry = self._entry(
            record.created,
            record.levelname,
            record.name,
            record.getMessage(),
            getattr(record, "request_id", None),
        )
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return _encode(entry)


#: Every BatchingStreamHandler: a forked child drops the lines it inherited (the parent
#: writes them), so no line is written twice.
_BATCHING: weakref.WeakSet[BatchingStreamHandler] = weakref.WeakSet()


def _forget_inherited_lines() -> None:
    for handler in list(_BATCHING):
        handler._pending.clear()
        handler._pending_bytes = 0


os.register_at_fork(after_in_child=_forget_inherited_lines)


class BatchingStreamHandler(logging.StreamHandler):
    """A stream handler that writes its lines in batches, as zap's ``BufferedWriteSyncer``
    does: lines below ``flush_level`` wait in memory until ``max_bytes`` of them are waiting or
    the oldest has waited ``max_delay`` seconds, whichever comes first; a line at
    ``flush_level`` or above is written at once, after every line before it (the order is
    kept). :meth:`flush` (called at exit by :func:`logging.shutdown`) writes what waits.

    Why: a request's log line was the largest single cost of a GET by id in the events
    service (~30 µs of CPU inside the server), and its ``write`` a system call that gives up
    the GIL; batching alone took that GET from 115 to 100 µs of CPU. The price: a process
    killed outright (SIGKILL, a crash of the interpreter) loses the INFO lines of its last
    ``max_delay`` seconds, never a warning or an error."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        max_bytes: int = 64 * 1024,
        max_delay: float = 0.2,
        flush_level: int = logging.WARNING,
    ) -> None:
        super().__init__(stream)
        self.max_bytes = max_bytes
        self.max_delay = max_delay
        self.flush_level = flush_level
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._wake = threading.Event()
        self._flusher_pid: int | None = None  # the process whose flusher thread runs
        _BATCHING.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the record's line; write the batch when it is full or the record is a
        warning or worse."""
        try:
            line = self.format(record)
        except Exception:  # as StreamHandler: a broken record must not break the caller
            self.handleError(record)
            return
        self.emit_line(line, record.levelno)

    def emit_line(self, line: str, level: int) -> None:
        """Queue a line already formatted (no terminator); write the batch when it is full or
        ``level`` is ``flush_level`` or above."""
        self.acquire()
        try:
            self._pending.append(line + self.terminator)
            self._pending_bytes += len(line) + 1
            if level >= self.flush_level or self._pending_bytes >= self.max_bytes:
                self._write_pending()
            elif len(self._pending) == 1:
                self._start_flusher()
                self._wake.set()
        finally:
            self.release()

    def flush(self) -> None:
        """Write every waiting line and flush the stream."""
        self.acquire()
        try:
            self._write_pending()
        finally:
            self.release()

    def _write_pending(self) -> None:
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            try:
                self.stream.write(text)
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": "log lines lost"}))
        with contextlib.suppress(Exception):
            self.stream.flush()

    def _start_flusher(self) -> None:
        # Started on first use in each process: a thread does not survive a fork.
        pid = os.getpid()
        if self._flusher_pid == pid:
            return
        self._flusher_pid = pid
        self._wake = threading.Event()
        threading.Thread(target=self._flush_loop, name="log-flusher", daemon=True).start()
        if mp_util := sys.modules.get("multiprocessing.util"):
            # A forked multiprocessing child (a granian worker) leaves with os._exit, past
            # atexit and logging.shutdown; its exit does run multiprocessing's finalizers.
            mp_util.Finalize(None, self.flush, exitpriority=0)

    def _flush_loop(self) -> None:
        wake = self._wake
        while True:
            wake.wait()
            time.sleep(self.max_delay)
            wake.clear()
            self.flush()


def _direct_handler(logger: logging.Logger, level: int) -> BatchingStreamHandler | None:
    """The one handler a record of ``logger`` at ``level`` would reach, when that is a
    :class:`BatchingStreamHandler` with a :class:`JsonFormatter` and nothing on the way
    filters or adds handlers (as :func:`configure_logging` sets up); else None."""
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        if current.parent is None:  # the root
            handlers = current.handlers
            if len(handlers) != 1:
                return None
            handler = handlers[0]
            if (
                type(handler) is BatchingStreamHandler
                and type(handler.formatter) is JsonFormatter
                and not handler.filters
                and level >= handler.level
            ):
                return handler
            return None
        if current.handlers or not current.propagate:
            return None
        current = current.parent
    return None


def log_line(logger: logging.Logger, level: int, message: str, fields: Mapping[str, Any]) -> None:
    """Log ``message`` (already formatted) with ``extra=fields``, as ``logger.log`` would.

    The request edges log one line per request with it: where logging is as
    :func:`configure_logging` made it, the JSON line is written straight to the handler,
    without the :class:`logging.LogRecord` and the calls around it (a third of the line's
    cost); anywhere else (a test's log capture, another handler) it is ``logger.log``."""
    if not logger.isEnabledFor(level):
        return
    handler = _direct_handler(logger, level)
    if handler is None:
        logger.log(level, "%s", message, extra=fields)
        return
    formatter = handler.formatter
    assert isinstance(formatter, JsonFormatter)
    handler.emit_line(formatter.line(level, logger.name, message, fields), level)


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send every log record of this process to stdout as JSON, tagged with ``service``
    (in batches: see :class:`BatchingStreamHandler`)."""
    handler = BatchingStreamHandler(sys.stdout)
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
