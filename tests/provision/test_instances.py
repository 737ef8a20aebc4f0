"""The instances play run for real (``invoke runAWS --tags instances``) against moto's EC2
server, and the runs that must stop before touching any instance: wrong vault password,
missing credentials, an unreachable endpoint."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
import yaml

from tests.provision.conftest import aws_env, free_port, invoke, make_vault

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = yaml.safe_load((ROOT / "provision/group_vars/all/main.yml").read_text())[
    "eventpost_layout"
]
CREDENTIALS = {"vault_aws_access_key": "testing", "vault_aws_secret_key": "testing"}
# moto's own catalogue: Canonical's Ubuntu 14.04 and 16.04 (both LTS, 16.04 the newer).
XENIAL = "ami-785db401"


def ec2(endpoint: str):
    return boto3.client(
        "ec2",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def start(client, project: str, role: str) -> str:
    tags = [{"Key": "project", "Value": project}, {"Key": "role", "Value": role}]
    reply = client.run_instances(
        ImageId=XENIAL,
        InstanceType="t2.micro",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )
    return reply["Instances"][0]["InstanceId"]


def states(client) -> dict[str, dict]:
    """Every instance: its state, tags, type, image and security groups."""
    found = {}
    for reservation in client.describe_instances()["Reservations"]:
        for inst in reservation["Instances"]:
            found[inst["InstanceId"]] = {
                "state": inst["State"]["Name"],
                "tags": {t["Key"]: t["Value"] for t in inst.get("Tags", [])},
                "type": inst["InstanceType"],
                "image": inst["ImageId"],
                "groups": [g["GroupName"] for g in inst.get("SecurityGroups", [])],
            }
    return found


def show(title: str, found: dict[str, dict]) -> None:
    print(f"\n{title}")
    for iid, inst in sorted(found.items(), key=lambda kv: sorted(kv[1]["tags"].items())):
        tags = ",".join(f"{k}={v}" for k, v in sorted(inst["tags"].items()))
        print(f"  {iid}  {inst['state']:<10} {inst['type']:<9} {inst['image']}  {tags}")


@pytest.fixture
def seeded(moto_endpoint):
    """moto with an old instance of the suite, one of another project, and the key pair."""
    client = ec2(moto_endpoint)
    client.create_key_pair(KeyName="eventpost")
    old = start(client, "eventpost", "users")
    other = start(client, "other", "web")
    return client, old, other


def test_instances_play_replaces_the_suites_instances_only(
    ansible, seeded, moto_endpoint, tmp_path
) -> None:
    client, old, other = seeded
    before = states(client)
    show("before runAWS --tags instances:", before)
    assert {before[old]["state"], before[other]["state"]} == {"running"}

    vault, password = make_vault(tmp_path, CREDENTIALS)
    run = invoke(
        ["runAWS", "--vault-password-file", str(password), "--tags", "instances"],
        aws_env(moto_endpoint, vault),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"AWS endpoint: {moto_endpoint}" in run.stdout

    after = states(client)
    show("after:", after)
    assert after[old]["state"] == "terminated"
    assert after[other] == before[other]  # another project's instance: untouched
    new = {iid: inst for iid, inst in after.items() if iid not in before}
    assert sorted(inst["tags"]["role"] for inst in new.values()) == sorted(LAYOUT)
    for inst in new.values():
        assert inst["state"] == "running"
        assert inst["tags"]["project"] == "eventpost"
        assert inst["tags"]["Name"] == f"eventpost-{inst['tags']['role']}"
        assert inst["type"] == "t2.micro"
        assert inst["image"] == XENIAL  # the newest LTS of Canonical's images (ec2_ami_info)
        assert inst["groups"] == ["eventpost"]

    group = client.describe_security_groups(GroupNames=["eventpost"])["SecurityGroups"][0]
    world = sorted(
        rule["FromPort"]
        for rule in group["IpPermissions"]
        if any(r["CidrIp"] == "0.0.0.0/0" for r in rule.get("IpRanges", []))
    )
    assert world == [22, 80, 443]
    assert any(rule.get("UserIdGroupPairs") for rule in group["IpPermissions"])

    # stopAWS terminates the suite's instances and still nothing else.
    stop = invoke(
        ["stopAWS", "--vault-password-file", str(password)], aws_env(moto_endpoint, vault)
    )
    assert stop.returncode == 0, stop.stdout + stop.stderr
    final = states(client)
    show("after stopAWS:", final)
    assert {final[iid]["state"] for iid in new} == {"terminated"}
    assert final[other]["state"] == "running"


def assert_untouched(client, before: dict[str, dict]) -> None:
    assert states(client) == before


def test_check_mode_reports_and_changes_nothing(ansible, seeded, moto_endpoint, tmp_path) -> None:
    client, _old, _other = seeded
    before = states(client)
    vault, password = make_vault(tmp_path, CREDENTIALS)
    run = invoke(
        ["runAWS", "--vault-password-file", str(password), "--tags", "instances", "--check"],
        aws_env(moto_endpoint, vault),
    )
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "TASK [terminate : Terminate the suite's instances]" in run.stdout
    assert "changed: [localhost] => (item=gateway)" in run.stdout  # would start it
    assert_untouched(client, before)
    assert not client.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["eventpost"]}]
    )["SecurityGroups"]


def test_wrong_vault_password_stops_before_any_instance(
    ansible, seeded, moto_endpoint, tmp_path
) -> None:
    client, _old, _other = seeded
    before = states(client)
    vault, _ = make_vault(tmp_path, CREDENTIALS)
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not the password\n")
    run = invoke(
        ["runAWS", "--vault-password-file", str(wrong), "--tags", "instances"],
        aws_env(moto_endpoint, vault),
    )
    print(run.stdout, run.stderr)
    assert run.returncode != 0
    assert "does not decrypt the vault" in run.stderr
    assert "No instance was created or terminated" in run.stderr
    assert_untouched(client, before)


def test_missing_credentials_stop_before_any_instance(
    ansible, seeded, moto_endpoint, tmp_path
) -> None:
    client, _old, _other = seeded
    before = states(client)
    vault, password = make_vault(tmp_path, {"vault_aws_access_key": ""})
    run = invoke(
        ["runAWS", "--vault-password-file", str(password), "--tags", "instances"],
        aws_env(moto_endpoint, vault),
    )
    print(run.stdout, run.stderr)
    assert run.returncode != 0
    assert "No AWS credentials" in run.stdout
    assert "No instance was created or terminated" in run.stdout
    assert_untouched(client, before)


def test_missing_vault_says_how_to_make_one(ansible, tmp_path) -> None:
    password = tmp_path / "password"
    password.write_text("x\n")
    run = invoke(
        ["runAWS", "--vault-password-file", str(password)],
        aws_env(None, tmp_path / "absent.yml"),
    )
    assert run.returncode != 0
    assert "No vault with the AWS credentials" in run.stderr
    assert "ansible-vault create" in run.stderr


def test_unreachable_endpoint_is_named_and_nothing_changes(
    ansible, seeded, moto_endpoint, tmp_path
) -> None:
    client, _old, _other = seeded
    before = states(client)
    vault, password = make_vault(tmp_path, CREDENTIALS)
    dead = f"http://127.0.0.1:{free_port()}"
    run = invoke(
        ["runAWS", "--vault-password-file", str(password), "--tags", "instances"],
        aws_env(dead, vault),
    )
    print(run.stdout, run.stderr)
    assert run.returncode != 0
    assert f"The AWS endpoint {dead} cannot be reached" in run.stdout
    assert "No instance was created or terminated" in run.stdout
    assert_untouched(client, before)
