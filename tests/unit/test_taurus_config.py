"""The Taurus load tests under perf/taurus/ are valid bzt configurations of the seed's
scenarios: Locust executor, no update check, console reporter off, any error fails the run,
cache simulation off, the gateway at 127.0.0.1:8000 by default, and every script there."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

TAURUS = Path(__file__).resolve().parents[2] / "perf" / "taurus"
CONFIGS = ("events.yml", "notifications.yml", "suite.yml")


def load(name: str) -> dict:
    return yaml.safe_load((TAURUS / name).read_text())


def user_classes(script: Path) -> set[str]:
    """Concrete Locust user classes a locustfile defines (read from its source)."""
    tree = ast.parse(script.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.ClassDef)}


@pytest.mark.parametrize("name", CONFIGS)
def test_settings_are_the_ones_a_local_run_needs(name):
    config = load(name)
    settings = config["settings"]
    assert settings["check-updates"] is False
    assert settings["default-executor"] == "locust"
    assert settings["env"]["EVENTPOST_URL"] == "http://127.0.0.1:8000"
    assert config["modules"]["console"]["disable"] is True
    assert settings["artifacts-dir"].startswith("perf/results/")


@pytest.mark.parametrize("name", CONFIGS)
def test_any_error_fails_the_run(name):
    reporters = {r["module"]: r for r in load(name)["reporting"] if isinstance(r, dict)}
    criteria = reporters["passfail"]["criteria"]
    assert "fail>0, stop as failed" in criteria


@pytest.mark.parametrize("name", CONFIGS)
def test_every_execution_runs_an_existing_locust_script(name):
    config = load(name)
    scenarios = config["scenarios"]
    assert config["execution"]
    for execution in config["execution"]:
        scenario = scenarios[execution["scenario"]]
        assert execution["concurrency"] > 0 and execution["hold-for"]
        assert scenario["default-address"] == "${EVENTPOST_URL}"
        assert scenario["store-cache"] is False  # the seed ran with cache simulation off
        script = TAURUS / scenario["script"]
        assert script.is_file(), script
        assert user_classes(script), f"{script.name} defines no user class"


@pytest.mark.parametrize(
    ("name", "service"), [("events.yml", "events"), ("notifications.yml", "notifications")]
)
def test_each_service_runs_get_and_post_put_delete_at_the_seeds_concurrency(name, service):
    execution = {e["scenario"]: e["concurrency"] for e in load(name)["execution"]}
    assert execution == {f"{service}-get": 7, f"{service}-post-put-delete": 3}


def test_the_suite_runs_every_scenario_of_both_services():
    scenarios = {e["scenario"] for e in load("suite.yml")["execution"]}
    assert scenarios == {
        "events-get",
        "events-post-put-delete",
        "notifications-get",
        "notifications-post-put-delete",
    }


def test_the_scenarios_follow_the_seed():
    """GET: one list, then 5 by id (6 GETs a cycle); POST-PUT-DELETE: create, update, delete."""
    source = (TAURUS / "eventpost_users.py").read_text()
    assert "BY_ID = 5" in source
    tree = ast.parse(source)
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    for base in ("Events", "Notifications"):
        ppd = ast.unparse(classes[f"{base}PostPutDelete"])
        assert ppd.index(".post(") < ppd.index(".patch(") < ppd.index(".delete(")
        assert "on_start" in ast.unparse(classes[f"{base}Get"]) or base == "Events"
