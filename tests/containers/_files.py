"""What the container tests read: the repository's Dockerfiles, compose file, Heroku and CI
files, parsed."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "docker"

#: Every deployable's image, and the part of the suite (devtools.launcher) each one runs.
IMAGES = {
    "users": ["users"],
    "events": ["events"],
    "notifications": ["notifications"],
    "notifications-worker": ["notifications-worker"],
    "dispatcher": ["dispatcher"],
    "email-sender": ["email-sender"],
    "relay": ["users-relay", "events-relay"],
    "gateway": ["gateway"],
}
HTTP_IMAGES = ("users", "events", "notifications", "gateway")
#: The code each image may hold under /app, besides the toolkit (eventpost/).
CODE = {
    "users": {"services/__init__.py", "services/users/"},
    "events": {"services/__init__.py", "services/events/"},
    "notifications": {"services/__init__.py", "services/notifications/"},
    "notifications-worker": {"services/__init__.py", "services/notifications/"},
    "dispatcher": {"services/__init__.py", "services/notifications/"},
    "email-sender": {"email_sender/"},
    "relay": set(),
    "gateway": {"gateway/"},
}


@dataclass
class Instruction:
    """One Dockerfile instruction (continuation lines joined, comments dropped)."""

    keyword: str
    args: str
    stage: int  # 0 for the build stage, 1 for the run stage

    def json_args(self) -> list[str]:
        """The arguments of an exec-form (JSON array) instruction."""
        body = self.args
        if self.keyword == "HEALTHCHECK":
            body = body.split("CMD", 1)[1]
        return json.loads(body)


def dockerfile(name: str) -> Path:
    return DOCKER_DIR / f"{name}.Dockerfile"


@cache
def instructions(name: str) -> tuple[Instruction, ...]:
    """The instructions of docker/<name>.Dockerfile, in order."""
    lines, joined = dockerfile(name).read_text().splitlines(), []
    current = ""
    for line in lines:
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        current += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            joined.append(current.strip())
            current = ""
    result, stage = [], -1
    for text in joined:
        keyword, _, args = text.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        result.append(Instruction(keyword.upper(), args.strip(), max(stage, 0)))
    return tuple(result)


def build_stage_text(name: str) -> str:
    """The Dockerfile's text from its first line up to the run stage's FROM, minus the first
    comment line (which names the file)."""
    text = dockerfile(name).read_text()
    return text.split("\nFROM ${BASE_IMAGE}\n", 1)[0].split("\n", 1)[1]


def run_stage(name: str) -> list[Instruction]:
    return [i for i in instructions(name) if i.stage == 1]


def env_of(name: str) -> dict[str, str]:
    """ENV values set in the run stage (``KEY=VALUE`` forms)."""
    env: dict[str, str] = {}
    for ins in run_stage(name):
        if ins.keyword == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", ins.args):
                env[key] = value
    return env


def yaml_file(relative: str) -> Any:
    return yaml.safe_load((ROOT / relative).read_text())


def compose() -> dict[str, Any]:
    return yaml_file("docker-compose.yml")
