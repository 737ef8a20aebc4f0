"""The email-sender: a worker that turns email jobs from RabbitMQ into SMTP deliveries.

- :mod:`email_sender.handlers`: pure, a message (``user.created``, ``user.email_added``,
  ``email.send``) becomes a :class:`~email.message.EmailMessage`.
- :mod:`email_sender.mailer`: SMTP delivery over one reused connection, errors classified as
  temporary (retry) or permanent (report).
- :mod:`email_sender.dedupe`: the delivery log that keeps a redelivered job from being sent
  twice.
- :mod:`email_sender.consumer`: the RabbitMQ side (consume, retry, report outcomes).

Run it with ``python -m email_sender``. The dev SMTP sink that ``invoke run`` starts is
:mod:`devtools.smtp_sink` (not part of this deployable).
"""
