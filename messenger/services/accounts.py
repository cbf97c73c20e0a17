"""Accounts: register, log in, log out, and the token check every request makes."""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets

import gevent
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from messenger import runtime
from messenger.errors import Conflict, NotFound, Unauthorized
from messenger.models import User
from messenger.storage import users

logger = logging.getLogger(__name__)

# Argon2id with OWASP's 2023 minimum (19 MiB, 2 passes, 1 lane): about 20-30 ms per
# hash on one core here. Hashing runs in gevent's thread pool (argon2-cffi releases
# the GIL), so a login never stalls the worker's held polls.
PASSWORD_HASHER = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)


@functools.cache
def _dummy_hash(hasher: PasswordHasher) -> str:
    """A hash to verify against when the handle does not exist, made with the
    hasher in use: a login then takes as long for an unknown handle as for a wrong
    password and does not reveal which handles exist."""
    return str(hasher.hash(secrets.token_hex(16)))


def _in_thread(fn, *args):  # type: ignore[no-untyped-def]
    return gevent.get_hub().threadpool.apply(fn, args)


def _password_matches(stored_hash: str, password: str) -> bool:
    # Runs in the thread pool: an exception there is printed as a traceback by
    # gevent's hub, so a wrong password must come back as a value, not raise.
    try:
        return bool(PASSWORD_HASHER.verify(stored_hash, password))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def token_digest(token: str) -> bytes:
    """Sessions are stored by SHA-256 of the token; the token itself never is."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _user(row: users.UserRow) -> User:
    return User(row[0], row[1], row[2], row[3])


def register(handle: str, password: str, display_name: str | None) -> User:
    """Create an account.

    Raises:
        Conflict: the handle is taken (also when two registrations race).
    """
    router = runtime.get().router
    with router.directory("handle_taken", transaction=False) as cur:
        if users.by_handle(cur, handle) is not None:
            raise Conflict("That handle is taken.")
    password_hash = _in_thread(PASSWORD_HASHER.hash, password)
    with router.directory("allocate_user_id", transaction=False) as cur:
        user_id = users.next_id(cur)
    # The user's event stream first: a user row never exists without it.
    with router.on_user(user_id, "create_user_state", transaction=False) as cur:
        users.ensure_user_state(cur, user_id)
    with router.directory("insert_user") as cur:
        row = users.insert_user(
            cur, user_id, handle, display_name or handle, password_hash
        )
    if row is None:
        raise Conflict("That handle is taken.")
    logger.info("user %s registered", user_id)
    return _user(row)


def login(handle: str, password: str) -> tuple[str, User]:
    """Check a password and open a session; returns (bearer token, user).

    Raises:
        Unauthorized: the same answer for an unknown handle and a wrong password.
    """
    router = runtime.get().router
    with router.directory("login_lookup", transaction=False) as cur:
        found = users.credentials(cur, handle)
    stored = found[1] if found else _dummy_hash(PASSWORD_HASHER)
    valid = _in_thread(_password_matches, stored, password) and found is not None
    if not valid or found is None:
        raise Unauthorized("Wrong handle or password.")
    user_id = found[0]
    token = secrets.token_urlsafe(32)
    with router.directory("open_session") as cur:
        users.insert_session(cur, token_digest(token), user_id)
        if PASSWORD_HASHER.check_needs_rehash(stored):
            users.set_password_hash(
                cur, user_id, _in_thread(PASSWORD_HASHER.hash, password)
            )
        row = users.by_id(cur, user_id)
    assert row is not None
    return token, _user(row)


def logout(token: str) -> None:
    """Revoke a token at once: the next request with it gets 401."""
    with runtime.get().router.directory("close_session") as cur:
        users.delete_session(cur, token_digest(token))


def authenticate(token: str) -> int:
    """The user id of a bearer token (one primary-key lookup).

    Raises:
        Unauthorized: unknown or revoked token.
    """
    if not token or len(token) > 256:
        raise Unauthorized()
    # Timing: the token itself is never compared. The lookup probes an index with
    # the SHA-256 digest of the token, so what its timing could leak is how a
    # guess's digest relates to stored digests, and steering a digest toward a
    # stored prefix is a preimage search. An hmac.compare_digest on the row found
    # would compare the digest with itself; the metrics token, compared as a
    # string, does use it (services/monitoring.py).
    with runtime.get().router.directory("authenticate", transaction=False) as cur:
        user_id = users.session_user(cur, token_digest(token))
    if user_id is None:
        raise Unauthorized()
    return user_id


def get_user(user_id: int) -> User:
    with runtime.get().router.directory("get_user", transaction=False) as cur:
        row = users.by_id(cur, user_id)
    if row is None:
        raise NotFound("No such user.")
    return _user(row)


def find_by_handle(handle: str) -> User:
    with runtime.get().router.directory("find_user", transaction=False) as cur:
        row = users.by_handle(cur, handle)
    if row is None:
        raise NotFound("No such user.")
    return _user(row)


def existing_ids(user_ids: list[int]) -> set[int]:
    """Which of these user ids exist."""
    if not user_ids:
        return set()
    with runtime.get().router.directory("users_exist", transaction=False) as cur:
        return {row[0] for row in users.by_ids(cur, user_ids)}
