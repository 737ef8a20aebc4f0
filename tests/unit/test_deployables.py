"""Each deployable's entry module imports its own code and the toolkit only: no dev tooling
(the launcher, the dev SMTP sink, sample data, HTTP doubles) and no test helpers. Container
images hold only a deployable and the toolkit, so an import of these would fail there."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: What each container image runs, by the module its command imports.
ENTRY_MODULES = (
    "gateway.asgi",
    "gateway.__main__",
    "services.users.wsgi",
    "services.users.admin",
    "services.events.wsgi",
    "services.notifications.wsgi",
    "services.notifications.worker",
    "services.notifications.dispatcher",
    "email_sender.__main__",
    "eventpost.messaging.relay",
)

#: Top-level packages that must never be imported by a deployable.
FORBIDDEN = ("devtools", "tests", "perf", "tasks", "pytest", "mongomock", "httpx", "aiosmtpd")

_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))
"""


@pytest.mark.parametrize("module", ENTRY_MODULES)
def test_entry_module_imports_no_dev_or_test_tooling(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, module],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    imported = set(json.loads(out.strip().splitlines()[-1]))
    assert not imported & set(FORBIDDEN), f"{module} imports {sorted(imported & set(FORBIDDEN))}"


def test_the_probe_sees_a_forbidden_import() -> None:
    """The check itself can fail: the launcher imports part of the toolkit and is dev tooling."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, "devtools.launcher"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "devtools" in json.loads(out.strip().splitlines()[-1])
