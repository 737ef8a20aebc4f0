"""The users service: accounts, passwords, access and refresh tokens, email addresses.

Run it with ``python -m eventpost.serve users``; its outbox (``user.created``,
``user.email_added``, ``user.deleted``) is published by
``python -m eventpost.messaging.relay --service users`` (no worker of its own is needed).
Administration: ``python -m services.users.admin`` (``invoke create-admin``,
``invoke rotate-keys``).

Behaviour where API.md is silent (to be mirrored in the OpenAPI file):

- Emails are compared case-insensitively and stored lowercase. An address belongs to at most
  one account, primary or secondary, verified or not (409 otherwise), except that an
  unverified secondary address whose token has expired (24 h) is released to whoever claims
  it next, so nobody can squat an address by adding it and never verifying it.
- ``PATCH /v1/users/me {email}`` accepts any valid address on no other account, exactly as
  sign-up does (the primary address counts as verified, and sign-up does not verify it
  either); one of the caller's own secondary addresses is promoted. The old primary address
  is released. Same address again: 200, nothing changes.
- ``DELETE /v1/users/me/emails/{email}`` of the primary address: 409 (change it first);
  of an address that is not the caller's, or not an address at all: 404.
- More than 5 secondary addresses: 422 on ``email``. Verifying an address that is not one of
  the caller's secondaries, with a wrong, used or expired token: 422.
- Login accepts the username or the primary email (any case). Unknown account and wrong
  password: the same 401 body after the same argon2 work (a dummy hash).
- Failed logins: 5 per account and 20 per client address in 15 minutes, then 429 with
  ``Retry-After`` (seconds until the oldest counted failure leaves the window), counted in
  the store so every process agrees. Unknown names are limited like accounts. A success
  clears the account's count. The client address is the last ``X-Forwarded-For`` hop (the
  gateway sets it), else the peer address: the service must only be reachable through the
  gateway for the per-address limit to hold (per-account holds regardless).
- Refresh tokens rotate on every use (new expiry of ``REFRESH_TOKEN_TTL``); a spent token
  used again revokes every token of its login (family), 401 for all of them.
- A change that loses the race with concurrent changes of the same account (or address) is
  decided again on what is there now; after 5 lost races: 409 "The account kept changing;
  try again." (409 "taken" is only for a name or address another account holds).
- No endpoint takes query parameters: any is refused with 422 rather than ignored.
- The service checks on every authenticated request that the account still exists, so a
  deleted account's unexpired access token gets 401 at once.
"""
