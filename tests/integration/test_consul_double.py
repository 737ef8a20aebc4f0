"""The Consul double answers as Consul's documented HTTP API does (what the other Consul tests
rely on)."""

from __future__ import annotations

import base64
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from devtools.consul_double import ConsulDouble, parse_duration


@pytest.fixture
def consul():
    with ConsulDouble(reap_interval=0.05) as double:
        yield double


@pytest.fixture
def health_server():
    """A tiny HTTP server whose /health answers ``state["status"]``."""
    state = {"status": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(state["status"])
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], state
    server.shutdown()
    server.server_close()


def _until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_durations():
    assert parse_duration("10s") == 10
    assert parse_duration("250ms") == 0.25
    assert parse_duration("1m") == 60
    assert parse_duration("", 3) == 3
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_register_with_lowercase_fields_and_http_check_starting_critical(consul, health_server):
    port, state = health_server
    body = {
        "name": "events",
        "id": "events-1",
        "address": "127.0.0.1",
        "port": port,
        "tags": ["v1"],
        "check": {"http": f"http://127.0.0.1:{port}/health", "interval": "50ms", "timeout": "1s"},
    }
    assert httpx.put(consul.url + "/v1/agent/service/register", json=body).status_code == 200
    checks = httpx.get(consul.url + "/v1/agent/checks").json()
    assert checks["service:events-1"]["Status"] in ("critical", "passing")
    assert _until(lambda: consul.passing("events") == [f"127.0.0.1:{port}"])
    answer = httpx.get(consul.url + "/v1/health/service/events?passing")
    assert [e["Service"]["ID"] for e in answer.json()] == ["events-1"]
    assert int(answer.headers["X-Consul-Index"]) > 0
    state["status"] = 500
    assert _until(lambda: consul.passing("events") == [])
    assert httpx.get(consul.url + "/v1/health/service/events?passing").json() == []
    assert len(httpx.get(consul.url + "/v1/health/service/events").json()) == 1
    assert httpx.get(consul.url + "/v1/catalog/services").json()["events"] == ["v1"]


def test_a_check_without_status_starts_critical(consul):
    body = {"Name": "w", "ID": "w1", "Check": {"TTL": "10s"}}
    httpx.put(consul.url + "/v1/agent/service/register", json=body)
    assert consul.checks["service:w1"].status == "critical"
    assert httpx.get(consul.url + "/v1/health/service/w?passing").json() == []


def test_ttl_checks_pass_expire_and_404_when_unknown(consul):
    body = {"Name": "w", "ID": "w1", "Check": {"TTL": "300ms", "CheckID": "w1-ttl"}}
    httpx.put(consul.url + "/v1/agent/service/register", json=body)
    assert httpx.put(consul.url + "/v1/agent/check/pass/w1-ttl").status_code == 200
    assert consul.passing("w") == [":0"]
    assert _until(lambda: consul.checks["w1-ttl"].status == "critical")
    update = {"Status": "warning", "Output": "slow"}
    assert httpx.put(consul.url + "/v1/agent/check/update/w1-ttl", json=update).status_code == 200
    assert consul.checks["w1-ttl"].status == "warning"
    assert httpx.put(consul.url + "/v1/agent/check/pass/nope").status_code == 404
    assert httpx.put(consul.url + "/v1/agent/check/fail/w1-ttl").status_code == 200
    assert consul.checks["w1-ttl"].status == "critical"


def test_deregister_critical_service_after(consul):
    body = {
        "Name": "w",
        "ID": "w1",
        "Check": {"TTL": "10s", "DeregisterCriticalServiceAfter": "0.2s"},
    }
    httpx.put(consul.url + "/v1/agent/service/register", json=body)
    assert _until(lambda: consul.service_ids() == [])


def test_deregister_and_agent_service(consul):
    httpx.put(consul.url + "/v1/agent/service/register", json={"Name": "a", "ID": "a1"})
    assert httpx.get(consul.url + "/v1/agent/service/a1").json()["Service"] == "a"
    assert httpx.put(consul.url + "/v1/agent/service/deregister/a1").status_code == 200
    assert httpx.get(consul.url + "/v1/agent/service/a1").status_code == 404
    assert httpx.put(consul.url + "/v1/agent/service/deregister/a1").status_code == 404


def test_blocking_query_returns_on_change_or_after_wait(consul):
    first = httpx.get(consul.url + "/v1/health/service/a")
    index = first.headers["X-Consul-Index"]
    got = {}

    def block():
        got["answer"] = httpx.get(
            consul.url + f"/v1/health/service/a?index={index}&wait=5s", timeout=10
        )

    thread = threading.Thread(target=block)
    thread.start()
    time.sleep(0.2)
    assert thread.is_alive()  # held: nothing changed yet
    body = {"Name": "a", "ID": "a1", "Check": {"TTL": "10s", "Status": "passing"}}
    httpx.put(consul.url + "/v1/agent/service/register", json=body)
    thread.join(5)
    assert [e["Service"]["ID"] for e in got["answer"].json()] == ["a1"]
    assert int(got["answer"].headers["X-Consul-Index"]) > int(index)
    index = got["answer"].headers["X-Consul-Index"]
    timed = httpx.get(consul.url + f"/v1/health/service/a?index={index}&wait=100ms")
    assert timed.headers["X-Consul-Index"] == index


def test_kv_put_get_recurse_delete(consul):
    assert httpx.get(consul.url + "/v1/kv/eventpost/config/X").status_code == 404
    assert httpx.put(consul.url + "/v1/kv/eventpost/config/X", content=b"5").json() is True
    httpx.put(consul.url + "/v1/kv/eventpost/config/Y", content=b"abc")
    entries = httpx.get(consul.url + "/v1/kv/eventpost/config/?recurse").json()
    assert {e["Key"]: base64.b64decode(e["Value"]) for e in entries} == {
        "eventpost/config/X": b"5",
        "eventpost/config/Y": b"abc",
    }
    assert httpx.get(consul.url + "/v1/kv/eventpost/config/X?raw").content == b"5"
    httpx.delete(consul.url + "/v1/kv/eventpost/config/X")
    assert httpx.get(consul.url + "/v1/kv/eventpost/config/X").status_code == 404


def test_token_checked_when_configured():
    with ConsulDouble(token="s3cret") as consul:
        assert httpx.get(consul.url + "/v1/agent/services").status_code == 403
        ok = httpx.get(consul.url + "/v1/agent/services", headers={"X-Consul-Token": "s3cret"})
        assert ok.status_code == 200


def test_faults_restart_empty_down_hang_garbage(consul):
    body = {"Name": "a", "ID": "a1"}
    httpx.put(consul.url + "/v1/agent/service/register", json=body)
    httpx.put(consul.url + "/v1/kv/k", content=b"v")
    consul.restart_empty()
    assert httpx.get(consul.url + "/v1/agent/services").json() == {}
    assert httpx.get(consul.url + "/v1/kv/k?raw").content == b"v"
    consul.answer_garbage()
    with pytest.raises(ValueError):
        httpx.get(consul.url + "/v1/agent/services").json()
    consul.hang()
    with pytest.raises(httpx.TimeoutException):
        httpx.get(consul.url + "/v1/agent/services", timeout=0.3)
    consul.recover()
    consul.go_down()
    with pytest.raises(httpx.ConnectError):
        httpx.get(consul.url + "/v1/agent/services")
    consul.come_back()
    assert httpx.get(consul.url + "/v1/agent/services").status_code == 200
