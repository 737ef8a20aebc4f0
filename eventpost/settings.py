"""Every setting of every deployable, read from the environment in one place.

Names and defaults of the public variables are fixed by API.md; the ``*_PORT`` variables of
the internal services and the tuning knobs below are EventPost's own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_PORTS = {
    "gateway": 8000,
    "users": 8001,
    "events": 8002,
    "notifications": 8003,
}


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


def _opt(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value if value else None


@dataclass(frozen=True)
class Settings:
    """Configuration of one EventPost process (which one is ``service``)."""

    service: str = "eventpost"
    data_dir: Path = Path("var")
    mongodb_url: str | None = field(default=None, repr=False)
    # May carry a password: kept out of repr() so settings can be logged.
    amqp_url: str = field(default="amqp://guest:guest@127.0.0.1:5672/%2F", repr=False)
    gateway_port: int = DEFAULT_PORTS["gateway"]
    service_ports: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_tls: str = "none"
    smtp_timeout: float = 10.0
    mail_from: str = "EventPost <no-reply@eventpost.local>"
    consul_http_addr: str | None = None
    dispatch_interval: float = 1.0
    max_body_bytes: int = 64 * 1024
    log_level: str = "INFO"
    # Delays (seconds) between the tries of a failing message; its length is the number of
    # retries before the message is parked.
    retry_delays: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0)
    # How long an access token lives, seconds.
    access_token_ttl: int = 900
    refresh_token_ttl: int = 30 * 24 * 3600
    # Path of the users service's signing key file (USERS_SIGNING_KEYS); unset: a file
    # under DATA_DIR/keys, created on first start.
    users_signing_keys: str | None = None
    # Gateway: listen address, per-client rate limit (requests/s, 0 = off) and burst, CORS
    # origins ("*" or a list), upstream timeouts (seconds).
    gateway_host: str = "127.0.0.1"
    gateway_rate_limit: float = 20.0
    gateway_rate_burst: int = 40
    gateway_cors_origins: tuple[str, ...] = ("*",)
    gateway_connect_timeout: float = 2.0
    gateway_upstream_timeout: float = 10.0

    @classmethod
    def from_env(cls, service: str = "eventpost", env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings of ``service`` from ``env`` (the process environment)."""
        env = os.environ if env is None else env
        ports = {
            name: _int(env, f"{name.upper()}_PORT", default)
            for name, default in DEFAULT_PORTS.items()
        }
        smtp_tls = env.get("SMTP_TLS", "none") or "none"
        if smtp_tls not in ("none", "starttls", "ssl"):
            raise ValueError(f"SMTP_TLS must be none, starttls or ssl, got {smtp_tls!r}")
        retry = env.get("RETRY_DELAYS")
        return cls(
            service=service,
            data_dir=Path(env.get("DATA_DIR") or "var"),
            mongodb_url=_opt(env, "MONGODB_URL"),
            amqp_url=env.get("AMQP_URL") or cls.amqp_url,
            gateway_port=ports["gateway"],
            service_ports=ports,
            smtp_host=env.get("SMTP_HOST") or "127.0.0.1",
            smtp_port=_int(env, "SMTP_PORT", 1025),
            smtp_user=_opt(env, "SMTP_USER"),
            smtp_password=_opt(env, "SMTP_PASSWORD"),
            smtp_tls=smtp_tls,
            smtp_timeout=_float(env, "SMTP_TIMEOUT", 10.0),
            mail_from=env.get("MAIL_FROM") or cls.mail_from,
            consul_http_addr=_opt(env, "CONSUL_HTTP_ADDR"),
            dispatch_interval=_float(env, "DISPATCH_INTERVAL", 1.0),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", 64 * 1024),
            log_level=(env.get("LOG_LEVEL") or "INFO").upper(),
            retry_delays=(
                tuple(float(x) for x in retry.split(",") if x.strip())
                if retry
                else cls.retry_delays
            ),
            access_token_ttl=_int(env, "ACCESS_TOKEN_TTL", 900),
            refresh_token_ttl=_int(env, "REFRESH_TOKEN_TTL", 30 * 24 * 3600),
            users_signing_keys=_opt(env, "USERS_SIGNING_KEYS"),
            gateway_host=env.get("GATEWAY_HOST") or "127.0.0.1",
            gateway_rate_limit=_float(env, "GATEWAY_RATE_LIMIT", 20.0),
            gateway_rate_burst=_int(env, "GATEWAY_RATE_BURST", 40),
            gateway_cors_origins=tuple(
                o.strip() for o in (env.get("GATEWAY_CORS_ORIGINS") or "*").split(",") if o.strip()
            )
            or ("*",),
            gateway_connect_timeout=_float(env, "GATEWAY_CONNECT_TIMEOUT", 2.0),
            gateway_upstream_timeout=_float(env, "GATEWAY_UPSTREAM_TIMEOUT", 10.0),
        )

    @property
    def port(self) -> int:
        """The HTTP port of this process's service."""
        return self.service_ports.get(self.service, self.gateway_port)

    def with_(self, **changes: object) -> Settings:
        """A copy with some fields changed (tests use it)."""
        return replace(self, **changes)  # type: ignore[arg-type]
