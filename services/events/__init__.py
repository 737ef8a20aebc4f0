"""The events service: admins manage events; anyone finds them by topic, time window,
distance and text (API.md, "Events")."""
