"""Locustfile of one seed scenario (see eventpost_users.py): ``EventsGet``."""

from eventpost_users import EventsGet


class EventsGetUser(EventsGet):
    """The scenario, made concrete for Locust."""

    abstract = False
