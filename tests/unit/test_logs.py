"""The JSON log lines' batching handler and the request edges' direct line (eventpost.logs)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eventpost.logs import BatchingStreamHandler, JsonFormatter, log_line, request_id_var

ROOT = Path(__file__).resolve().parents[2]


def _handler(stream, **kwargs) -> BatchingStreamHandler:
    handler = BatchingStreamHandler(stream, **kwargs)
    handler.setFormatter(JsonFormatter("events"))
    return handler


@pytest.fixture
def only_handler():
    """Makes a handler the root logger's only one for the test (as configure_logging does;
    pytest's own capture handlers are put back after)."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level

    def install(handler: logging.Handler) -> logging.Logger:
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        return logging.getLogger("tests.logs")

    yield install
    root.handlers[:] = saved
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_info_lines_wait_and_are_written_within_max_delay(only_handler):
    stream = io.StringIO()
    log = only_handler(_handler(stream, max_delay=0.05))
    log.info("first")
    log.info("second")
    assert stream.getvalue() == ""  # not one write per line
    deadline = time.monotonic() + 5
    while len(_lines(stream)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [line["message"] for line in _lines(stream)] == ["first", "second"]


def test_a_warning_is_written_at_once_after_every_line_before_it(only_handler):
    stream = io.StringIO()
    log = only_handler(_handler(stream, max_delay=60))
    log.info("a")
    log.info("b")
    log.warning("c")
    assert [(line["level"], line["message"]) for line in _lines(stream)] == [
        ("INFO", "a"),
        ("INFO", "b"),
        ("WARNING", "c"),
    ]


def test_a_full_batch_is_written_at_once(only_handler):
    stream = io.StringIO()
    log = only_handler(_handler(stream, max_delay=60, max_bytes=1000))
    for i in range(20):  # ~150 bytes a line
        log.info("line %d", i)
    written = _lines(stream)
    assert 5 <= len(written) < 20
    assert [line["message"] for line in written] == [f"line {i}" for i in range(len(written))]


def test_flush_writes_what_waits(only_handler):
    stream = io.StringIO()
    handler = _handler(stream, max_delay=60)
    only_handler(handler).info("waiting")
    assert stream.getvalue() == ""
    handler.flush()  # what logging.shutdown() does at exit
    assert [line["message"] for line in _lines(stream)] == ["waiting"]


def test_a_process_that_exits_writes_its_last_lines():
    code = (
        "import logging, sys; from eventpost.logs import configure_logging; "
        "configure_logging('probe'); logging.getLogger('probe').info('the last line'); "
        "sys.exit(3)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 3
    assert [json.loads(line)["message"] for line in done.stdout.splitlines()] == ["the last line"]


def test_a_multiprocessing_child_writes_its_last_lines_too():
    # A forked multiprocessing child (as a granian worker is) ends with os._exit: no atexit.
    code = (
        "import logging, multiprocessing; from eventpost.logs import configure_logging\n"
        "def child():\n"
        "    configure_logging('worker'); logging.getLogger('w').info('child line')\n"
        "p = multiprocessing.get_context('fork').Process(target=child); p.start(); p.join()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["message"] for line in done.stdout.splitlines()] == ["child line"]


def test_a_forked_child_does_not_write_the_lines_its_parent_still_holds(only_handler, tmp_path):
    path = tmp_path / "out.log"
    with path.open("a", buffering=1) as stream:
        handler = _handler(stream, max_delay=60)
        log = only_handler(handler)
        log.info("parent")
        pid = os.fork()
        if pid == 0:  # the child
            try:
                log.info("child")
                handler.flush()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        handler.flush()
    messages = [json.loads(line)["message"] for line in path.read_text().splitlines()]
    assert sorted(messages) == ["child", "parent"]


def test_log_line_writes_what_logger_log_would(only_handler):
    stream = io.StringIO()
    handler = _handler(stream, max_delay=60)
    log = only_handler(handler)
    fields = {"request_id": "r-1", "method": "GET", "path": "/v1/x", "status": 200}
    log.info("GET /v1/x 200", extra=fields)
    log_line(log, logging.INFO, "GET /v1/x 200", fields)
    log_line(log, logging.DEBUG, "not at INFO", fields)
    handler.flush()
    by_logger, direct = _lines(stream)
    assert by_logger.pop("time")[:4] == direct.pop("time")[:4]
    assert direct == by_logger
    assert list(direct) == list(by_logger)  # the same order of keys too
    assert direct["request_id"] == "r-1" and direct["level"] == "INFO"


def test_log_line_takes_the_request_id_of_the_context(only_handler):
    stream = io.StringIO()
    handler = _handler(stream, max_delay=60)
    log = only_handler(handler)
    token = request_id_var.set("ctx-id")
    try:
        log_line(log, logging.INFO, "hello", {"status": 200})
    finally:
        request_id_var.reset(token)
    handler.flush()
    assert _lines(stream)[0]["request_id"] == "ctx-id"


def test_log_line_goes_through_logging_when_anything_else_listens(caplog):
    # Under pytest the root logger has the capture handlers too: the record is made as usual.
    caplog.set_level(logging.INFO)
    log_line(logging.getLogger("tests.logs"), logging.INFO, "GET /v1/y 404", {"status": 404})
    (record,) = [r for r in caplog.records if r.name == "tests.logs"]
    assert record.getMessage() == "GET /v1/y 404"
    assert record.status == 404  # type: ignore[attr-defined]
