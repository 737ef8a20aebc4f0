"""The email-sender's RabbitMQ side: one message in, one email out, its outcome reported.

:class:`EmailSender` is the handler a :class:`~eventpost.messaging.Consumer` calls for each
message of the queue (``email-sender.jobs`` by default, bound to ``user.created``,
``user.email_added`` and ``email.send``):

1. The message becomes a job (:func:`email_sender.jobs.job_from_message`); a message that
   cannot raises :class:`~eventpost.messaging.PermanentError`, so it is parked at once.
2. A job whose idempotency key the delivery log (:mod:`email_sender.delivery_log`) knows as
   sent is not sent again; its ``email.sent`` is published again (it may have been lost).
   The same for a job the server refused for good (``email.failed`` again), unless an
   operator replayed it from the parking queue (:data:`~eventpost.messaging.replayed_var`):
   then it is tried again. A job another sender is sending at this moment (its lease in the
   delivery log) is waited for first, so two copies of a job never make two emails.
3. The email is built (:func:`email_sender.compose.build_email`) and handed to SMTP
   (:class:`email_sender.mailer.SmtpMailer`).
   - Accepted: logged as sent, ``email.sent`` published (jobs with a ``correlation``), acked.
   - 5xx: logged as failed, ``email.failed`` with the reply code and text published, never
     retried: :class:`RefusedForGood` parks the message (reason ``permanent``, the reply in
     ``x-error``). Once the cause is fixed (the mailbox exists, the
     address is corrected upstream), ``invoke parked --replay`` moves it back and it is sent.
   - 4xx, timeout, connection trouble: :class:`~email_sender.mailer.TemporaryMailError`
     propagates, so the consumer retries through its delay queues; after the last attempt
     :meth:`EmailSender.on_exhausted` publishes ``email.failed`` and the message is parked.

Outcomes are built as their contracts (:class:`~eventpost.contracts.EmailSent`,
:class:`~eventpost.contracts.EmailFailed`); their envelopes get an id derived from the
idempotency key and the outcome, so a repeated report of the same outcome is recognisable as
such by its consumer.

With ``batch_size`` > 1 (the email-sender's ``--batch``), the consumer hands a sender up
to that many fetched messages at once and calls :meth:`EmailSender.flush` after them: the
emails are sent one by one as above, each marked ``sending`` before its SMTP transaction,
but their ``sent`` records are written together (one transaction) and their ``email.sent``
published together (one wait for all the confirms) at the end of the batch; only then are
the messages acked. A message whose record or report failed there is retried like one whose
handler raised. The guarantee is the one above: a crash before the end of the batch leaves
its messages unacked and their records ``sending``, so they are sent again (same Message-ID).
Two copies of one job in the same batch make one email. A ``sending`` record's lease is twice
one send's bound in batch mode, and a batch that runs so long that a lease has less than one
send's bound left writes its waiting ``sent`` records before the next send: so no lease runs
out while its email waits for the end of the batch (a copy of the job elsewhere would be sent
again).

Everything an :class:`EmailSender` opens (store, SMTP connection, publisher) is opened lazily
in the consumer's handler thread, the one thread that calls :meth:`~EmailSender.handle` and
:meth:`~EmailSender.on_exhausted`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from email_sender import compose
from email_sender.delivery_log import DEFAULT_LEASE, FAILED, SENT, DeliveryLog
from email_sender.jobs import InvalidJob, digest, job_from_message
from email_sender.mailer import PermanentMailError, SmtpMailer
from eventpost import contracts
from eventpost.contracts import EmailFailed, EmailJob, EmailSent
from eventpost.messaging import (
    EXCHANGE,
    Consumer,
    Envelope,
    PermanentError,
    Publisher,
    Unroutable,
    attempt_var,
    replayed_var,
)
from eventpost.settings import Settings
from eventpost.storage import Store, open_store
from eventpost.timeutil import Clock, format_time, utcnow

log = logging.getLogger(__name__)

#: The email-sender's queue and what it is bound to.
QUEUE = "email-sender.jobs"
BINDINGS = contracts.SUBSCRIPTIONS[QUEUE]
#: The email-sender's store (``DATA_DIR/email_sender.sqlite3`` or ``eventpost_email_sender``).
STORE_NAME = "email_sender"
#: How long the delivery log remembers a job, and how often it is pruned.
KEEP_DELIVERIES = timedelta(days=7)
PRUNE_EVERY = timedelta(hours=1)


class RefusedForGood(PermanentError):
    """The SMTP server refused the email with a 5xx: recorded and reported as
    ``email.failed`` already; raised so the consumer parks the message."""


@dataclass(eq=False, kw_only=True)
class EmailSender:
    """Handles email messages (see the module docstring).

    ``mailer``: delivers; ``store_factory()``: opens the store of the delivery log;
    ``publisher_factory()``: a :class:`Publisher` for outcomes (on the exchange the jobs
    came from); ``mail_from``: the From header; ``max_attempts``: the consumer's (reported
    in ``email.failed`` when retries run out); ``clock``: the current time; ``lease``: how
    long a send holds its job in the delivery log (:func:`send_lease`).
    """

    mailer: SmtpMailer
    store_factory: Callable[[], Store]
    publisher_factory: Callable[[], Publisher]
    mail_from: str
    max_attempts: int
    clock: Clock = utcnow
    lease: timedelta = DEFAULT_LEASE
    batch_size: int = 1
    # Opened on first use, in the handler thread.
    _store: Store | None = field(default=None, init=False, repr=False)
    _log: DeliveryLog | None = field(default=None, init=False, repr=False)
    _publisher: Publisher | None = field(default=None, init=False, repr=False)
    _last_prune: datetime | None = field(default=None, init=False, repr=False)
    # Batch mode: the accepted emails whose record and report wait for flush(), by key.
    _pending: dict[str, _Accepted] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        exchange: str = EXCHANGE,
        max_attempts: int | None = None,
        store_factory: Callable[[], Store] | None = None,
        batch_size: int = 1,
    ) -> EmailSender:
        """An EmailSender for the SMTP server, store and broker of ``settings``
        (``store_factory``: the delivery log's store, e.g. one shared by several senders;
        ``batch_size``: see the module docstring)."""
        return cls(
            mailer=SmtpMailer.from_settings(settings),
            store_factory=store_factory or delivery_store_factory(settings),
            # Outcomes must reach notifications even before its worker first declared its
            # queues, or the reminder would stay `sending`: declare every subscription.
            publisher_factory=lambda: Publisher(
                settings.amqp_url,
                exchange=exchange,
                subscriptions=contracts.SUBSCRIPTIONS if exchange == EXCHANGE else None,
                queue_type=settings.amqp_queue_type,
            ),
            mail_from=settings.mail_from,
            max_attempts=max_attempts or len(settings.retry_delays) + 1,
            lease=send_lease(settings.smtp_timeout),
            batch_size=batch_size,
        )

    # -- the handler -------------------------------------------------------------------

    def handle(self, envelope: Envelope) -> None:
        """Deliver the email ``envelope`` asks for (the consumer's handler)."""
        attempt = attempt_var.get() or 1
        replayed = replayed_var.get()
        try:
            job = job_from_message(envelope.type, envelope.payload)
        except InvalidJob as exc:
            raise PermanentError(str(exc)) from exc
        info = {"idempotency_key": job.idempotency_key, "attempt": attempt}
        accepted = self._pending.get(job.idempotency_key)
        if accepted is not None:
            # A second copy of a job sent earlier in this batch: reported with it.
            log.info("duplicate job, sent in this batch; reporting with it", extra=info)
            accepted.envelope_ids.append(envelope.id)
            return
        deliveries = self._deliveries()
        known = deliveries.get(job.idempotency_key)
        if known is not None and deliveries.held_elsewhere(known):
            # Another copy of this job is being sent right now (a publisher sent it twice
            # across a broker failover): wait for that send instead of making a second.
            log.info("another sender is delivering this job; waiting for it", extra=info)
            known = deliveries.wait_while_held(job.idempotency_key, known)
        if known is not None and known.status == SENT:
            log.info("duplicate job, already sent; reporting again", extra=info)
            self._report_sent(
                envelope, job, known.message_id or "", known.sent_at or "", known.attempts
            )
            return
        if known is not None and known.status == FAILED and known.permanent and not replayed:
            log.info("duplicate job, refused for good before; reporting again", extra=info)
            self._report_failed(
                envelope,
                job.to,
                job.idempotency_key,
                job.correlation,
                PermanentMailError(known.error or "refused"),
                known.attempts,
            )
            return
        try:
            email = compose.build_email(
                job, mail_from=self.mail_from, now=self.clock(), request_id=envelope.request_id
            )
        except InvalidJob as exc:
            raise PermanentError(str(exc)) from exc
        message_id = email.message_id
        if known is not None:
            # A previous attempt got as far as SMTP: it failed, or its worker died (then
            # the server may have the message already; see email_sender.delivery_log).
            log.info("job seen before, sending again", extra={**info, "was": known.status})
        _record_before_leases_run_out(deliveries, self._pending, self.clock(), self.lease)
        began_at = self.clock()
        deliveries.begin(job.idempotency_key, message_id, attempt, known)
        try:
            self.mailer.send(email)
        except PermanentMailError as exc:
            log.warning(
                "SMTP refused the email for good; not retrying",
                extra={**info, "smtp_code": exc.code, "error": str(exc)},
            )
            deliveries.failed(job.idempotency_key, str(exc), attempt, permanent=True)
            self._report_failed(
                envelope, job.to, job.idempotency_key, job.correlation, exc, attempt
            )
            # Parked, so it can be replayed once the cause is fixed.
            raise RefusedForGood(str(exc)) from exc
        except Exception:
            # Retried through the delay queues: whoever gets the retry need not wait.
            _release_quietly(deliveries, job.idempotency_key)
            raise
        log.info(
            "email sent",
            extra={**info, "smtp_message_id": message_id, "to_domain": job.to.rpartition("@")[2]},
        )
        self._accepted(envelope, job, message_id, attempt, began_at)

    def _accepted(
        self, envelope: Envelope, job: EmailJob, message_id: str, attempt: int, began_at: datetime
    ) -> None:
        """The server took the email: record and report it (batch mode: at :meth:`flush`)."""
        sent_at = self.clock()
        if self.batch_size > 1:
            self._pending[job.idempotency_key] = _Accepted(
                envelope, job, message_id, attempt, sent_at, [envelope.id], began_at
            )
            return
        self._deliveries().sent(job.idempotency_key, message_id, attempt, sent_at)
        self._report_sent(envelope, job, message_id, format_time(sent_at), attempt)
        self._maybe_prune()

    def flush(self) -> dict[str, BaseException]:
        """End a batch (the consumer's ``on_batch_end``): record the emails accepted since
        the last flush as sent, in one transaction, and publish their ``email.sent``
        together. Returns, by envelope id, the error of each message whose record or
        report did not succeed (they are retried)."""
        accepted, self._pending = list(self._pending.values()), {}
        if not accepted:
            return {}
        try:
            _record_sent(self._deliveries(), [a for a in accepted if not a.recorded])
        except Exception as exc:
            log.warning("could not record a batch of sent emails", exc_info=True)
            return {envelope_id: exc for a in accepted for envelope_id in a.envelope_ids}
        reports = [
            (
                a,
                self._sent_envelope(
                    a.source, a.job, a.message_id, format_time(a.sent_at), a.attempt
                ),
            )
            for a in accepted
            if a.job.correlation is not None
        ]
        failures: dict[str, BaseException] = {}
        if reports:
            results = self._outcomes_publisher().publish_many([message for _, message in reports])
            for (a, message), error in zip(reports, results, strict=True):
                if error is None:
                    continue
                if isinstance(error, Unroutable):
                    _dropped(message.type, a.job.idempotency_key)
                    continue
                failures.update(dict.fromkeys(a.envelope_ids, error))
        self._maybe_prune()
        return failures

    def on_exhausted(self, envelope: Envelope, error: BaseException) -> None:
        """The consumer gave the message up (out of retries, or it can never be sent):
        record it and publish ``email.failed`` when the job has a ``correlation`` (or
        ``email.sent`` again when the email did go out and only its report kept failing)."""
        if isinstance(error, RefusedForGood):
            return  # recorded and reported by handle() already
        payload = envelope.payload if isinstance(envelope.payload, Mapping) else {}
        attempt = attempt_var.get() or self.max_attempts
        try:
            job: EmailJob | None = job_from_message(envelope.type, payload)
        except InvalidJob:
            job = None
        key = job.idempotency_key if job else payload.get("idempotency_key")
        to = job.to if job else payload.get("to")
        correlation = job.correlation if job else payload.get("correlation")
        log.error(
            "email given up",
            extra={"idempotency_key": key, "attempt": attempt, "error": repr(error)},
        )
        if job is not None and not isinstance(error, PermanentError):
            record = self._deliveries().failed(
                job.idempotency_key, _reason(error), attempt, permanent=False
            )
            if record.status == SENT:
                # The email went out; what kept failing came after (reporting it).
                self._report_sent(
                    envelope, job, record.message_id or "", record.sent_at or "", record.attempts
                )
                return
        self._report_failed(envelope, to, key, correlation, error, attempt)

    def close(self) -> None:
        """Close the SMTP connection, the publisher and the store."""
        self.mailer.close()
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        if self._store is not None:
            self._store.close()
            self._store = self._log = None

    # -- internals ---------------------------------------------------------------------

    def _deliveries(self) -> DeliveryLog:
        if self._log is None:
            self._store = self.store_factory()
            self._log = DeliveryLog(
                self._store, clock=self.clock, lease=_record_lease(self.lease, self.batch_size)
            )
        return self._log

    def _maybe_prune(self) -> None:
        now = self.clock()
        if self._last_prune is not None and now - self._last_prune < PRUNE_EVERY:
            return
        self._last_prune = now
        removed = self._deliveries().prune(KEEP_DELIVERIES)
        if removed:
            log.info("delivery log pruned", extra={"removed": removed})

    def _report_sent(
        self, envelope: Envelope, job: EmailJob, message_id: str, sent_at: str, attempts: int
    ) -> None:
        if job.correlation is None:
            return
        self._publish(self._sent_envelope(envelope, job, message_id, sent_at, attempts))

    def _sent_envelope(
        self, source: Envelope, job: EmailJob, message_id: str, sent_at: str, attempts: int
    ) -> Envelope:
        assert job.correlation is not None
        sent = EmailSent(
            idempotency_key=job.idempotency_key,
            to=job.to,
            correlation=dict(job.correlation),
            attempts=attempts,
            message_id=message_id or compose.message_id_for(job.idempotency_key, self.mail_from),
            sent_at=sent_at,
        )
        return _outcome_envelope(source, sent, job.idempotency_key, self.clock)

    def _report_failed(
        self,
        envelope: Envelope,
        to: Any,
        key: Any,
        correlation: Any,
        error: BaseException,
        attempts: int,
    ) -> None:
        if not isinstance(correlation, Mapping) or not isinstance(key, str):
            return
        failed = EmailFailed(
            idempotency_key=key,
            to=to if isinstance(to, str) else "",
            correlation=dict(correlation),
            attempts=attempts,
            error=_reason(error),
        )
        self._publish(_outcome_envelope(envelope, failed, key, self.clock))

    def _outcomes_publisher(self) -> Publisher:
        if self._publisher is None:
            self._publisher = self.publisher_factory()
        return self._publisher

    def _publish(self, message: Envelope) -> None:
        try:
            self._outcomes_publisher().publish(message)
        except Unroutable:
            _dropped(message.type, message.payload.get("idempotency_key"))


def _outcome_envelope(
    source: Envelope, outcome: contracts.Payload, key: str, clock: Clock
) -> Envelope:
    """The envelope of an outcome, its id derived from the job's key and the outcome."""
    kind = outcome.TYPE
    return outcome.envelope(source.request_id, clock=clock, id_factory=lambda: digest(kind, key))


def _dropped(kind: str, key: Any) -> None:
    # Nobody subscribes to outcomes (e.g. notifications is not deployed): the email itself
    # is done, so this is no reason to retry it.
    log.warning("no queue takes %s; outcome dropped", kind, extra={"idempotency_key": key})


@dataclass(eq=False)
class _Accepted:
    """An email the server accepted in this batch, its record and report still to do;
    ``envelope_ids``: the messages (copies of its job) that wait for them; ``began_at``: when
    its lease began; ``recorded``: its ``sent`` record is written already."""

    source: Envelope
    job: EmailJob
    message_id: str
    attempt: int
    sent_at: datetime
    envelope_ids: list[str]
    began_at: datetime
    recorded: bool = False


def _release_quietly(deliveries: DeliveryLog, key: str) -> None:
    """End the lease on ``key``; a store error is logged, not raised over the send's own
    error (the lease then simply runs out)."""
    try:
        deliveries.release(key)
    except Exception:
        log.warning("could not end the lease on a failed send", exc_info=True)


def _record_lease(send_bound: timedelta, batch_size: int) -> timedelta:
    """How long a ``sending`` record holds its job: one send's bound, and twice that in batch
    mode, where the record waits for the end of the batch (see
    :func:`_record_before_leases_run_out`)."""
    return send_bound * 2 if batch_size > 1 else send_bound


def _record_before_leases_run_out(
    deliveries: DeliveryLog,
    pending: Mapping[str, _Accepted],
    now: datetime,
    send_bound: timedelta,
) -> None:
    """Batch mode, before the next send: if an accepted email's lease (in ``deliveries``) has
    less than one send's bound left, the next send could outlast it, and a copy of its job on
    another worker would then be sent again; so every accepted email waiting for its record
    is recorded as sent now (one transaction; reports and acks still wait for the end of the
    batch). On a normal batch (sends of milliseconds) this never happens."""
    waiting = [a for a in pending.values() if not a.recorded]
    if not waiting:
        return
    oldest = min(a.began_at for a in waiting)
    if oldest + deliveries.lease - now >= send_bound:
        return
    try:
        _record_sent(deliveries, waiting)
    except Exception:
        # The end of the batch tries again; until then the leases may run out.
        log.warning("could not record sent emails before their leases ran out", exc_info=True)
        return
    log.info("sent emails recorded before the end of a long batch", extra={"n": len(waiting)})


def _record_sent(deliveries: DeliveryLog, accepted: list[_Accepted]) -> None:
    """Record ``accepted`` as sent, in one transaction."""
    if not accepted:
        return
    deliveries.sent_many(
        [(a.job.idempotency_key, a.message_id, a.attempt, a.sent_at) for a in accepted]
    )
    for a in accepted:
        a.recorded = True


def send_lease(smtp_timeout: float) -> timedelta:
    """How long a send may hold its job: longer than the connect, greeting, MAIL, RCPT,
    DATA and end-of-data replies can take, each bounded by ``smtp_timeout``."""
    return max(DEFAULT_LEASE, timedelta(seconds=6 * smtp_timeout))


def delivery_store_factory(settings: Settings) -> Callable[[], Store]:
    """Opens the delivery log's store once, whoever asks first (the senders of one process
    share it: the SQLite adapter keeps a connection per thread and commits their writes
    together)."""
    opened: list[Store] = []
    lock = threading.Lock()

    def factory() -> Store:
        with lock:
            if not opened:
                # synchronous=NORMAL on SQLite: a power cut may lose the last records (never
                # a process crash), which at worst sends those emails once more; in exchange
                # a delivery costs no fsync.
                opened.append(open_store(settings, STORE_NAME, sqlite_synchronous="NORMAL"))
            return opened[0]

    return factory


def _reason(error: BaseException) -> str:
    if isinstance(error, PermanentError) and error.__cause__ is not None:
        error = error.__cause__
    text = str(error) or type(error).__name__
    return text[:1000]


def make_consumer(
    settings: Settings,
    sender: EmailSender,
    *,
    queue: str = QUEUE,
    bindings: Sequence[str] = BINDINGS,
    exchange: str = EXCHANGE,
    prefetch: int = 10,
) -> Consumer:
    """The consumer that feeds ``sender`` from ``queue`` (retry delays from ``settings``)."""
    return Consumer(
        settings.amqp_url,
        queue,
        bindings,
        sender.handle,
        retry_delays=settings.retry_delays,
        prefetch=prefetch,
        on_exhausted=sender.on_exhausted,
        exchange=exchange,
        queue_type=settings.amqp_queue_type,
        batch_size=sender.batch_size,
        on_batch_end=sender.flush if sender.batch_size > 1 else None,
    )
