"""A three-node cluster of private RabbitMQ nodes with quorum queues (``AMQP_QUEUE_TYPE=
quorum``: every consumer queue, delay queue and parking queue), every part given all three
URLs in ``AMQP_URL``. The first node, the one every client connects to first and where the
queue leaders were declared, is killed (SIGKILL) in the middle of 1,000 publishes and never
comes back: consumers and publishers move to a live node by themselves, nothing is lost,
every email is in the sink exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.broker._rabbit_node import private_nodes
from tests.broker._traffic import Traffic, wait_for

pytestmark = [pytest.mark.private_broker, pytest.mark.slow, pytest.mark.timeout(600)]


def _queue_types(node) -> dict[str, str]:  # type: ignore[no-untyped-def]
    listing = node.ctl("list_queues", "--no-table-headers", "name", "type").stdout
    return dict(line.split("\t")[:2] for line in listing.splitlines() if "\t" in line)


def test_a_killed_cluster_node_loses_nothing_with_quorum_queues(tmp_path: Path):
    with private_nodes(3) as nodes:
        status = json.loads(nodes[0].ctl("cluster_status", "--formatter", "json").stdout)
        assert sorted(status["running_nodes"]) == sorted(node.node for node in nodes)
        url = ",".join(node.url for node in nodes)
        traffic = Traffic(tmp_path, url, queue_type="quorum", users=500, reminders=500)

        def moved_on() -> None:
            # The consumers were all on the first node: they are back, on the others.
            for queue in ("email-sender.jobs", "notifications.email-outcomes"):
                wait_for(lambda q=queue: traffic.consumers(q) >= 1, 120, f"a consumer of {queue}")

        counts = traffic.run(fault=nodes[0].kill, recover=moved_on)
        types = _queue_types(nodes[1])
    print(f"cluster, one node killed: {counts}")
    assert counts.lost == {"user.created": 0, "email.send": 0, "emails": 0}
    assert counts.published == {"user.created": 500, "email.send": 500}
    assert counts.emails == 1000
    assert counts.emails_twice == 0
    assert counts.reminders_sent == 500
    assert counts.emails_before_fault < 1000
    assert counts.held_in_outbox > 0  # events waited while the clients moved to other nodes
    assert counts.exit_codes == {
        "email-sender": 0,
        "worker": 0,
        "dispatcher": 0,
        "users-relay": 0,
    }
    # Every queue of every consumer is a quorum queue: its own, its delay and parking ones.
    ours = {name: kind for name, kind in types.items() if name != "audit"}
    assert "email-sender.jobs.parked" in ours
    assert "email-sender.jobs.retry.500ms" in ours
    assert set(ours.values()) == {"quorum"}, ours
