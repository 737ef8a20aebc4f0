"""`invoke run` says plainly what keeps a part from starting, and starts nothing then."""

from __future__ import annotations

import socket

import pytest

from devtools.launcher import Suite, SuiteError
from tests.e2e._suite import suite_env


def _env(tmp_path) -> dict[str, str]:
    return suite_env(tmp_path, "amqp://guest:guest@127.0.0.1:5672/%2F")


def test_a_part_that_cannot_be_imported_is_named(tmp_path):
    suite = Suite(_env(tmp_path), say=lambda line: None)
    suite.parts[1].module = "services.nothing_here"
    with pytest.raises(SuiteError, match=r"users \(services.nothing_here\)"):
        suite.start()
    assert all(part.process is None for part in suite.parts)


def test_a_taken_port_is_named(tmp_path):
    env = _env(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env["EVENTS_PORT"] = str(taken.getsockname()[1])
        suite = Suite(env, say=lambda line: None)
        with pytest.raises(SuiteError, match=f"events on {env['EVENTS_PORT']}"):
            suite.start()
    assert all(part.process is None for part in suite.parts)
