"""Locustfile of one seed scenario (see eventpost_users.py): ``NotificationsGet``."""

from eventpost_users import NotificationsGet


class NotificationsGetUser(NotificationsGet):
    """The scenario, made concrete for Locust."""

    abstract = False
