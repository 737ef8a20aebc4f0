"""Token buckets in Redis, shared by every gateway instance (``REDIS_URL``).

One Lua script refills and takes a bucket atomically on the server, by the server's clock, so
two gateways (or two hosts with clocks apart) see one bucket per client. Each bucket is a hash
that expires once it would be full again: nothing piles up.

Redis down or slow: the request passes (fail open: a broken limiter must not take the API
down), ``gateway_ratelimit_redis_up`` drops to 0, ``gateway_ratelimit_fail_open_total``
counts what passed unchecked, and the log says so once per ``log_every`` seconds. After a
failure Redis is left alone for ``retry_after`` seconds, so a hanging server does not add its
timeout to every request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.ratelimit import Buckets, Decision, _refused

log = logging.getLogger("gateway.ratelimit")

# KEYS[1]: the bucket. ARGV: rate (tokens/s), burst, cost. Returns {allowed, missing tokens}.
TAKE_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(bucket[1])
local ts = tonumber(bucket[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local missing = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  missing = cost - tokens
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {allowed, tostring(missing)}
"""


class RedisBuckets(Buckets):
    """:class:`gateway.ratelimit.Buckets` in Redis at ``url`` under ``prefix``.

    ``on_state(up)`` is told whether Redis answered (a gauge), ``on_fail_open()`` once per
    request let through unchecked (a counter)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "eventpost:ratelimit:",
        timeout: float = 0.25,
        retry_after: float = 1.0,
        log_every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        on_state: Callable[[bool], None] = lambda up: None,
        on_fail_open: Callable[[], None] = lambda: None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.retry_after = retry_after
        self.log_every = log_every
        self.clock = clock
        self.on_state = on_state
        self.on_fail_open = on_fail_open
        self._client: aioredis.Redis | None = None
        self._script: object | None = None
        self._down_until = 0.0
        self._last_said: float | None = None
        self._unsaid = 0
        self.up: bool | None = None

    def _where(self) -> str:
        # The URL without its password, for the log.
        scheme, sep, rest = self.url.partition("://")
        return scheme + sep + rest.rsplit("@", 1)[-1]

    async def start(self) -> None:
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self.url,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry_on_timeout=False,
            )
            self._script = self._client.register_script(TAKE_SCRIPT)
            try:
                await self._client.ping()
            except (RedisError, OSError, TimeoutError) as exc:
                self._down_until = self.clock() + self.retry_after
                self._set_up(False)
                self._say_down(exc)
            else:
                self._set_up(True)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def take(self, key: str, rate: float, burst: int, cost: float = 1.0) -> Decision:
        if self.clock() < self._down_until:
            return self._fail_open(None)
        if self._client is None:
            await self.start()
        try:
            allowed, missing = await self._script(  # type: ignore[operator]
                keys=[self.prefix + key], args=[rate, burst, cost]
            )
        except (RedisError, OSError, TimeoutError) as exc:
            self._down_until = self.clock() + self.retry_after
            return self._fail_open(exc)
        self._set_up(True)
        if int(allowed):
            return Decision(True)
        return _refused(float(missing), rate)

    def _set_up(self, up: bool) -> None:
        if up and self.up is False:
            log.warning("Redis at %s answers again: rate limits are enforced", self._where())
            self._last_said = None
        if up != self.up:
            self.up = up
            self.on_state(up)

    def _fail_open(self, exc: BaseException | None) -> Decision:
        if exc is not None:
            self._set_up(False)
        self.on_fail_open()
        self._unsaid += 1
        self._say_down(exc)
        return Decision(True)

    def _say_down(self, exc: BaseException | None) -> None:
        now = self.clock()
        if self._last_said is None or now - self._last_said >= self.log_every:
            log.error(
                "Redis at %s cannot be reached (%s); rate limits are NOT enforced, requests "
                "pass (fail open); %d passed unchecked since this was last said",
                self._where(),
                f"{type(exc).__name__}: {exc}" if exc is not None else "still down",
                self._unsaid,
            )
            self._last_said = now
            self._unsaid = 0
