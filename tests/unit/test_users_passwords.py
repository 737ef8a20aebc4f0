"""Password hashing of the users service (argon2id, cheap parameters here)."""

from argon2 import PasswordHasher

from services.users.passwords import Passwords

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def test_passwords_verify_and_unknown_account_is_false():
    pw = Passwords(CHEAP)
    stored = pw.hash("correct horse")
    assert stored.startswith("$argon2id$")
    assert pw.verify(stored, "correct horse")
    assert not pw.verify(stored, "wrong horse")
    # No account: the dummy hash is checked (same work) and the answer is always False,
    # even for the password the dummy was made from (it is random and never known).
    assert not pw.verify(None, "correct horse")
    assert not pw.verify("not a hash", "correct horse")


def test_needs_rehash_when_parameters_change():
    old = Passwords(CHEAP).hash("correct horse")
    newer = Passwords(PasswordHasher(time_cost=2, memory_cost=8, parallelism=1))
    assert newer.needs_rehash(old)
    assert not newer.needs_rehash(newer.hash("correct horse"))
