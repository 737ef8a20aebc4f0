"""WSGI entry point: ``python -m eventpost.serve notifications`` serves it (granian)."""

from eventpost.logs import configure_logging
from eventpost.settings import Settings
from services.notifications.app import create_app

_settings = Settings.from_env("notifications")
configure_logging("notifications", _settings.log_level)
app = create_app(_settings)
