"""``invoke audit``: the real pip-audit over the real requirements.txt, against a local double of
OSV's documented query API (``POST /v1/query`` with ``{package: {name, ecosystem}, version}``,
answering ``{vulns: [...]}`` or ``{}``), since the real services may not be reachable here.

It must pass only when every requirement was audited, fail (1) on a known vulnerability, and
say plainly that the audit was not run (0, or 2 with ``--strict``) when no service answers or
when pip-audit skipped requirements (what it does, reporting "No known vulnerabilities
found", when PyPI's per-version JSON API answers 404)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tasks.audit import Attempt, read_report

ROOT = Path(__file__).resolve().parents[2]
PINNED = sum(
    1
    for line in (ROOT / "requirements.txt").read_text().splitlines()
    if line and not line.startswith((" ", "#"))
)


class OsvDouble:
    """OSV's query endpoint: ``vulns`` maps a package name to the OSV records to answer;
    ``status`` other than 200 answers every query with that status."""

    def __init__(self) -> None:
        self.vulns: dict[str, list[dict]] = {}
        self.status = 200
        self.queries: list[dict] = []
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                double.queries.append(query)
                found = double.vulns.get(query["package"]["name"], [])
                body = json.dumps({"vulns": found} if found else {}).encode()
                self.send_response(double.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/query"

    def __enter__(self) -> OsvDouble:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def osv() -> Iterator[OsvDouble]:
    with OsvDouble() as double:
        yield double


def audit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", "audit", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_every_requirement_audited_and_clean_passes(osv):
    done = audit("--service", "osv", "--osv-url", osv.url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"AUDIT PASSED: 0 known vulnerabilities in {PINNED} requirements" in done.stdout
    assert len(osv.queries) == PINNED
    assert {q["package"]["ecosystem"] for q in osv.queries} == {"PyPI"}


@pytest.mark.slow
def test_a_known_vulnerability_fails(osv):
    osv.vulns["jinja2"] = [
        {
            "id": "GHSA-test-0000-0000",
            "summary": "a test advisory",
            "affected": [
                {
                    "package": {"name": "jinja2", "ecosystem": "PyPI"},
                    "ranges": [
                        {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "9.9.9"}]}
                    ],
                }
            ],
        }
    ]
    done = audit("--service", "osv", "--osv-url", osv.url)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "GHSA-test-0000-0000 (fixed in: 9.9.9)" in done.stdout
    assert "AUDIT FAILED: 1 known vulnerability(ies)" in done.stderr + done.stdout


@pytest.mark.slow
def test_a_service_that_does_not_answer_is_not_a_pass(osv):
    osv.status = 503
    done = audit("--service", "osv", "--osv-url", osv.url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "osv: pip-audit could not run" in done.stdout
    assert "AUDIT NOT RUN" in done.stdout
    assert "AUDIT PASSED" not in done.stdout
    strict = audit("--service", "osv", "--osv-url", osv.url, "--strict")
    assert strict.returncode == 2
    assert "AUDIT NOT RUN" in strict.stderr + strict.stdout


def test_skipped_requirements_count_as_not_audited():
    # pip-audit's report when PyPI answers 404 for a version: it calls this "no known
    # vulnerabilities"; here it is an incomplete audit.
    attempt = Attempt("pypi")
    read_report(
        attempt,
        {
            "dependencies": [
                {"name": "falcon", "version": "4.4.0", "vulns": []},
                {
                    "name": "aiohttp",
                    "skip_reason": "Dependency not found on PyPI and could not be audited: "
                    "aiohttp (3.14.5)",
                },
            ]
        },
    )
    assert attempt.audited == 1
    assert list(attempt.skipped) == ["aiohttp"]
    assert not attempt.complete
    assert attempt.found == []
