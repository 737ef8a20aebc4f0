"""Fixtures shared by the gateway's integration tests: the stand-in users / events /
notifications services, started once per module and reset before each test (a module that
needs its own kind of stand-ins defines its own ``fakes``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devtools.http_doubles import FakeServices


@pytest.fixture(scope="module")
def upstreams() -> Iterator[FakeServices]:
    with FakeServices() as services:
        yield services


@pytest.fixture
def fakes(upstreams: FakeServices) -> FakeServices:
    upstreams.reset()
    return upstreams
