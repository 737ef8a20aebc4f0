"""The figures and the HTML report of ``invoke loadtest`` (perf/loadtest.py).

Reads the raw samples the Locust users wrote (one tab-separated line per request: end time,
name, milliseconds, ``ok`` or what went wrong), sums them up per request type and per second,
and writes ``summary.json`` and a self-contained ``report.html``: the plots are inline SVG, so
the page needs no network and no script to show them.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

PALETTE = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39",
)  # fmt: skip
ALL = "all requests"


def read_samples(path: Path) -> list[tuple[float, str, float, str]]:
    """(end time, name, milliseconds, outcome) of every request in a samples file."""
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 4:
            rows.append((float(parts[0]), parts[1], float(parts[2]), parts[3]))
    return rows


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _figures(latencies: list[float], errors: int, seconds: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "errors": errors,
        "rps": round(len(ordered) / seconds, 1) if seconds > 0 else 0.0,
        "mean_ms": round(sum(ordered) / len(ordered), 2) if ordered else 0.0,
        "p50_ms": round(percentile(ordered, 50), 2),
        "p95_ms": round(percentile(ordered, 95), 2),
        "p99_ms": round(percentile(ordered, 99), 2),
        "max_ms": round(ordered[-1], 2) if ordered else 0.0,
    }


def summarize(rows: list[tuple[float, str, float, str]]) -> dict[str, Any]:
    """Totals, per request type, error kinds and per-second series of one run."""
    if not rows:
        return {"total": _figures([], 0, 0), "by_type": {}, "errors": {}, "timeline": {}}
    start = min(r[0] for r in rows)
    seconds = max(1.0, max(r[0] for r in rows) - start)
    by_name: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, Counter] = defaultdict(Counter)
    per_second: dict[str, dict[int, list[tuple[float, bool]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for t, name, ms, outcome in rows:
        by_name[name].append(ms)
        ok = outcome == "ok"
        if not ok:
            errors[name][outcome] += 1
        second = int(t - start)
        per_second[name][second].append((ms, ok))
        per_second[ALL][second].append((ms, ok))
    total_errors = sum(sum(c.values()) for c in errors.values())
    width = int(seconds) + 1
    timeline = {name: _series(buckets, width) for name, buckets in per_second.items()}
    return {
        "total": _figures([r[2] for r in rows], total_errors, seconds),
        "by_type": {
            name: _figures(lat, sum(errors.get(name, Counter()).values()), seconds)
            for name, lat in sorted(by_name.items())
        },
        "errors": {name: dict(c) for name, c in sorted(errors.items()) if c},
        "timeline": timeline,
    }


def _series(buckets: dict[int, list[tuple[float, bool]]], width: int) -> dict[str, list]:
    out: dict[str, list] = {"rps": [], "errors": [], "p50_ms": [], "p95_ms": [], "p99_ms": []}
    for second in range(width):
        samples = buckets.get(second, [])
        ordered = sorted(ms for ms, _ in samples)
        out["rps"].append(len(samples))
        out["errors"].append(sum(1 for _, ok in samples if not ok))
        for pct in (50, 95, 99):
            out[f"p{pct}_ms"].append(round(percentile(ordered, pct), 2) if ordered else None)
    return out


def analyse(samples: Path, hello_samples: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The summary of a load test and of its yardstick (the bare hello) run."""
    run = summarize(read_samples(samples))
    hello = summarize(read_samples(hello_samples))
    ratio = run["total"]["rps"] / hello["total"]["rps"] if hello["total"]["rps"] else 0.0
    return {
        **meta,
        "passed": run["total"]["errors"] == 0 and run["total"]["requests"] > 0,
        "total": run["total"],
        "by_type": run["by_type"],
        "errors": run["errors"],
        "hello": hello["total"],
        "ratio_to_hello": round(ratio, 3),
        "timeline": run["timeline"],
    }


# -- SVG -------------------------------------------------------------------------------------


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def svg_chart(title: str, series: dict[str, list], unit: str, width=600, height=240) -> str:
    """A line chart (x: seconds into the run) of named series; ``None`` points are gaps."""
    left, right, top, bottom = 56, 12, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for points in series.values() for v in points if v is not None]
    y_max = _nice_max(max(values, default=0))
    x_max = max((len(p) for p in series.values()), default=1) - 1 or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{left}" y="16" class="t">{html.escape(title)}</text>',
    ]
    for i in range(5):
        y = top + plot_h - plot_h * i / 4
        label = f"{y_max * i / 4:,.4g}"
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="g"/>'
        )
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" class="yl">{label}</text>')
    for i in range(6):
        x = left + plot_w * i / 5
        parts.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 16}" class="xl">{x_max * i / 5:.0f}</text>'
        )
    axis = f"seconds into the run; {unit}"
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" class="xl">{axis}</text>')
    for index, points in enumerate(series.values()):
        color = PALETTE[index % len(PALETTE)]
        segments, current = [], []
        for i, v in enumerate(points):
            if v is None:
                if current:
                    segments.append(current)
                current = []
                continue
            x = left + plot_w * i / x_max
            y = top + plot_h - plot_h * min(v, y_max) / y_max
            current.append(f"{x:.1f},{y:.1f}")
        if current:
            segments.append(current)
        for seg in segments:
            if len(seg) == 1:  # a lone point: a dot, a one-point line would not show
                x, y = seg[0].split(",")
                parts.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{color}"/>')
            else:
                parts.append(f'<polyline points="{" ".join(seg)}" stroke="{color}" class="l"/>')
    parts.append("</svg>")
    legend = "".join(
        f'<span><i style="background:{PALETTE[i % len(PALETTE)]}"></i>{html.escape(n)}</span>'
        for i, n in enumerate(series)
    )
    return f"<figure>{''.join(parts)}<figcaption>{legend}</figcaption></figure>"


# -- HTML ------------------------------------------------------------------------------------

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1360px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:24px 0 8px}
.verdict{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-weight:600}
.pass{background:#2ca02c}.fail{background:#d62728}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;border-bottom:1px solid #ddd;
text-align:right}th:first-child,td:first-child{text-align:left}th{background:#f4f4f4}
.grid{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;border:1px solid #e4e4e4;padding:6px;width:min-content}
figcaption span{margin-right:12px;font-size:12px;white-space:nowrap}
figcaption i{display:inline-block;width:10px;height:10px;margin-right:4px}
svg .t{font-weight:600;font-size:13px}svg .g{stroke:#e8e8e8}
svg .yl{font-size:11px;text-anchor:end;fill:#555}
svg .xl{font-size:11px;text-anchor:middle;fill:#555}
svg .l{fill:none;stroke-width:1.6}.muted{color:#666}
"""


def _row(name: str, f: dict[str, Any]) -> str:
    cells = [f"{f['requests']:,}", f"{f['rps']:,.1f}", f"{f['errors']:,}"]
    cells += [f"{f[k]:,.1f}" for k in ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms")]
    return f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _table(summary: dict[str, Any]) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in ("request", "count", "req/s", "errors", "mean ms", "p50", "p95", "p99", "max")
    )
    rows = [_row(n, f) for n, f in summary["by_type"].items()]
    rows.append(_row(ALL, summary["total"]).replace("<td>", "<td><b>", 1))
    rows.append(_row("bare Falcon ASGI hello (yardstick)", summary["hello"]))
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _charts(summary: dict[str, Any]) -> str:
    timeline = summary["timeline"]
    names = [n for n in timeline if n != ALL]
    out = ['<h2>Over time</h2><div class="grid">']
    if ALL in timeline:
        overall = timeline[ALL]
        out.append(svg_chart("Throughput, all requests", {ALL: overall["rps"]}, "req/s"))
        pcts = {f"p{p}": overall[f"p{p}_ms"] for p in (50, 95, 99)}
        out.append(svg_chart("Latency, all requests", pcts, "ms"))
    rps = {n: timeline[n]["rps"] for n in names}
    out.append(svg_chart("Throughput per request type", rps, "req/s"))
    errors = {n: timeline[n]["errors"] for n in names}
    out.append(svg_chart("Errors per request type", errors, "errors/s"))
    out.append('</div><h2>Latency per request type (p50 / p95 / p99)</h2><div class="grid">')
    for name in names:
        pcts = {f"p{p}": timeline[name][f"p{p}_ms"] for p in (50, 95, 99)}
        out.append(svg_chart(name, pcts, "ms", width=420, height=200))
    out.append("</div>")
    return "".join(out)


def render_html(summary: dict[str, Any]) -> str:
    """The report page of one load test."""
    total, hello = summary["total"], summary["hello"]
    verdict = "PASS: no errors" if summary["passed"] else f"FAIL: {total['errors']:,} errors"
    errors = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(kind)}</td><td>{count:,}</td></tr>"
        for name, kinds in summary["errors"].items()
        for kind, count in sorted(kinds.items())
    )
    error_table = (
        f"<h2>Errors</h2><table><tr><th>request</th><th>status / exception</th><th>count</th></tr>"
        f"{errors}</table>"
        if errors
        else ""
    )
    if any("429" in kinds for kinds in summary["errors"].values()):
        error_table += (
            "<p><b>429s: the gateway's rate limit answered, not the service.</b> One load client "
            "sends everything from one address: run the suite with GATEWAY_RATE_LIMIT=0.</p>"
        )
    notes = "; ".join(html.escape(n) for n in summary.get("notes", []))
    if summary.get("load_average"):
        before, after = summary["load_average"]
        notes += f" &middot; machine load average {before} before, {after} after"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>EventPost load test: {html.escape(summary["scenario"])}, {summary["users"]} users</title>
<style>{STYLE}</style></head><body>
<h1>EventPost load test: <code>{html.escape(summary["scenario"])}</code>,
{summary["users"]} users, {summary["duration_s"]} s</h1>
<p class="muted">{html.escape(summary["url"])} &middot; started {summary["started_at"]} UTC
&middot; {notes} &middot; Locust users of perf/taurus/</p>
<p><span class="verdict {"pass" if summary["passed"] else "fail"}">{verdict}</span>
&nbsp; <b>{total["rps"]:,.0f} req/s</b>, p50 {total["p50_ms"]:,.1f} ms,
p95 {total["p95_ms"]:,.1f} ms, p99 {total["p99_ms"]:,.1f} ms &nbsp;&middot;&nbsp;
bare Falcon ASGI hello (uvicorn, one worker, same client, same users):
<b>{hello["rps"]:,.0f} req/s</b>, so this is <b>{summary["ratio_to_hello"]:.2f}</b> of it.</p>
<h2>Per request type</h2>{_table(summary)}{error_table}{_charts(summary)}
</body></html>
"""


def write_report(run_dir: Path, summary: dict[str, Any]) -> Path:
    """``summary.json`` and ``report.html`` in ``run_dir``; the report's path."""
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    report = run_dir / "report.html"
    report.write_text(render_html(summary))
    return report
