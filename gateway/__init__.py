"""EventPost's API gateway (Falcon ASGI): routing, edge auth, rate limits, upstream client."""
