"""WSGI entry point: ``python -m eventpost.serve users`` serves it (granian)."""

from eventpost.logs import configure_logging
from eventpost.settings import Settings
from services.users.app import create_app

settings = Settings.from_env("users")
configure_logging("users", settings.log_level)
app = create_app(settings)
