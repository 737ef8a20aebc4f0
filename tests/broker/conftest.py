"""The broker-fault tests need the rabbitmq-server package (its private nodes are started from
it); `.ci/run` installs it when missing."""

from __future__ import annotations

import pytest

from tests.broker._rabbit_node import SERVER


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if SERVER.exists():
        return
    skip = pytest.mark.skip(reason=f"{SERVER} is not installed (apt-get install rabbitmq-server)")
    for item in items:
        if "private_broker" in item.keywords:
            item.add_marker(skip)
