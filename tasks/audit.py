"""``invoke audit``: pip-audit (pinned in the dev extras) over requirements.txt.

Three outcomes, said plainly on the last line:

- ``AUDIT PASSED``: a vulnerability service answered for every pinned requirement and none has
  a known vulnerability (other than those listed, each with why it does not apply, under
  ``[tool.eventpost.audit.ignore]`` in pyproject.toml): exit 0.
- ``AUDIT FAILED``: known vulnerabilities were found: exit 1, each listed.
- ``AUDIT NOT RUN``: no vulnerability service could be asked (offline, DNS, a package index
  mirror without PyPI's per-version JSON API), or it could not audit every requirement: exit
  0, so CI on a machine without those services goes on, and it says which requirements went
  unaudited and why. ``--strict`` makes this exit 2 (for a machine that does reach them).

pip-audit itself treats a requirement it cannot look up (PyPI answering 404) as "skipped" and
still reports "No known vulnerabilities found": that is counted as *not audited* here, never
as clean. Services are tried in order (``--service``, default ``pypi,osv,esms``) until one audits
everything. Only the standard library and invoke are imported here.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from invoke import Exit, task

from tasks.core import ROOT, VENV_PY, ensure_installed

NOT_RUN_EXIT = 2


@dataclass
class Attempt:
    """What one vulnerability service said about requirements.txt."""

    service: str
    error: str | None = None  # pip-audit could not run at all
    audited: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # name==version -> why
    found: list[tuple[str, str, str, str]] = field(default_factory=list)  # name, ver, id, fix

    @property
    def complete(self) -> bool:
        return self.error is None and not self.skipped and self.audited > 0


def ignored_vulnerabilities() -> dict[str, str]:
    """``[tool.eventpost.audit.ignore]`` of pyproject.toml: vulnerability id -> why it does not
    apply."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return dict(config.get("tool", {}).get("eventpost", {}).get("audit", {}).get("ignore", {}))


def run_pip_audit(
    service: str, requirements: Path, ignore: dict[str, str], osv_url: str = ""
) -> Attempt:
    """pip-audit with one service over ``requirements`` (fully pinned: no resolution)."""
    attempt = Attempt(service)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "audit.json"
        argv = [
            str(VENV_PY), "-m", "pip_audit", "-r", str(requirements), "--no-deps",
            "--disable-pip", "--vulnerability-service", service, "--format", "json",
            "--output", str(report), "--progress-spinner", "off", "--timeout", "20",
            *(arg for vuln in ignore for arg in ("--ignore-vuln", vuln)),
            *(("--osv-url", osv_url) if osv_url else ()),
        ]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if not report.exists():
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            attempt.error = lines[-1][:300] if lines else f"pip-audit exited {proc.returncode}"
            return attempt
        read_report(attempt, json.loads(report.read_text()))
    return attempt


def read_report(attempt: Attempt, data: dict) -> None:
    """Count pip-audit's JSON report into ``attempt``: a skipped requirement is not audited."""
    for dep in data.get("dependencies", []):
        pin = dep["name"] + (f"=={dep['version']}" if "version" in dep else "")
        if "skip_reason" in dep:
            attempt.skipped[pin] = dep["skip_reason"]
            continue
        attempt.audited += 1
        for vuln in dep.get("vulns", []):
            fixes = ", ".join(vuln.get("fix_versions") or []) or "no fixed version"
            attempt.found.append((dep["name"], dep["version"], vuln["id"], fixes))


def _report(attempt: Attempt) -> None:
    if attempt.error:
        print(f"  {attempt.service}: pip-audit could not run: {attempt.error}")
        return
    print(
        f"  {attempt.service}: {attempt.audited} requirement(s) audited, "
        f"{len(attempt.skipped)} not audited, {len(attempt.found)} vulnerability(ies) found"
    )
    for pin, why in list(attempt.skipped.items())[:5]:
        print(f"    not audited: {pin}: {why}")
    if len(attempt.skipped) > 5:
        print(
            f"    ... and {len(attempt.skipped) - 5} more not audited for the same kind of reason"
        )


@task(
    help={
        "service": "vulnerability services to try in order (pip-audit's names): pypi,osv,esms",
        "strict": "exit 2 (not 0) when the audit could not be run",
        "osv_url": "another OSV API endpoint (a mirror, or the tests' double)",
    }
)
def audit(c, service="pypi,osv,esms", strict=False, osv_url=""):
    """pip-audit over requirements.txt: exit 1 on known vulnerabilities; when no service could
    be asked, say so plainly (exit 0, or 2 with --strict)."""
    ensure_installed(c)
    ignore = ignored_vulnerabilities()
    for vuln, why in ignore.items():
        print(f"ignored {vuln}: {why}")
    attempts = []
    print(f"pip-audit over {ROOT / 'requirements.txt'}:")
    for name in (s.strip() for s in service.split(",") if s.strip()):
        attempt = run_pip_audit(name, ROOT / "requirements.txt", ignore, osv_url)
        attempts.append(attempt)
        _report(attempt)
        if attempt.found:
            for dep, version, vuln, fixes in attempt.found:
                print(f"    {dep}=={version}: {vuln} (fixed in: {fixes})")
            raise Exit(f"AUDIT FAILED: {len(attempt.found)} known vulnerability(ies)", 1)
        if attempt.complete:
            print(f"AUDIT PASSED: 0 known vulnerabilities in {attempt.audited} requirements")
            return
    partial = max(attempts, key=lambda a: a.audited, default=None)
    audited = partial.audited if partial else 0
    message = (
        "AUDIT NOT RUN: no vulnerability service could audit every requirement "
        f"(tried {', '.join(a.service for a in attempts) or 'none'}; at best {audited} audited). "
        "Nothing is known about the rest: this is not a pass."
    )
    if strict:
        raise Exit(message, NOT_RUN_EXIT)
    print(message)
