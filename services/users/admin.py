"""Administration of the users service from the command line, against the same store and key
file the running service uses (``invoke create-admin`` and ``invoke rotate-keys`` call it):

    python -m services.users.admin create-admin --username U [--email E] [--password-stdin]
    python -m services.users.admin rotate-keys [--keep N]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from eventpost.errors import DomainError
from eventpost.logs import configure_logging
from eventpost.settings import Settings
from eventpost.storage import open_store
from services.users.domain import public_user
from services.users.keys import KeyRing, default_key_path, rotate_key_file
from services.users.service import UsersService
from services.users.store import UsersStore


def create_admin(
    settings: Settings, username: str, email: str | None, password: str | None
) -> tuple[dict, bool]:
    """Create the admin account ``username`` or promote it; returns (public user, created)."""
    store = open_store(settings, "users")
    try:
        service = UsersService(
            UsersStore(store),
            KeyRing(default_key_path(settings)),
            access_token_ttl=settings.access_token_ttl,
            refresh_token_ttl=settings.refresh_token_ttl,
        )
        user, created = service.admin.make_admin(username, email, password)
        return public_user(user), created
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.users.admin")
    sub = parser.add_subparsers(dest="command", required=True)
    admin = sub.add_parser("create-admin", help="create an admin account or promote one")
    admin.add_argument("--username", required=True)
    admin.add_argument("--email")
    admin.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    rotate = sub.add_parser("rotate-keys", help="add a new signing key; drop the oldest")
    rotate.add_argument("--keep", type=int, default=2, help="keys kept, the new one included")
    args = parser.parse_args(argv)

    settings = Settings.from_env("users")
    configure_logging("users-admin", "WARNING")
    if args.command == "rotate-keys":
        jwk = rotate_key_file(default_key_path(settings), keep=args.keep)
        sys.stdout.write(f"new signing key {jwk['kid']} (keeping {args.keep} keys)\n")
        return 0
    password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else None
    try:
        user, created = create_admin(settings, args.username, args.email, password or None)
    except DomainError as exc:
        sys.stderr.write(f"create-admin: {exc.detail}\n")
        return 1
    verb = "created" if created else "promoted"
    sys.stdout.write(f"{verb} admin {json.dumps(user)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
