"""``invoke loadtest``, run short: it starts a suite where none answers (a free port), populates
it, runs the seed's mix, measures the bare hello, and leaves a report and a summary that parse."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from devtools.launcher import free_port, http_status

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq, pytest.mark.timeout(900)]


def test_a_short_loadtest_writes_a_report_and_a_summary():
    url = f"http://127.0.0.1:{free_port()}"
    invoke = str(Path(sys.executable).parent / "invoke")
    argv = [invoke, "loadtest", "--users", "3", "--duration", "4", "--url", url]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=840)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "No suite answers" in done.stdout
    assert re.search(r"events: +\d+/4 s, 3 users", done.stderr), "no progress line"
    report = Path(re.search(r"^Report: (.+)$", done.stdout, re.M).group(1))
    summary = json.loads((report.parent / "summary.json").read_text())

    assert summary["scenario"] == "events" and summary["users"] == 3
    assert summary["suite_started_here"] is True
    assert summary["total"]["requests"] > 0 and summary["hello"]["requests"] > 0
    assert summary["ratio_to_hello"] > 0
    assert {"GET /v1/events", "GET /v1/events/{id}"} <= set(summary["by_type"])
    page = report.read_text()
    HTMLParser().feed(page)
    assert "<svg" in page and "hello" in page
    # The suite it started is stopped again.
    assert http_status(f"{url}/health") is None
