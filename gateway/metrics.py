"""The gateway's Prometheus series (``gateway_*``), served at its ``/metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from eventpost.web.edge import LabelledChildren
from gateway.upstreams import BreakerState


class GatewayMetrics:
    """The gateway's Prometheus series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "gateway_requests_total",
            "Requests answered by the gateway",
            ["route", "method", "status"],
            registry=registry,
        )
        buckets = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
        self.upstream_latency = Histogram(
            "gateway_upstream_duration_seconds",
            "Time an upstream took to answer (successful exchanges)",
            ["upstream"],
            registry=registry,
            buckets=buckets,
        )
        self.request_latency = Histogram(
            "gateway_request_duration_seconds",
            "Time the gateway took to answer a request, upstream included",
            ["route"],
            registry=registry,
            buckets=buckets,
        )
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Time the gateway itself added to a forwarded request (total minus upstream)",
            registry=registry,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
        )
        self.circuit_open = Gauge(
            "gateway_circuit_open",
            "1 while the circuit breaker of an upstream is open or half-open",
            ["upstream"],
            registry=registry,
        )
        # Children looked up once per label values (see LabelledChildren).
        self.requests_of = LabelledChildren(self.requests)
        self.request_latency_of = LabelledChildren(self.request_latency)
        self._upstream_latency = LabelledChildren(self.upstream_latency)
        self._circuit_open = LabelledChildren(self.circuit_open)
        self._breaker_states: dict[str, BreakerState] = {}

        self.rate_limited = Counter(
            "gateway_rate_limited_total",
            "Requests refused with 429 by the gateway's rate limits, by route class",
            ["route_class"],
            registry=registry,
        )
        self._redis_up: Gauge | None = None  # only with REDIS_URL (observe_redis)
        self.fail_open = Counter(
            "gateway_ratelimit_fail_open_total",
            "Requests let through without a rate-limit check because Redis did not answer",
            registry=registry,
        )

    def observe_redis(self, up: bool) -> None:
        """The Redis of the rate limits answers (or not) now."""
        if self._redis_up is None:
            self._redis_up = Gauge(
                "gateway_ratelimit_redis_up",
                "1 while the Redis that holds the rate-limit buckets answers, 0 while it "
                "does not (requests then pass unchecked)",
                registry=self.registry,
            )
        self._redis_up.set(1 if up else 0)

    def observe_upstream(self, upstream: str, seconds: float) -> None:
        """An upstream answered in ``seconds``."""
        self._upstream_latency(upstream).observe(seconds)

    def observe_breaker(self, upstream: str, state: BreakerState) -> None:
        """The circuit breaker of ``upstream`` is in ``state`` now (the gauge is written only
        when that changes: every forwarded request reports it)."""
        if self._breaker_states.get(upstream) is state:
            return
        self._breaker_states[upstream] = state
        self._circuit_open(upstream).set(0 if state is BreakerState.CLOSED else 1)
