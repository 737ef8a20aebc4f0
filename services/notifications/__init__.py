"""The notifications service: email reminders for events, their dispatcher and consumers."""
