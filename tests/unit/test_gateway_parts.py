"""Unit tests of the gateway's parts: routing table, rate limiter, circuit breaker, edge token
verifier, and the checks the app makes before any upstream is called (no I/O)."""

from __future__ import annotations

import asyncio
import json
import time

import falcon.testing
import jwt
import pytest

from devtools.http_doubles import ManualClock, TokenMint
from eventpost.auth import InvalidToken, UnknownKey
from eventpost.settings import Settings
from gateway.app import create_app
from gateway.auth import EdgeVerifier, KeysUnavailable
from gateway.ratelimit import RateLimiter
from gateway.routes import Route, requires_user, resolve
from gateway.upstreams import BreakerState, CircuitBreaker

# --- routing table -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "upstream", "name"),
    [
        ("/v1/users", "users", "/v1/users"),
        ("/v1/users/", "users", "/v1/users"),
        ("/v1/users/me", "users", "/v1/users/*"),
        ("/v1/users/me/emails/a@b.c", "users", "/v1/users/*"),
        ("/v1/auth/token", "users", "/v1/auth/*"),
        ("/v1/auth/jwks", "users", "/v1/auth/*"),
        ("/v1/events", "events", "/v1/events"),
        ("/v1/events/abc.ics", "events", "/v1/events/*"),
        ("/v1/notifications", "notifications", "/v1/notifications"),
        ("/v1/notifications/n1", "notifications", "/v1/notifications/*"),
    ],
)
def test_resolve_known_paths(path, upstream, name):
    assert resolve(path) == Route(upstream, name)


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/v1",
        "/v1/",
        "/v1/auth",
        "/v1/usersX",
        "/v1/eventsfoo/1",
        "/v2/users",
        "/users",
        "/v1/events/../users/me",
        "/v1/events/./1",
    ],
)
def test_resolve_unknown_paths(path):
    assert resolve(path) is None


@pytest.mark.parametrize(
    ("method", "path", "needed"),
    [
        ("GET", "/v1/users/me", True),
        ("DELETE", "/v1/users/me/emails/a@b.c", True),
        ("POST", "/v1/users", False),
        ("GET", "/v1/users/meX", False),
        ("POST", "/v1/auth/token", False),
        ("GET", "/v1/auth/jwks", False),
        ("GET", "/v1/notifications", True),
        ("POST", "/v1/notifications", True),
        ("GET", "/v1/notifications/n1", True),
        ("GET", "/v1/events", False),
        ("GET", "/v1/events/e1", False),
        ("HEAD", "/v1/events/e1", False),
        ("POST", "/v1/events", True),
        ("PATCH", "/v1/events/e1", True),
        ("DELETE", "/v1/events/e1", True),
        ("OPTIONS", "/v1/notifications", False),
        # Methods a public events path does not support reach the service, which answers 405.
        ("PUT", "/v1/events/e1", False),
        ("POST", "/v1/events/e1", False),
        ("PATCH", "/v1/events/e1.ics", False),
        ("DELETE", "/v1/events", False),
    ],
)
def test_requires_user(method, path, needed):
    assert requires_user(method, path) is needed


# --- rate limiter ------------------------------------------------------------------------


def test_bucket_allows_burst_then_refuses_with_retry_after():
    clock = ManualClock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.take("a").allowed for _ in range(3)] == [True, True, True]
    refused = limiter.take("a")
    assert not refused.allowed
    assert refused.retry_after == 1
    # another key has its own bucket
    assert limiter.take("b").allowed
    clock.advance(0.5)  # one token back at 2/s
    assert limiter.take("a").allowed
    assert not limiter.take("a").allowed


def test_bucket_refills_only_up_to_burst():
    clock = ManualClock()
    limiter = RateLimiter(rate=10.0, burst=2, clock=clock)
    clock.advance(3600)
    assert [limiter.take("a").allowed for _ in range(3)] == [True, True, False]


def test_retry_after_rounds_up_slow_rates():
    clock = ManualClock()
    limiter = RateLimiter(rate=0.1, burst=1, clock=clock)
    assert limiter.take("a").allowed
    assert limiter.take("a").retry_after == 10


def test_rate_zero_disables_the_limiter():
    limiter = RateLimiter(rate=0, burst=1, clock=ManualClock())
    assert all(limiter.take("a").allowed for _ in range(100))


def test_limiter_keeps_a_bounded_number_of_buckets():
    limiter = RateLimiter(rate=1.0, burst=1, clock=ManualClock(), max_keys=10)
    for i in range(1000):
        limiter.take(f"k{i}")
    assert len(limiter._buckets) == 10


# --- circuit breaker ---------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_and_half_opens_after_cooldown():
    clock = ManualClock()
    breaker = CircuitBreaker(failures=3, cooldown=10, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    breaker.record_success()  # a success resets the count
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert breaker.retry_after() == 10
    clock.advance(9.5)
    assert not breaker.allow()
    clock.advance(0.5)
    assert breaker.allow()  # the trial
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # only one trial at a time
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()


def cooled_down_breaker(clock: ManualClock) -> CircuitBreaker:
    """A breaker opened by one failure, its 5 s cooldown just over."""
    breaker = CircuitBreaker(failures=1, cooldown=5, clock=clock)
    breaker.record_failure()
    clock.advance(5)
    return breaker


def test_breaker_failed_trial_reopens():
    clock = ManualClock()
    breaker = cooled_down_breaker(clock)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    clock.advance(5)
    assert breaker.allow()


def test_breaker_abandoned_trial_frees_the_slot():
    breaker = cooled_down_breaker(ManualClock())
    assert breaker.allow()
    breaker.release_trial()
    assert breaker.allow()


# --- edge token verifier -----------------------------------------------------------------


class FakeJwksSource:
    """Serves a JWKS document to the verifier and counts the fetches."""

    def __init__(self, jwks):
        self.jwks = jwks
        self.calls = 0
        self.fail = False

    async def __call__(self):
        self.calls += 1
        await asyncio.sleep(0)
        if self.fail:
            raise ConnectionError("users service down")
        return self.jwks


def test_verifier_fetches_once_and_verifies():
    mint = TokenMint()
    source = FakeJwksSource(mint.jwks())
    verifier = EdgeVerifier(source, clock=ManualClock())

    async def run():
        first = await verifier.verify(mint.token("u1"))
        second = await verifier.verify(mint.token("u2", role="admin"))
        return first, second

    first, second = asyncio.run(run())
    assert (first.sub, first.role, second.sub, second.role) == ("u1", "user", "u2", "admin")
    assert source.calls == 1


def test_unknown_kid_refetches_once_per_interval_even_when_flooded():
    mint, other = TokenMint(), TokenMint()
    clock = ManualClock()
    source = FakeJwksSource(mint.jwks())
    verifier = EdgeVerifier(source, clock=clock, min_refetch_seconds=5)

    async def flood():
        await verifier.verify(mint.token())
        clock.advance(5)
        results = await asyncio.gather(
            *(verifier.verify(mint.token(kid=f"random-{i}")) for i in range(50)),
            return_exceptions=True,
        )
        return results

    results = asyncio.run(flood())
    assert all(isinstance(r, UnknownKey) for r in results)
    assert source.calls == 2  # the first load + one refetch for the whole flood

    # A rotated key is picked up by the next refetch, once the interval has passed.
    source.jwks = {"keys": [mint.jwk(), other.jwk()]}
    with pytest.raises(UnknownKey):
        asyncio.run(verifier.verify(other.token()))
    assert source.calls == 2
    clock.advance(5)
    assert asyncio.run(verifier.verify(other.token())).sub == "user-1"
    assert source.calls == 3


def test_verifier_refreshes_an_old_key_set():
    mint = TokenMint()
    clock = ManualClock()
    source = FakeJwksSource(mint.jwks())
    verifier = EdgeVerifier(source, clock=clock, max_age=60)
    asyncio.run(verifier.verify(mint.token()))
    clock.advance(61)
    source.jwks = {"keys": []}  # the key was withdrawn
    with pytest.raises(UnknownKey):
        asyncio.run(verifier.verify(mint.token()))
    assert source.calls == 2


def test_verifier_without_keys_reports_unavailable():
    mint = TokenMint()
    source = FakeJwksSource(mint.jwks())
    source.fail = True
    verifier = EdgeVerifier(source, clock=ManualClock())
    with pytest.raises(KeysUnavailable):
        asyncio.run(verifier.verify(mint.token()))


def test_verifier_refuses_alg_none_without_fetching_again():
    mint = TokenMint()
    source = FakeJwksSource(mint.jwks())
    verifier = EdgeVerifier(source, clock=ManualClock())
    asyncio.run(verifier.verify(mint.token()))
    forged = jwt.encode(
        {"sub": "admin", "role": "admin", "iss": "eventpost-users", "aud": "eventpost"},
        key=None,
        algorithm="none",
        headers={"kid": mint.kid},
    )
    with pytest.raises(InvalidToken):
        asyncio.run(verifier.verify(forged))
    assert source.calls == 1


# --- the app's own checks (nothing reaches an upstream) ----------------------------------


def _client(clock=None, **changes):
    settings = Settings(service="gateway").with_(**changes)
    return falcon.testing.TestClient(create_app(settings, clock=clock or ManualClock()))


def test_rate_limit_answers_429_with_retry_after_and_recovers():
    clock = ManualClock()
    client = _client(clock, gateway_rate_limit=1.0, gateway_rate_burst=2)
    statuses = [client.simulate_get("/v1/nowhere").status_code for _ in range(3)]
    assert statuses == [404, 404, 429]
    refused = client.simulate_get("/v1/nowhere")
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert refused.json["status"] == 429
    assert refused.headers["X-Request-ID"]
    assert client.simulate_get("/health").status_code == 200  # probes are never limited
    clock.advance(1.0)
    assert client.simulate_get("/v1/nowhere").status_code == 404


def test_rate_limit_is_per_client_address():
    client = _client(gateway_rate_limit=1.0, gateway_rate_burst=1)
    assert client.simulate_get("/v1/x", remote_addr="10.0.0.1").status_code == 404
    assert client.simulate_get("/v1/x", remote_addr="10.0.0.1").status_code == 429
    assert client.simulate_get("/v1/x", remote_addr="10.0.0.2").status_code == 404
    # a forged X-Forwarded-For does not buy a fresh bucket
    forged = client.simulate_get(
        "/v1/x", remote_addr="10.0.0.1", headers={"X-Forwarded-For": "10.9.9.9"}
    )
    assert forged.status_code == 429


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/users/me"),
        ("GET", "/v1/notifications"),
        ("POST", "/v1/events"),
        ("PATCH", "/v1/events/e1"),
        ("DELETE", "/v1/events/e1"),
    ],
)
def test_protected_route_without_token_is_401_at_the_edge(method, path):
    result = _client().simulate_request(method, path)
    assert result.status_code == 401
    assert result.headers["WWW-Authenticate"] == "Bearer"
    assert result.headers["Content-Type"] == "application/problem+json"
    assert result.json["status"] == 401


def test_non_bearer_authorization_is_401():
    result = _client().simulate_get("/v1/events", headers={"Authorization": "Basic dTpw"})
    assert result.status_code == 401
    assert result.headers["WWW-Authenticate"].startswith("Bearer")


def test_declared_body_over_the_limit_is_413():
    client = _client(max_body_bytes=100)
    result = client.simulate_post(
        "/v1/users", body=b"x" * 101, headers={"Content-Type": "application/json"}
    )
    assert result.status_code == 413
    assert result.headers["Content-Type"] == "application/problem+json"
    assert json.loads(result.text)["status"] == 413


def test_unknown_path_and_wrong_method_are_problem_json():
    client = _client()
    missing = client.simulate_get("/nowhere")
    assert missing.status_code == 404
    assert missing.headers["Content-Type"] == "application/problem+json"
    assert missing.headers["X-Request-ID"]
    wrong = client.simulate_post("/health")
    assert wrong.status_code == 405
    assert wrong.headers["Content-Type"] == "application/problem+json"


def test_request_id_kept_when_sane_and_replaced_when_not():
    client = _client()
    kept = client.simulate_get("/health", headers={"X-Request-ID": "abc-123"})
    assert kept.headers["X-Request-ID"] == "abc-123"
    replaced = client.simulate_get("/health", headers={"X-Request-ID": "bad id\x7f" + "x" * 200})
    assert replaced.headers["X-Request-ID"] not in ("", "bad id")
    assert len(replaced.headers["X-Request-ID"]) == 32


def test_settings_read_gateway_variables():
    settings = Settings.from_env(
        "gateway",
        {
            "GATEWAY_HOST": "0.0.0.0",
            "GATEWAY_RATE_LIMIT": "5",
            "GATEWAY_RATE_BURST": "9",
            "GATEWAY_CORS_ORIGINS": "https://a.example, https://b.example",
            "GATEWAY_UPSTREAM_TIMEOUT": "3.5",
        },
    )
    assert settings.gateway_host == "0.0.0.0"
    assert (settings.gateway_rate_limit, settings.gateway_rate_burst) == (5.0, 9)
    assert settings.gateway_cors_origins == ("https://a.example", "https://b.example")
    assert settings.gateway_upstream_timeout == 3.5


def _counting(verifier: EdgeVerifier) -> list[str]:
    calls: list[str] = []
    real_verify = verifier.keys.verify

    def counting_verify(token):
        calls.append(token)
        return real_verify(token)

    verifier.keys.verify = counting_verify
    return calls


def test_verified_tokens_are_remembered_until_their_exp():
    mint = TokenMint()
    wall = ManualClock(start=time.time())
    verifier = EdgeVerifier(FakeJwksSource(mint.jwks()), clock=ManualClock(), wall_clock=wall)
    calls = _counting(verifier)
    token = mint.token("ann", ttl=60)
    assert asyncio.run(verifier.verify(token)).sub == "ann"
    assert asyncio.run(verifier.verify(token)).sub == "ann"
    assert len(calls) == 1  # the second answer came from memory
    wall.advance(61)  # past its exp, memory no longer answers for it
    asyncio.run(verifier.verify(token))
    assert len(calls) == 2


def test_a_changed_key_set_empties_the_memory():
    mint = TokenMint()
    clock = ManualClock()
    source = FakeJwksSource(mint.jwks())
    verifier = EdgeVerifier(source, clock=clock, max_age=300)
    token = mint.token("ann")
    asyncio.run(verifier.verify(token))
    source.jwks = {"keys": [TokenMint().jwk()]}  # the old key was withdrawn
    clock.advance(301)
    with pytest.raises(UnknownKey):
        asyncio.run(verifier.verify(token))
