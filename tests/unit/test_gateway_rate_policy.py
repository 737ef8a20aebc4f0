"""The gateway's edge policy (gateway.ratelimit.EdgePolicy): route classes with their own rate
and burst, derived from the general knobs unless set, changeable at run time; driven with an
injected clock that does not move (the worst case: every request at once)."""

from __future__ import annotations

import asyncio

from devtools.http_doubles import ManualClock
from eventpost.settings import Settings
from gateway.middleware import route_class
from gateway.ratelimit import EdgePolicy, Limits, derived_limits


def _take(policy: EdgePolicy, limit_class: str, key: str, times: int) -> list[bool]:
    async def run() -> list[bool]:
        return [(await policy.check(limit_class, key)).allowed for _ in range(times)]

    return asyncio.run(run())


def test_defaults_of_every_class():
    settings = Settings(service="gateway")
    policy = EdgePolicy.from_settings(settings, ManualClock())
    assert policy.limits() == Limits(
        auth=(1.0, 10), anonymous=(20.0, 40), user=(20.0, 40), admin=(200.0, 1000)
    )


def test_class_settings_of_their_own_beat_the_derived_ones():
    settings = Settings.from_env(
        "gateway",
        {
            "GATEWAY_RATE_LIMIT": "5",
            "GATEWAY_RATE_BURST": "8",
            "GATEWAY_LOGIN_RATE_LIMIT": "0.5",
            "GATEWAY_LOGIN_RATE_BURST": "3",
            "GATEWAY_ADMIN_RATE_LIMIT": "0",
        },
    )
    limits = EdgePolicy.from_settings(settings, ManualClock()).limits()
    assert limits.auth == (0.5, 3)
    assert limits.anonymous == (5.0, 8)
    assert limits.user == (5.0, 8)
    assert limits.admin == (0.0, 200)  # rate 0: the admin class is off


def test_the_general_limit_changes_at_run_time_and_moves_the_derived_classes():
    policy = EdgePolicy(20, 40, ManualClock(), login=(0.5, 3))
    policy.set_general(rate=1, burst=2)
    assert policy.limits() == Limits(
        auth=(0.5, 3), anonymous=(1.0, 2), user=(1.0, 2), admin=(10.0, 50)
    )
    assert _take(policy, "anonymous", "addr:a", 3) == [True, True, False]
    policy.rate = 100  # the attributes work as setters too (a KV watch may assign them)
    policy.burst = 200
    assert policy.limits().anonymous == (100.0, 200)
    assert all(_take(policy, "anonymous", "addr:b", 150))
    policy.set_general(rate=0)  # 0 turns off every class that follows the general one
    assert all(_take(policy, "user", "sub:u", 1000))
    assert not all(_take(policy, "auth", "addr:c", 10))  # set on its own: still on


def test_one_admin_populating_1000_events_is_never_refused():
    # `invoke populate --count 1000`: one login, then 1000 POSTs with the admin's token, here
    # all at the same instant.
    policy = EdgePolicy.from_settings(Settings(service="gateway"), ManualClock())
    assert _take(policy, "auth", "addr:127.0.0.1", 1) == [True]
    assert all(_take(policy, "admin", "sub:admin-1", 1000))


def test_a_login_flood_from_one_address_is_refused_with_a_wait():
    policy = EdgePolicy.from_settings(Settings(service="gateway"), ManualClock())
    allowed = _take(policy, "auth", "addr:192.0.2.7", 30)
    assert allowed == [True] * 10 + [False] * 20

    async def refused():
        return await policy.check("auth", "addr:192.0.2.7")

    assert asyncio.run(refused()).retry_after == 1
    assert _take(policy, "auth", "addr:192.0.2.8", 1) == [True]  # other addresses are not hit


def test_derived_limits_never_drop_below_one_token():
    assert derived_limits(1, 1).auth == (0.05, 1)


def test_login_and_sign_up_are_the_auth_class():
    assert route_class("POST", "/v1/auth/token") == "auth"
    assert route_class("POST", "/v1/users/") == "auth"
    assert route_class("GET", "/v1/users") is None
    assert route_class("POST", "/v1/auth/refresh") is None
    assert route_class("POST", "/v1/users/me/emails") is None
