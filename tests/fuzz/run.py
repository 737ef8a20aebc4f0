"""Contract fuzzing: schemathesis over docs/openapi.yaml through the real gateway.

``python -m tests.fuzz.run --max-examples 50 --seed 14`` starts the whole suite (free ports, its
own data directory and RabbitMQ virtual host, as the e2e tests do), makes an admin token and a
user token, and runs ``schemathesis run`` with every check and every phase (examples, coverage,
fuzzing, stateful). Tokens, the gateway's URL and the mailbox reach tests/fuzz/hooks.py through
the environment. The exit code is schemathesis's (0: no failure)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tests.e2e._suite import RunningSuite, isolated_vhost, run_suite, suite_env

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "docs" / "openapi.yaml"
CONFIG = Path(__file__).with_name("schemathesis.toml")
PHASES = "examples,coverage,fuzzing,stateful"
USER_PASSWORD = "fuzz user password 1"
ADMIN = ("fuzz_admin", "fuzz-admin@example.test", "fuzz admin password 1")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__)
    parser.add_argument("--max-examples", type=int, default=50, help="cases per operation")
    parser.add_argument("--seed", type=int, default=14, help="hypothesis seed")
    parser.add_argument("--phases", default=PHASES, help=f"default {PHASES}")
    parser.add_argument("--report-dir", default="", help="write junit.xml and report.json there")
    parser.add_argument("extra", nargs="*", help="more `schemathesis run` options (after --)")
    return parser.parse_args(argv)


def fixtures(suite: RunningSuite) -> dict[str, str]:
    """The environment tests/fuzz/hooks.py reads: the gateway's URL, the two tokens, the user's
    address and the suite's mailbox."""
    suite.create_admin(*ADMIN)
    admin_token = suite.login(ADMIN[0], ADMIN[2])
    user = suite.sign_up("fuzz_user", password=USER_PASSWORD)
    user_token = suite.login(user["username"], USER_PASSWORD)
    return {
        "FUZZ_BASE_URL": suite.url,
        "FUZZ_ADMIN_TOKEN": admin_token,
        "FUZZ_USER_TOKEN": user_token,
        "FUZZ_USER_EMAIL": user["email"],
        "FUZZ_MAIL_DIR": str(suite.data_dir / "mail"),
    }


def schemathesis_argv(url: str, args: argparse.Namespace) -> list[str]:
    """The ``schemathesis run`` command line (every check, the phases asked for)."""
    argv = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(CONFIG),
        "run",
        str(SPEC),
        "--url",
        url,
        "--checks",
        "all",
        "--phases",
        args.phases,
        "--max-examples",
        str(args.max_examples),
        "--seed",
        str(args.seed),
        "--workers",
        "1",
    ]
    if args.report_dir:
        report = Path(args.report_dir)
        argv += [
            "--report",
            "junit,json",
            "--report-junit-path",
            str(report / "junit.xml"),
            "--report-json-path",
            str(report / "report.json"),
        ]
    return argv + list(args.extra)


def fuzz(args: argparse.Namespace) -> int:
    """Start the suite, run schemathesis against its gateway, stop the suite."""
    with tempfile.TemporaryDirectory(prefix="eventpost-fuzz-") as tmp, isolated_vhost() as amqp:
        env = suite_env(Path(tmp), amqp)
        # Tokens must outlive a long run (the default 900 s would expire mid-way).
        env["ACCESS_TOKEN_TTL"] = "86400"
        with contextmanager(run_suite)(env) as suite:
            child_env = dict(os.environ) | fixtures(suite)
            child_env["SCHEMATHESIS_HOOKS"] = "tests.fuzz.hooks"
            child_env["PYTHONPATH"] = str(ROOT)
            done = subprocess.run(schemathesis_argv(suite.url, args), cwd=ROOT, env=child_env)
            return done.returncode


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tests.fuzz.run``."""
    return fuzz(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
