"""The host plays (deploy: Docker installed and started, the image loaded, the container
started; populate: the ports waited for) run for real over SSH against the tests' own host
(tests/provision/_testhost.py), through ``invoke runAWS --tags deploy,populate``; a second
run on the same host reports changed=0."""

from __future__ import annotations

import re
import urllib.request

import pytest
import yaml

from tests.provision import _testhost
from tests.provision.conftest import aws_env, invoke, make_vault

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PAGE = "eventpost users (test image)\n"


@pytest.fixture(scope="module")
def testhost(tmp_path_factory):
    why = _testhost.missing_prerequisites()
    if why:
        pytest.skip(f"no test host for the host plays: {why}")
    host = _testhost.start(tmp_path_factory.mktemp("testhost"))
    yield host
    _testhost.stop(host)


def recap(output: str, host: str) -> dict[str, int]:
    line = re.search(rf"^{re.escape(host)}\s+:\s+(.*)$", output, re.MULTILINE)
    assert line, output
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line.group(1))}


def test_host_plays_deploy_over_ssh_and_are_idempotent(ansible, testhost, tmp_path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    # What `docker save eventpost/users:latest` would give, made on the spot (no registry).
    _testhost.busybox_image(images / "users.tar", "eventpost/users:latest", 8001, PAGE)
    inventory = tmp_path / "inventory.yml"
    host_vars = {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(testhost.key),
        "eventpost_role": "users",
        "eventpost_private_ip": testhost.ip,
    }
    inventory.write_text(yaml.safe_dump({"eventpost": {"hosts": {testhost.ip: host_vars}}}))
    # The vault of this run: the secrets, and the layout of a one-instance suite whose
    # image is loaded from the archive instead of pulled.
    vault, password = make_vault(
        tmp_path / "vault",
        {
            "vault_aws_access_key": "unused",
            "vault_aws_secret_key": "unused",
            "vault_rabbitmq_password": "rabbit secret",
            "eventpost_layout": {"users": ["users"]},
            "eventpost_backbone_role": "users",
            "eventpost_image_prefix": "eventpost",
            "eventpost_image_archive_dir": str(images),
            # Under the host's private /run: the rest of its file system is this machine's.
            "eventpost_image_dir": "/run/eventpost/images",
            "eventpost_populate": False,
            # The host shares this machine's apt index and cannot reach the mirrors.
            "docker_apt_cache_valid_time": 10 * 365 * 86400,
        },
    )
    env = aws_env(None, vault)
    env["ANSIBLE_INVENTORY"] = f"{_testhost_inventory()},{inventory}"
    args = ["runAWS", "--vault-password-file", str(password), "--tags", "deploy,populate"]

    first = invoke(args, env)
    print(first.stdout)
    assert first.returncode == 0, first.stdout + first.stderr
    counts = recap(first.stdout, testhost.ip)
    assert counts["failed"] == 0 and counts["unreachable"] == 0
    # Docker started, the archive directory made, the archive copied, the image loaded, the
    # container started.
    assert counts["changed"] == 5
    for step in (
        "docker : Install Docker and the Python requests library",
        "docker : Start Docker now and on every boot",
        "eventpost : Load the EventPost images",
        "eventpost : Start the containers",
        "Wait for every port the suite serves",
    ):
        assert f"TASK [{step}]" in first.stdout

    ps = testhost.run("docker", "ps", "--format", "{{.Names}} {{.Image}} {{.Status}}")
    assert ps.returncode == 0, ps.stderr
    assert re.search(r"^eventpost-users eventpost/users:latest Up", ps.stdout, re.M), ps.stdout
    inspect = testhost.run(
        "docker", "inspect", "--format", "{{json .Config.Env}}", "eventpost-users"
    )
    assert f"SERVICE_ADDRESS={testhost.ip}" in inspect.stdout
    assert f"CONSUL_HTTP_ADDR=http://{testhost.ip}:8500" in inspect.stdout
    assert "AMQP_URL=amqp://eventpost:rabbit%20secret@" in inspect.stdout
    assert "MONGODB_URL" not in inspect.stdout  # none in the vault: the embedded store
    with urllib.request.urlopen(f"http://{testhost.ip}:8001/", timeout=10) as reply:
        assert reply.read().decode() == PAGE

    second = invoke(args, env)
    print(second.stdout)
    assert second.returncode == 0, second.stdout + second.stderr
    assert recap(second.stdout, testhost.ip)["changed"] == 0
    assert recap(second.stdout, "localhost")["changed"] == 0


def _testhost_inventory() -> str:
    from tasks.aws import PROVISION

    return str(PROVISION / "hosts")
