"""EventPost's web edge: what every HTTP app of the suite answers the same way (request IDs,
one log line per request, problem+json errors, ``/health``, ``/ready``, ``/metrics``).

- :mod:`eventpost.web.edge`: the logic, once, for WSGI and ASGI apps alike;
- :mod:`eventpost.web.wsgi`: :func:`create_service_app`, the app every service is built on;
- :mod:`eventpost.web.asgi`: the same edge for the gateway's ASGI app.
"""

from eventpost.web.edge import (
    REQUEST_ID_HEADER,
    dumps,
    new_request_id,
    render_domain_error,
    sane_request_id,
)
from eventpost.web.wsgi import ReadyCheck, create_service_app

__all__ = [
    "REQUEST_ID_HEADER",
    "ReadyCheck",
    "create_service_app",
    "dumps",
    "new_request_id",
    "render_domain_error",
    "sane_request_id",
]
