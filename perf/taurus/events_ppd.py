"""Locustfile of one seed scenario (see eventpost_users.py): ``EventsPostPutDelete``."""

from eventpost_users import EventsPostPutDelete


class EventsPostPutDeleteUser(EventsPostPutDelete):
    """The scenario, made concrete for Locust."""

    abstract = False
