"""Locustfile of one seed scenario (see eventpost_users.py): ``NotificationsPostPutDelete``."""

from eventpost_users import NotificationsPostPutDelete


class NotificationsPostPutDeleteUser(NotificationsPostPutDelete):
    """The scenario, made concrete for Locust."""

    abstract = False
