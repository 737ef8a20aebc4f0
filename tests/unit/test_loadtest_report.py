"""The figures and the page of ``invoke loadtest`` (perf/loadtest_report.py), from samples
made up here."""

from __future__ import annotations

import json
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "perf"))

from loadtest_report import analyse, percentile, summarize, svg_chart, write_report


def write_samples(path: Path, rows: list[tuple[float, str, float, str]]) -> Path:
    path.write_text("".join(f"{t:.3f}\t{n}\t{ms:.2f}\t{o}\n" for t, n, ms, o in rows))
    return path


def test_percentile_is_nearest_rank():
    ordered = [float(i) for i in range(1, 101)]
    assert percentile(ordered, 50) == 50
    assert percentile(ordered, 99) == 99
    assert percentile(ordered, 100) == 100
    assert percentile([], 99) == 0


def test_summary_per_type_per_second_and_errors():
    rows = [(1000.0 + i / 10, "GET /v1/events/{id}", float(i), "ok") for i in range(1, 21)]
    rows += [(1000.5, "POST /v1/events", 30.0, "ok"), (1001.5, "POST /v1/events", 40.0, "503")]
    summary = summarize(rows)
    assert summary["total"]["requests"] == 22
    assert summary["total"]["errors"] == 1
    assert summary["by_type"]["GET /v1/events/{id}"]["p50_ms"] == 10
    assert summary["errors"] == {"POST /v1/events": {"503": 1}}
    timeline = summary["timeline"]["all requests"]
    assert sum(timeline["rps"]) == 22 and sum(timeline["errors"]) == 1


def test_report_and_summary_are_written_and_parse(tmp_path):
    run = write_samples(
        tmp_path / "run.tsv", [(10.0 + i / 4, "GET /v1/events", 5.0 + i, "ok") for i in range(40)]
    )
    hello = write_samples(
        tmp_path / "hello.tsv", [(10.0 + i / 40, "GET /", 1.0, "ok") for i in range(400)]
    )
    meta = {
        "scenario": "events",
        "users": 2,
        "duration_s": 10,
        "url": "http://x",
        "started_at": "t",
    }
    summary = analyse(run, hello, meta)
    assert summary["passed"] is True
    assert summary["ratio_to_hello"] == pytest.approx(40 / 400, rel=0.05)
    report = write_report(tmp_path, summary)
    assert json.loads((tmp_path / "summary.json").read_text())["total"]["requests"] == 40
    page = report.read_text()
    HTMLParser().feed(page)
    assert page.count("<svg") >= 4 and "PASS" in page and "hello" in page


def test_a_run_with_errors_fails_and_lists_them(tmp_path):
    run = write_samples(tmp_path / "run.tsv", [(1.0, "GET /v1/events", 5.0, "ConnectionError")])
    hello = write_samples(tmp_path / "hello.tsv", [(1.0, "GET /", 1.0, "ok")])
    summary = analyse(
        run, hello, {"scenario": "e", "users": 1, "duration_s": 1, "url": "u", "started_at": "t"}
    )
    assert summary["passed"] is False
    page = write_report(tmp_path, summary).read_text()
    assert "FAIL" in page and "ConnectionError" in page


def test_rate_limited_runs_say_how_to_turn_the_limit_off(tmp_path):
    run = write_samples(tmp_path / "run.tsv", [(1.0, "GET /v1/events", 5.0, "429")])
    hello = write_samples(tmp_path / "hello.tsv", [(1.0, "GET /", 1.0, "ok")])
    meta = {"scenario": "e", "users": 1, "duration_s": 1, "url": "u", "started_at": "t"}
    page = write_report(tmp_path, analyse(run, hello, meta)).read_text()
    assert "GATEWAY_RATE_LIMIT=0" in page


def test_chart_leaves_gaps_for_missing_points():
    svg = svg_chart("latency", {"p99": [1.0, None, 3.0, 4.0, None, 5.0]}, "ms")
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 2


def test_a_series_of_runs_makes_the_readmes_table(tmp_path):
    from loadtest import table

    run = write_samples(
        tmp_path / "run.tsv", [(1.0 + i / 10, "GET /v1/events", 5.0, "ok") for i in range(20)]
    )
    hello = write_samples(
        tmp_path / "hello.tsv", [(1.0 + i / 100, "GET /", 1.0, "ok") for i in range(200)]
    )
    summaries = [
        analyse(
            run,
            hello,
            {"scenario": "events", "users": n, "duration_s": 2, "url": "u", "started_at": "t"},
        )
        for n in (10, 500)
    ]
    lines = table(summaries).splitlines()
    assert lines[0].startswith("| users | req/s | errors |") and len(lines) == 4
    assert lines[2].startswith("| 10 |") and lines[3].startswith("| 500 |")
