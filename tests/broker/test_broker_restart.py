"""The broker stopped and started again in the middle of real traffic: a private RabbitMQ
node of this test's own (the shared one must never be restarted) carries 1,000 publishes
from the relays (users, notifications worker) and the dispatcher; it is stopped cleanly
while they go on, and started again. Every message reaches its queue at least once and every
email is in the sink exactly once (the real email-sender, the aiosmtpd sink)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.broker._rabbit_node import private_nodes
from tests.broker._traffic import Traffic

pytestmark = [pytest.mark.private_broker, pytest.mark.slow, pytest.mark.timeout(600)]


def test_broker_restart_mid_traffic_loses_nothing_and_sends_each_email_once(tmp_path: Path):
    with private_nodes(1) as [node]:
        traffic = Traffic(tmp_path, node.url, users=500, reminders=500)
        counts = traffic.run(fault=node.stop, recover=node.start)
    print(f"broker restart: {counts}")
    assert counts.lost == {"user.created": 0, "email.send": 0, "emails": 0}
    assert counts.published == {"user.created": 500, "email.send": 500}
    assert counts.emails == 1000
    assert counts.emails_twice == 0
    assert counts.reminders_sent == 500
    # The fault fell in the middle of the traffic: events waited in the outboxes meanwhile.
    assert counts.emails_before_fault < 1000
    assert counts.held_in_outbox > 0
    assert counts.exit_codes == {
        "email-sender": 0,
        "worker": 0,
        "dispatcher": 0,
        "users-relay": 0,
    }
