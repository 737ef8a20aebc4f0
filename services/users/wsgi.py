"""gunicorn entry point: ``gunicorn services.users.wsgi:app``."""

from eventpost.logs import configure_logging
from eventpost.settings import Settings
from services.users.app import create_app

settings = Settings.from_env("users")
configure_logging("users", settings.log_level)
app = create_app(settings)
