"""WSGI entry point: ``python -m eventpost.serve events`` serves it (granian); connects to
nothing at import."""

from eventpost.logs import configure_logging
from eventpost.settings import Settings
from services.events.app import create_app

settings = Settings.from_env("events")
configure_logging("events", settings.log_level)
app = create_app(settings)
