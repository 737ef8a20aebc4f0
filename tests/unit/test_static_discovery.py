"""Static discovery: ``<SERVICE>_INSTANCES`` (what ``invoke run --replicas`` hands every part),
else the service's port on 127.0.0.1; ``url()`` takes the instances in turn."""

from __future__ import annotations

import pytest

from eventpost.discovery import StaticDiscovery
from eventpost.settings import Settings


def test_listed_instances_come_first_and_urls_rotate():
    settings = Settings.from_env(
        "notifications",
        {"EVENTS_INSTANCES": "http://127.0.0.1:9001, http://127.0.0.1:9002/", "USERS_PORT": "9100"},
    )
    discovery = StaticDiscovery(settings)
    assert discovery.instances("events") == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    assert discovery.instances("users") == ["http://127.0.0.1:9100"]
    assert [discovery.url("events") for _ in range(3)] == [
        "http://127.0.0.1:9001",
        "http://127.0.0.1:9002",
        "http://127.0.0.1:9001",
    ]
    assert discovery.url("users") == "http://127.0.0.1:9100"
    with pytest.raises(LookupError):
        discovery.instances("nothing")


def test_a_listed_instance_that_is_no_url_is_named():
    with pytest.raises(ValueError, match="EVENTS_INSTANCES"):
        Settings.from_env("gateway", {"EVENTS_INSTANCES": "127.0.0.1:9001"})
