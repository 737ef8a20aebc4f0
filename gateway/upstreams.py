"""The gateway's side of its upstreams: where they are (discovery, round-robin), whether to try
them at all (a circuit breaker each), and the pooled keep-alive HTTP client that calls them
(timeouts, retries only where a retry is safe)."""

from __future__ import annotations

import asyncio
import enum
import functools
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from multidict import CIMultiDict, CIMultiDictProxy

from eventpost.discovery import Discovery
from eventpost.web.edge import NotReady
from gateway.upstream_http import ExchangeFailed, NotSent, UpstreamHttp

log = logging.getLogger("gateway.upstreams")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


@dataclass(frozen=True)
class UpstreamPolicy:
    """How the gateway treats one upstream.

    ``retries`` extra tries go to the next instance: after a connection that could not be made
    (nothing reached the upstream) for any method, after a connection lost mid-request only for
    idempotent methods; a timeout is never retried (it would double the wait).
    ``keepalive_timeout`` must stay below the upstream server's own keep-alive (granian closes
    an idle connection after its 30 s header read timeout at the earliest), so a pooled
    connection is never reused just as the server closes it."""

    connect_timeout: float = 2.0
    total_timeout: float = 10.0
    retries: int = 1
    breaker_failures: int = 5
    breaker_cooldown: float = 10.0
    ready_timeout: float = 2.0
    # One instance of several: out of the rotation after this many failures in a row, for
    # this long, then one trial request decides (the others take its share meanwhile).
    instance_failures: int = 1
    instance_cooldown: float = 2.0


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after ``failures`` consecutive transport failures; after ``cooldown`` seconds lets
    one trial request through (half-open): its success closes the circuit, its failure opens it
    again. A trial that never reports back frees its slot after another ``cooldown``."""

    def __init__(
        self, failures: int, cooldown: float, clock: Callable[[], float], *, name: str = ""
    ) -> None:
        self.name = name
        self.threshold = max(1, failures)
        self.cooldown = cooldown
        self.clock = clock
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self._opened_at = 0.0
        self._trial_started: float | None = None

    def allow(self) -> bool:
        """Whether a request may be sent now (in half-open state, claims the trial)."""
        if self.state is BreakerState.CLOSED:
            return True
        now = self.clock()
        if self.state is BreakerState.OPEN:
            if now - self._opened_at < self.cooldown:
                return False
            self.state = BreakerState.HALF_OPEN
            self._trial_started = now
            return True
        if self._trial_started is None or now - self._trial_started >= self.cooldown:
            self._trial_started = now
            return True
        return False

    def retry_after(self) -> int:
        """Whole seconds until the breaker will let a trial through."""
        if self.state is BreakerState.OPEN:
            left = self.cooldown - (self.clock() - self._opened_at)
            return max(1, int(left + 0.999))
        return 1

    def record_success(self) -> None:
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self._trial_started = None

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        if self.state is BreakerState.HALF_OPEN or self.consecutive_failures >= self.threshold:
            if self.state is not BreakerState.OPEN:
                log.warning(
                    "circuit %sopened after %d consecutive failures",
                    f"of {self.name} " if self.name else "",
                    self.consecutive_failures,
                )
            self.state = BreakerState.OPEN
            self._opened_at = self.clock()
            self._trial_started = None

    def release_trial(self) -> None:
        """The trial request ended without a verdict (cancelled): let another one try."""
        if self.state is BreakerState.HALF_OPEN:
            self._trial_started = None


class UpstreamError(Exception):
    """The gateway could not get an answer: ``status`` is 502, 503 or 504."""

    def __init__(self, status: int, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


@dataclass
class UpstreamResponse:
    """An upstream's answer, read in full."""

    status: int
    headers: CIMultiDictProxy[str] | CIMultiDict[str]
    body: bytes
    seconds: float = 0.0


@dataclass
class Upstream:
    """One upstream service: its policy, its breaker and a round-robin over its instances,
    each with a breaker of its own that takes a failing instance out of the rotation."""

    name: str
    policy: UpstreamPolicy
    breaker: CircuitBreaker
    clock: Callable[[], float] = time.monotonic
    _turn: itertools.count = field(default_factory=itertools.count)
    _instance_breakers: dict[str, CircuitBreaker] = field(default_factory=dict)

    def instance_breaker(self, base: str) -> CircuitBreaker:
        """The breaker of one instance (made on first use)."""
        breaker = self._instance_breakers.get(base)
        if breaker is None:
            breaker = CircuitBreaker(
                self.policy.instance_failures,
                self.policy.instance_cooldown,
                self.clock,
                name=f"{self.name} at {base}",
            )
            self._instance_breakers[base] = breaker
        return breaker

    def pick(self, instances: list[str], tried: Iterable[str] = ()) -> str:
        """The next instance, round-robin, preferring one not ``tried`` yet by this request
        (a retry after a dead instance goes elsewhere even while others take turns) and,
        among those, one whose own breaker lets a request through; when none does, the next
        one anyway: the service's breaker decides about giving up."""
        if len(self._instance_breakers) > 2 * len(instances) + 8:
            # Instances that left the list (discovery changed): forget their breakers.
            keep = set(instances)
            for gone in [base for base in self._instance_breakers if base not in keep]:
                del self._instance_breakers[gone]
        fresh = [base for base in instances if base not in tried] if tried else instances
        fresh = fresh or instances
        start = next(self._turn)
        count = len(fresh)
        for i in range(count):
            base = fresh[(start + i) % count]
            if self.instance_breaker(base).allow():
                return base
        return fresh[start % count]


class UpstreamClient:
    """Calls the upstream services through one pool of keep-alive connections
    (:class:`gateway.upstream_http.UpstreamHttp`).

    The pool is made by :meth:`start` (ASGI lifespan startup, inside the server's event loop)
    and closed by :meth:`close`; nothing is opened at construction."""

    def __init__(
        self,
        discovery: Discovery,
        names: Iterable[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        default_policy: UpstreamPolicy | None = None,
        policies: Mapping[str, UpstreamPolicy] | None = None,
        observe: Callable[[str, float], None] | None = None,
        keepalive_timeout: float = 1.0,
    ) -> None:
        self.discovery = discovery
        default_policy = default_policy or UpstreamPolicy()
        policies = policies or {}
        self.upstreams: dict[str, Upstream] = {}
        for name in names:
            policy = policies.get(name, default_policy)
            breaker = CircuitBreaker(
                policy.breaker_failures, policy.breaker_cooldown, clock, name=name
            )
            self.upstreams[name] = Upstream(name, policy, breaker, clock)
        self._observe = observe or (lambda name, seconds: None)
        self._keepalive = keepalive_timeout
        self._http: UpstreamHttp | None = None

    async def start(self) -> None:
        """Open the connection pool (call from inside the running event loop) and have
        discovery follow every upstream from now on."""
        self.discovery.watch(sorted(self.upstreams))
        if self._http is None:
            self._http = UpstreamHttp(limit=512, keepalive_timeout=self._keepalive)

    async def close(self) -> None:
        """Close the pool (ASGI lifespan shutdown)."""
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()

    @property
    def http(self) -> UpstreamHttp:
        if self._http is None:
            raise RuntimeError("the upstream client has not been started")
        return self._http

    def _instances(self, name: str) -> list[str]:
        try:
            found = self.discovery.instances(name)
        except LookupError:
            found = []
        except Exception:  # a discovery backend in trouble (Consul down, ...)
            log.warning("discovery failed for %s", name, exc_info=True)
            found = []
        if not found:
            raise UpstreamError(503, f"No instance of the {name} service is available.")
        return found

    async def request(
        self,
        name: str,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
    ) -> UpstreamResponse:
        """Send ``method target`` (an already percent-encoded path and query) to upstream
        ``name`` and read its whole answer; raises :class:`UpstreamError` (502/503/504)."""
        upstream = self.upstreams[name]
        breaker = upstream.breaker
        if not breaker.allow():
            raise UpstreamError(
                503,
                f"The {name} service is failing; requests to it are paused.",
                retry_after=breaker.retry_after(),
            )
        tries = 1 + max(0, upstream.policy.retries)
        idempotent = method in IDEMPOTENT_METHODS
        tried: list[str] = []
        http = self.http
        policy = upstream.policy
        try:
            for attempt in range(tries):
                base = upstream.pick(self._instances(name), tried)
                tried.append(base)
                instance = upstream.instance_breaker(base)
                started = time.perf_counter()
                try:
                    answer = await http.request(
                        base,
                        method,
                        target,
                        headers,
                        body or None,
                        connect_timeout=policy.connect_timeout,
                        total_timeout=policy.total_timeout,
                    )
                    elapsed = time.perf_counter() - started
                    breaker.record_success()
                    instance.record_success()
                    self._observe(name, elapsed)
                    return UpstreamResponse(answer.status, answer.headers, answer.body, elapsed)
                except NotSent as exc:
                    breaker.record_failure()
                    instance.record_failure()
                    last: UpstreamError = UpstreamError(
                        502, f"The {name} service could not be reached."
                    )
                    log.warning("%s: cannot connect to %s: %s", name, base, exc)
                    retry = True
                except TimeoutError:
                    breaker.record_failure()
                    instance.record_failure()
                    log.warning("%s: %s %s timed out at %s", name, method, target, base)
                    raise UpstreamError(
                        504, f"The {name} service did not answer in time."
                    ) from None
                except ExchangeFailed as exc:
                    breaker.record_failure()
                    instance.record_failure()
                    last = UpstreamError(502, f"The {name} service failed to answer.")
                    log.warning("%s: %s %s failed at %s: %r", name, method, target, base, exc)
                    retry = idempotent
                if not retry or attempt == tries - 1 or breaker.state is BreakerState.OPEN:
                    raise last
            raise AssertionError("unreachable")  # pragma: no cover
        except asyncio.CancelledError:
            breaker.release_trial()
            if tried:
                upstream.instance_breaker(tried[-1]).release_trial()
            raise

    def ready_checks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """The gateway's readiness checks, one per upstream by name (sorted): each raises
        :class:`NotReady` unless :meth:`ready` says the upstream is."""

        async def check(name: str) -> None:
            if not await self.ready(name):
                raise NotReady(f"no instance of the {name} service is ready")

        return {name: functools.partial(check, name) for name in sorted(self.upstreams)}

    async def ready(self, name: str) -> bool:
        """Whether at least one instance of ``name`` answers ``GET /ready`` with 200."""
        upstream = self.upstreams[name]
        try:
            instances = self.discovery.instances(name)
        except Exception:  # unknown service or discovery in trouble: not ready either way
            return False
        timeout = upstream.policy.ready_timeout
        for base in instances:
            try:
                answer = await self.http.request(
                    base, "GET", "/ready", {}, connect_timeout=timeout, total_timeout=timeout
                )
            except (NotSent, ExchangeFailed, TimeoutError, ValueError):
                continue
            if answer.status == 200:
                return True
        return False
