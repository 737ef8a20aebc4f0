"""HTTP-only parts of the users service's resources."""

from services.users.resources import client_address


def test_client_address_takes_the_last_forwarded_hop():
    assert client_address("203.0.113.5", "127.0.0.1") == "203.0.113.5"
    assert client_address("1.1.1.1, 203.0.113.5", "127.0.0.1") == "203.0.113.5"
    assert client_address(None, "127.0.0.1") == "127.0.0.1"
    assert client_address("", None) == "unknown"
