"""EventPost's shared toolkit: settings, logging, the Falcon app factory, storage,
messaging and discovery. Nothing in this package imports a service."""
