"""Print the requirements an EventPost image installs: the project's runtime dependencies
(pyproject.toml's [project].dependencies) without the two that only a developer's machine
uses (invoke, the task runner; aiosmtpd, the dev SMTP sink's server). The Dockerfiles install
them with ``pip install -c requirements.txt -r -``, so every package, transitive ones
included, comes at the version pinned in requirements.txt and nothing of the dev extras
(pytest, ruff, mongomock, httpx, ...) gets in.

Run in the images' build stage only (Python 3.11's tomllib; standard library only).
"""

import re
import sys
import tomllib

DEV_MACHINE_ONLY = {"invoke", "aiosmtpd"}


def runtime_requirements(pyproject: str = "pyproject.toml") -> list[str]:
    """The requirement lines an image installs."""
    with open(pyproject, "rb") as handle:
        dependencies = tomllib.load(handle)["project"]["dependencies"]
    keep = []
    for line in dependencies:
        name = re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].lower().replace("_", "-")
        if name not in DEV_MACHINE_ONLY:
            keep.append(line)
    return keep


if __name__ == "__main__":
    sys.stdout.write("".join(f"{line}\n" for line in runtime_requirements(*sys.argv[1:])))
