"""The email-sender: a worker that turns email jobs from RabbitMQ into SMTP deliveries.

- :mod:`email_sender.jobs`: pure, a message (``user.created``, ``user.email_added``,
  ``email.send``) read through its contract becomes an email job.
- :mod:`email_sender.compose`: pure, a job becomes an :class:`~email_sender.compose.OutgoingEmail`
  (its MIME bytes).
- :mod:`email_sender.mailer`: SMTP delivery over one reused connection, errors classified as
  temporary (retry) or permanent (report).
- :mod:`email_sender.delivery_log`: the delivery log that keeps a redelivered job from being
  sent twice.
- :mod:`email_sender.sender`: :class:`~email_sender.sender.EmailSender`, one message in, one
  email out, its outcome reported; and the consumer that feeds it.

Run it with ``python -m email_sender``. The dev SMTP sink that ``invoke run`` starts is
:mod:`devtools.smtp_sink` (not part of this deployable).
"""
