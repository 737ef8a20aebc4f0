"""The email-sender: a worker that turns email jobs from RabbitMQ into SMTP deliveries.

- :mod:`email_sender.handlers`: pure, a message (``user.created``, ``user.email_added``,
  ``email.send``) becomes a :class:`~email.message.EmailMessage`.
- :mod:`email_sender.mailer`: SMTP delivery over one reused connection, errors classified as
  temporary (retry) or permanent (report).
- :mod:`email_sender.dedupe`: the delivery log that keeps a redelivered job from being sent
  twice.
- :mod:`email_sender.consumer`: the RabbitMQ side (consume, retry, report outcomes).
- :mod:`email_sender.sink`: the dev SMTP server that keeps every message as a file, and
  :class:`~email_sender.sink.Mailbox` to read them.

Run it with ``python -m email_sender``; the dev sink with ``python -m email_sender.sink``.
"""
