"""Every setting of every deployable, read from the environment in one place.

Names and defaults of the public variables are fixed by API.md; the ``*_PORT`` variables of
the internal services and the tuning knobs below are EventPost's own. Each field's
``validation_alias`` is its environment variable.

Built on pydantic-settings: :meth:`Settings.from_env` reads a mapping of environment
variables (the process environment by default) through a settings source, so further
sources slot in before it: with ``CONSUL_HTTP_ADDR`` set, the keys under
``eventpost/config/`` in Consul KV override the environment variables of their names.
Constructing ``Settings(...)`` directly reads nothing from the environment: tests and
``with_`` get exactly what they pass.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.sources import EnvSettingsSource, PydanticBaseSettingsSource

from eventpost.consul import config_overrides as consul_config

log = logging.getLogger("eventpost.settings")

DEFAULT_PORTS = {
    "gateway": 8000,
    "users": 8001,
    "events": 8002,
    "notifications": 8003,
}


def _env(name: str, field_name: str) -> Any:
    """Read from environment variable ``name``; ``Settings(field_name=...)`` works too."""
    return AliasChoices(name, field_name)


class MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of ``os.environ``
    (empty values count as unset)."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._mapping = env
        super().__init__(settings_cls, case_sensitive=True, env_ignore_empty=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k: v for k, v in self._mapping.items() if v != ""}


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class Settings(BaseSettings):
    """Configuration of one EventPost process (which one is ``service``)."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    service: str = "eventpost"
    data_dir: Path = Field(Path("var"), validation_alias=_env("DATA_DIR", "data_dir"))
    # Connection URLs may carry a password: kept out of repr() so settings can be logged.
    # AMQP_URL may list several nodes of a cluster, comma separated: every client tries them
    # in order whenever it (re)connects.
    mongodb_url: str | None = Field(
        None, repr=False, validation_alias=_env("MONGODB_URL", "mongodb_url")
    )
    amqp_url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672/%2F",
        repr=False,
        validation_alias=_env("AMQP_URL", "amqp_url"),
    )
    # "classic" (durable classic queues: the default, for a single node) or "quorum" (every
    # consumer queue, its delay queues and its parking queue replicated over a cluster).
    amqp_queue_type: Literal["classic", "quorum"] = Field(
        "classic", validation_alias=_env("AMQP_QUEUE_TYPE", "amqp_queue_type")
    )
    gateway_port: int = Field(
        DEFAULT_PORTS["gateway"], validation_alias=_env("GATEWAY_PORT", "gateway_port")
    )
    users_port: int = Field(
        DEFAULT_PORTS["users"], validation_alias=_env("USERS_PORT", "users_port")
    )
    events_port: int = Field(
        DEFAULT_PORTS["events"], validation_alias=_env("EVENTS_PORT", "events_port")
    )
    notifications_port: int = Field(
        DEFAULT_PORTS["notifications"],
        validation_alias=_env("NOTIFICATIONS_PORT", "notifications_port"),
    )
    # Static instances of a service (comma-separated base URLs, ``http://host:port``): what
    # ``invoke run --replicas`` hands every part; unset: the one instance on its ``*_PORT``.
    users_instances: Annotated[tuple[str, ...], NoDecode] = Field(
        (), validation_alias=_env("USERS_INSTANCES", "users_instances")
    )
    events_instances: Annotated[tuple[str, ...], NoDecode] = Field(
        (), validation_alias=_env("EVENTS_INSTANCES", "events_instances")
    )
    notifications_instances: Annotated[tuple[str, ...], NoDecode] = Field(
        (), validation_alias=_env("NOTIFICATIONS_INSTANCES", "notifications_instances")
    )
    smtp_host: str = Field("127.0.0.1", validation_alias=_env("SMTP_HOST", "smtp_host"))
    smtp_port: int = Field(1025, validation_alias=_env("SMTP_PORT", "smtp_port"))
    smtp_user: str | None = Field(None, validation_alias=_env("SMTP_USER", "smtp_user"))
    smtp_password: str | None = Field(
        None, repr=False, validation_alias=_env("SMTP_PASSWORD", "smtp_password")
    )
    smtp_tls: Literal["none", "starttls", "ssl"] = Field(
        "none", validation_alias=_env("SMTP_TLS", "smtp_tls")
    )
    smtp_timeout: float = Field(10.0, validation_alias=_env("SMTP_TIMEOUT", "smtp_timeout"))
    mail_from: str = Field(
        "EventPost <no-reply@eventpost.local>", validation_alias=_env("MAIL_FROM", "mail_from")
    )
    consul_http_addr: str | None = Field(
        None, validation_alias=_env("CONSUL_HTTP_ADDR", "consul_http_addr")
    )
    # Consul: ACL token (sent as X-Consul-Token), the address an instance registers when it
    # listens on 0.0.0.0 (a container) or another host, its check timings (seconds), how often
    # it makes sure the agent still knows it, and the wait of the blocking queries.
    consul_http_token: str | None = Field(
        None, repr=False, validation_alias=_env("CONSUL_HTTP_TOKEN", "consul_http_token")
    )
    service_address: str | None = Field(
        None, validation_alias=_env("SERVICE_ADDRESS", "service_address")
    )
    consul_check_interval: float = Field(
        10.0, gt=0, validation_alias=_env("CONSUL_CHECK_INTERVAL", "consul_check_interval")
    )
    consul_check_timeout: float = Field(
        2.0, gt=0, validation_alias=_env("CONSUL_CHECK_TIMEOUT", "consul_check_timeout")
    )
    consul_deregister_after: float = Field(
        60.0, gt=0, validation_alias=_env("CONSUL_DEREGISTER_AFTER", "consul_deregister_after")
    )
    consul_resync_interval: float = Field(
        10.0, gt=0, validation_alias=_env("CONSUL_RESYNC_INTERVAL", "consul_resync_interval")
    )
    consul_wait: float = Field(30.0, gt=0, validation_alias=_env("CONSUL_WAIT", "consul_wait"))
    dispatch_interval: float = Field(
        1.0, gt=0, validation_alias=_env("DISPATCH_INTERVAL", "dispatch_interval")
    )
    max_body_bytes: int = Field(
        64 * 1024, validation_alias=_env("MAX_BODY_BYTES", "max_body_bytes")
    )
    log_level: str = Field("INFO", validation_alias=_env("LOG_LEVEL", "log_level"))
    # Delays (seconds) between the tries of a failing message; its length is the number of
    # retries before the message is parked.
    retry_delays: Annotated[tuple[float, ...], NoDecode] = Field(
        (5.0, 30.0, 120.0, 600.0), validation_alias=_env("RETRY_DELAYS", "retry_delays")
    )
    # How long an access token lives, seconds.
    access_token_ttl: int = Field(
        900, validation_alias=_env("ACCESS_TOKEN_TTL", "access_token_ttl")
    )
    refresh_token_ttl: int = Field(
        30 * 24 * 3600, validation_alias=_env("REFRESH_TOKEN_TTL", "refresh_token_ttl")
    )
    # Path of the users service's signing key file (USERS_SIGNING_KEYS); unset: a file
    # under DATA_DIR/keys, created on first start.
    users_signing_keys: str | None = Field(
        None, validation_alias=_env("USERS_SIGNING_KEYS", "users_signing_keys")
    )
    # Gateway: listen address, per-client rate limit (requests/s, 0 = off) and burst, CORS
    # origins ("*" or a list), upstream timeouts (seconds).
    gateway_host: str = Field("127.0.0.1", validation_alias=_env("GATEWAY_HOST", "gateway_host"))
    gateway_rate_limit: float = Field(
        20.0, ge=0, validation_alias=_env("GATEWAY_RATE_LIMIT", "gateway_rate_limit")
    )
    gateway_rate_burst: int = Field(
        40, ge=0, validation_alias=_env("GATEWAY_RATE_BURST", "gateway_rate_burst")
    )
    # Per route class (README "Rate limits"); unset: derived from the two above.
    gateway_login_rate_limit: float | None = Field(
        None, validation_alias=_env("GATEWAY_LOGIN_RATE_LIMIT", "gateway_login_rate_limit")
    )
    gateway_login_rate_burst: int | None = Field(
        None, validation_alias=_env("GATEWAY_LOGIN_RATE_BURST", "gateway_login_rate_burst")
    )
    gateway_user_rate_limit: float | None = Field(
        None, validation_alias=_env("GATEWAY_USER_RATE_LIMIT", "gateway_user_rate_limit")
    )
    gateway_user_rate_burst: int | None = Field(
        None, validation_alias=_env("GATEWAY_USER_RATE_BURST", "gateway_user_rate_burst")
    )
    gateway_admin_rate_limit: float | None = Field(
        None, validation_alias=_env("GATEWAY_ADMIN_RATE_LIMIT", "gateway_admin_rate_limit")
    )
    gateway_admin_rate_burst: int | None = Field(
        None, validation_alias=_env("GATEWAY_ADMIN_RATE_BURST", "gateway_admin_rate_burst")
    )
    # Redis that holds the gateway's rate-limit buckets, shared by every instance (unset: each
    # gateway keeps its own in memory); keys start with the prefix.
    redis_url: str | None = Field(None, repr=False, validation_alias=_env("REDIS_URL", "redis_url"))
    gateway_redis_prefix: str = Field(
        "eventpost:ratelimit:",
        validation_alias=_env("GATEWAY_REDIS_PREFIX", "gateway_redis_prefix"),
    )
    gateway_cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        ("*",), validation_alias=_env("GATEWAY_CORS_ORIGINS", "gateway_cors_origins")
    )
    gateway_connect_timeout: float = Field(
        2.0, validation_alias=_env("GATEWAY_CONNECT_TIMEOUT", "gateway_connect_timeout")
    )
    gateway_upstream_timeout: float = Field(
        10.0, validation_alias=_env("GATEWAY_UPSTREAM_TIMEOUT", "gateway_upstream_timeout")
    )
    # Gateway HTTP edge (gateway.edge_http): request-target and header-block sizes (bytes),
    # header field count, and deadlines (seconds) for the header block and for the body.
    # The URL and header limits stay below what the services' server (granian: hyper's 100
    # fields, a ~400 KiB head) takes, so that what the gateway forwards is never refused by a
    # service.
    gateway_max_url_bytes: int = Field(
        4000, ge=64, validation_alias=_env("GATEWAY_MAX_URL_BYTES", "gateway_max_url_bytes")
    )
    gateway_max_header_bytes: int = Field(
        16 * 1024,
        ge=1024,
        validation_alias=_env("GATEWAY_MAX_HEADER_BYTES", "gateway_max_header_bytes"),
    )
    gateway_max_header_field_bytes: int = Field(
        8000,
        ge=256,
        validation_alias=_env("GATEWAY_MAX_HEADER_FIELD_BYTES", "gateway_max_header_field_bytes"),
    )
    gateway_max_headers: int = Field(
        100, ge=8, validation_alias=_env("GATEWAY_MAX_HEADERS", "gateway_max_headers")
    )
    gateway_header_timeout: float = Field(
        10.0, gt=0, validation_alias=_env("GATEWAY_HEADER_TIMEOUT", "gateway_header_timeout")
    )
    gateway_body_timeout: float = Field(
        30.0, gt=0, validation_alias=_env("GATEWAY_BODY_TIMEOUT", "gateway_body_timeout")
    )

    @field_validator("retry_delays", mode="before")
    @classmethod
    def _delays(cls, value: object) -> object:
        return _comma_list(value)

    @field_validator(
        "users_instances", "events_instances", "notifications_instances", mode="before"
    )
    @classmethod
    def _instances(cls, value: object) -> object:
        urls = _comma_list(value)
        if isinstance(urls, tuple):
            for url in urls:
                if not url.startswith(("http://", "https://")):
                    raise ValueError(f"{url!r} is not an http(s) base URL")
            return tuple(url.rstrip("/") for url in urls)
        return urls

    @field_validator("gateway_cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        return _comma_list(value) or ("*",)

    @field_validator("amqp_queue_type", mode="before")
    @classmethod
    def _queue_type(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what the constructor is given: the environment is read by from_env alone.
        return (init_settings,)

    @classmethod
    def from_env(cls, service: str = "eventpost", env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings of ``service`` from ``env`` (the process environment).

        Raises ValueError (a pydantic ValidationError) naming the variable at fault."""
        env = os.environ if env is None else env
        if env.get("CONSUL_HTTP_ADDR"):
            env = cls._with_kv(service, env)
        source = MappingEnvSource(cls, env)
        return cls(service=service, **source())

    @classmethod
    def _with_kv(cls, service: str, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` with the Consul KV settings over it; a KV value that does not validate is
        logged and the environment's kept (a bad key in KV must not stop every part)."""
        merged = dict(env)
        overrides = consul_config(env["CONSUL_HTTP_ADDR"], env.get("CONSUL_HTTP_TOKEN"))
        for name, value in sorted(overrides.items()):
            try:
                cls(service=service, **MappingEnvSource(cls, {**merged, name: value})())
            except ValueError as exc:
                log.warning(
                    "Consul KV %s=%r does not parse; using the environment's value",
                    name,
                    value,
                    extra={"variable": name, "error": str(exc).splitlines()[0]},
                )
                continue
            merged[name] = value
        return merged

    @property
    def service_ports(self) -> dict[str, int]:
        """The HTTP port of every service, the gateway's included."""
        return {
            "gateway": self.gateway_port,
            "users": self.users_port,
            "events": self.events_port,
            "notifications": self.notifications_port,
        }

    @property
    def port(self) -> int:
        """The HTTP port of this process's service."""
        return self.service_ports.get(self.service, self.gateway_port)

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields changed, validated (tests use it). ``service_ports`` may
        be given as a mapping of service name to port."""
        for name, port in (changes.pop("service_ports", None) or {}).items():
            changes[f"{name}_port"] = port
        return type(self).model_validate({**self.model_dump(), **changes})
