"""Settings that change while a part runs: ``GATEWAY_RATE_LIMIT``, ``GATEWAY_RATE_BURST`` and
``DISPATCH_INTERVAL`` from Consul KV (``eventpost/config/<VARIABLE>``).

A :class:`LiveSettings` follows the KV prefix with a blocking query (so a change arrives in
well under a second, within the 10 s API.md promises) and calls the part's own setter for a
variable whose value changed. The value is validated as the settings validate it at start;
one that does not parse (``GATEWAY_RATE_LIMIT=abc``) is logged and the previous value kept. A
deleted key puts back the value the part started with from its environment. Consul
unreachable, hanging or answering garbage: logged, the current values kept, tried again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import consul
from pydantic import ValidationError

from eventpost.consul import CONSUL_ERRORS, KV_PREFIX, LIVE_SETTINGS, agent, duration, kv_settings
from eventpost.settings import Settings

log = logging.getLogger("eventpost.consul")

#: Environment variable -> settings field, for the live ones.
FIELDS = {name: name.lower() for name in LIVE_SETTINGS}

Setter = Callable[[Any], None]


class LiveSettings:
    """Applies KV changes of some live settings through ``setters`` (field name -> setter).

    ``settings`` are the part's settings as started (KV included); ``env`` the environment it
    started from (a deleted key goes back to the value there, or the default)."""

    def __init__(
        self,
        settings: Settings,
        setters: Mapping[str, Setter],
        *,
        env: Mapping[str, str],
        client: consul.Consul | None = None,
        retry: float = 1.0,
    ) -> None:
        assert settings.consul_http_addr
        self.settings = settings
        self.setters = dict(setters)
        self.env = env
        self.client = client or agent(settings.consul_http_addr, settings.consul_http_token)
        self.retry = retry
        self._seen: dict[str, str | None] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def apply(self, variable: str, raw: str | None) -> bool:
        """Apply one KV value (None: the key is gone); returns whether the setting changed."""
        field = FIELDS[variable]
        if raw is None:
            raw = self.env.get(variable) or Settings.model_fields[field].default
        try:
            changed = self.settings.with_(**{field: raw})
        except (ValidationError, ValueError) as exc:
            log.warning(
                "Consul KV %s%s=%r does not parse; keeping %s",
                KV_PREFIX,
                variable,
                raw,
                getattr(self.settings, field),
                extra={"variable": variable, "value": raw, "error": str(exc).splitlines()[0]},
            )
            return False
        old, new = getattr(self.settings, field), getattr(changed, field)
        if old == new:
            return False
        self.settings = changed
        self.setters[field](new)
        log.info(
            "%s changed from %s to %s (Consul KV)",
            variable,
            old,
            new,
            extra={"variable": variable, "old": old, "new": new},
        )
        return True

    def on_answer(self, values: Mapping[str, str]) -> None:
        """One answer of the KV watch: apply what changed since the last one."""
        for variable, field in FIELDS.items():
            if field not in self.setters:
                continue
            raw = values.get(variable)
            if variable in self._seen and self._seen[variable] == raw:
                continue
            self._seen[variable] = raw
            self.apply(variable, raw)

    def run(self, stop: threading.Event | None = None) -> None:
        """Watch until ``stop`` (or :meth:`stop`): the shape of a worker loop."""
        stop = stop or self._stop
        index: Any = None
        failing = False
        while not stop.is_set() and not self._stop.is_set():
            try:
                new_index, entries = self.client.kv.get(
                    KV_PREFIX, recurse=True, index=index, wait=duration(self.settings.consul_wait)
                )
                values = kv_settings(entries)
                index = new_index if index is None or int(new_index) >= int(index) else None
            except CONSUL_ERRORS as exc:
                (log.debug if failing else log.warning)(
                    "Consul KV watch failed; keeping the current settings",
                    extra={"error": repr(exc)},
                )
                failing = True
                stop.wait(self.retry)
                continue
            failing = False
            self.on_answer(values)

    def start(self) -> LiveSettings:
        """Watch in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.run, name="consul-settings", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (the thread ends after its current query)."""
        self._stop.set()
