"""The EventPost services: users, events, notifications (each a deployable of its own)."""
