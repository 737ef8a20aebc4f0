"""Rules of the users service that need no I/O."""

from datetime import UTC, datetime, timedelta

import pytest

from eventpost.errors import Invalid, InvalidMany
from services.users import domain


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Alice@Example.COM", "alice@example.com"),
        ("bob.smith+tag@example.org", "bob.smith+tag@example.org"),
        ("carol@example.test", "carol@example.test"),
    ],
)
def test_emails_are_normalized_to_lowercase(raw, expected):
    assert domain.normalize_email(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["", "no-at-sign", "a@", "@example.com", "a b@example.com", "a@b", "x" * 250 + "@ex.com"],
)
def test_invalid_emails_are_refused(raw):
    with pytest.raises(domain.InvalidEmail):
        domain.normalize_email(raw)


@pytest.mark.parametrize("name", ["abc", "a_b.c-d", "x" * 32, "user123"])
def test_valid_usernames(name):
    assert domain.username_problem(name) is None


@pytest.mark.parametrize("name", ["ab", "x" * 33, "Alice", "a b", "a@b", "ünï", "a\nb", "$ne"])
def test_invalid_usernames(name):
    assert domain.username_problem(name) is not None


def test_password_length_rules():
    assert domain.password_problem("1234567") is not None
    assert domain.password_problem("12345678") is None
    assert domain.password_problem("x" * (domain.PASSWORD_MAX + 1)) is not None


def test_public_user_never_shows_hashes_or_tokens():
    doc = {
        "id": "u1",
        "username": "alice",
        "email": "alice@example.com",
        "secondary_emails": [
            {
                "email": "a2@example.com",
                "verified": False,
                "token_digest": "abc",
                "token_expires_at": "2030-01-01T00:00:00.000000Z",
            }
        ],
        "role": "user",
        "password_hash": "$argon2id$...",
        "created_at": "2026-01-01T00:00:00.000000Z",
        "version": 3,
    }
    shown = domain.public_user(doc)
    assert shown == {
        "id": "u1",
        "username": "alice",
        "email": "alice@example.com",
        "secondary_emails": [{"email": "a2@example.com", "verified": False}],
        "role": "user",
        "created_at": "2026-01-01T00:00:00.000000Z",
    }


def test_token_digests():
    token = domain.new_secret()
    assert len(token) >= 43
    assert domain.new_secret() != token
    digest = domain.token_digest(token)
    assert len(digest) == 64 and token not in digest
    assert domain.digest_matches(token, digest)
    assert not domain.digest_matches(token + "x", digest)
    assert not domain.digest_matches(token, None)


def test_verification_expiry_is_24_hours():
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert domain.verification_expiry(now) == "2026-01-02T12:00:00.000000Z"


def test_retry_after_counts_until_the_oldest_failure_leaves_the_window():
    policy = domain.ThrottlePolicy(window=timedelta(minutes=15))
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert policy.retry_after(now, now - timedelta(minutes=5)) == 600
    assert policy.retry_after(now, now - timedelta(minutes=15)) == 1


def test_throttle_keys():
    assert domain.account_throttle_key("u1", "Alice") == "account:u1"
    assert domain.account_throttle_key(None, "Alice") == "name:alice"
    assert domain.address_throttle_key("10.0.0.1") == "address:10.0.0.1"


def test_checked_email_names_the_field():
    assert domain.checked_email("Bob@Example.com") == "bob@example.com"
    with pytest.raises(Invalid) as caught:
        domain.checked_email("nope", "address")
    assert caught.value.field == "address"
    assert caught.value.detail.startswith("not a valid email address: ")


def test_checked_sign_up_reports_every_broken_field():
    assert domain.checked_sign_up("alice", "Alice@Example.com", "12345678") == "alice@example.com"
    with pytest.raises(Invalid) as one:
        domain.checked_sign_up("alice", "alice@example.com", "short")
    assert not isinstance(one.value, InvalidMany)
    assert one.value.errors == [{"field": "password", "message": "at least 8 characters"}]
    with pytest.raises(InvalidMany) as many:
        domain.checked_sign_up("A", "nope", "short")
    assert [e["field"] for e in many.value.errors] == ["username", "password", "email"]


def test_checked_password():
    assert domain.checked_password("12345678") == "12345678"
    with pytest.raises(Invalid) as caught:
        domain.checked_password("1234567")
    assert caught.value.field == "password"
