"""The users service: accounts, passwords, access and refresh tokens, email addresses.

Run it with ``gunicorn services.users.wsgi:app``; its outbox (``user.created``,
``user.email_added``, ``user.deleted``) is published by
``python -m eventpost.messaging.relay --service users``."""
