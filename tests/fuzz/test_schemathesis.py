"""A short deterministic contract fuzz (``invoke fuzz`` runs the long one): schemathesis with
every check and every phase over docs/openapi.yaml, through the real gateway of a suite of its
own, must find nothing."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from tests.fuzz import run


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_schemathesis_finds_nothing(tmp_path):
    code = run.main(["--max-examples", "3", "--seed", "14", "--report-dir", str(tmp_path)])
    junit = ET.parse(tmp_path / "junit.xml").getroot()
    cases = junit.findall(".//testcase")
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    errors = [c.get("name") for c in cases if c.find("error") is not None]
    assert code == 0, (failed, errors)
    assert not failed and not errors
    # Every operation of the document was exercised (plus the stateful scenarios).
    assert len(cases) >= 24
