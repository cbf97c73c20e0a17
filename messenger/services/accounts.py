"""Accounts: register, log in (throttled), log out, the token check every request
makes (services/sessions.py), password and profile changes, people search."""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets

import gevent
import redis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from messenger import metrics, runtime
from messenger.errors import Conflict, Forbidden, NotFound, RateLimited, Unauthorized
from messenger.models import User
from messenger.realtime import keys
from messenger.services import ratelimit, sessions
from messenger.storage import blocks as block_store
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


def login(
    handle: str, password: str, *, client_address: str, user_agent: str
) -> tuple[str, User]:
    """Check a password and open a session; returns (bearer token, user).

    Login throttling (API.md's 429 with Retry-After) runs here, where the
    password is checked: per client address, per handle and address, and a
    slower per-handle limit over which only a correct password from an address
    this handle logged in from before passes. So guessing one handle's password
    stops, and strangers guessing from many addresses do not lock its owner out.

    Raises:
        Unauthorized: the same answer for an unknown handle and a wrong password.
        RateLimited: a limit above is reached.
    """
    address_key = _digest(client_address)
    handle_key = _digest(handle)
    ratelimit.check("login", f"ip:{address_key}")
    ratelimit.check("login_handle_address", f"h:{handle_key}:{address_key}")
    over_handle_limit: RateLimited | None = None
    try:
        ratelimit.check("login_handle", f"handle:{handle_key}")
    except RateLimited as exc:
        if not _is_known_address(handle_key, address_key):
            raise
        over_handle_limit = exc
    router = runtime.get().router
    with router.directory("login_lookup", transaction=False) as cur:
        found = users.credentials(cur, handle)
    stored = found[1] if found else _dummy_hash(PASSWORD_HASHER)
    valid = _in_thread(_password_matches, stored, password) and found is not None
    if not valid or found is None:
        if over_handle_limit is not None:
            raise over_handle_limit
        raise Unauthorized("Wrong handle or password.")
    user_id = found[0]
    if PASSWORD_HASHER.check_needs_rehash(stored):
        with router.directory("rehash_password") as cur:
            users.set_password_hash(
                cur, user_id, _in_thread(PASSWORD_HASHER.hash, password)
            )
    token = sessions.open_session(user_id, user_agent)
    _remember_address(handle_key, address_key)
    return token, get_user(user_id)


def _digest(text: str) -> str:
    """Handles and addresses in Redis keys, as short digests."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _is_known_address(handle_key: str, address_key: str) -> bool:
    """Whether this handle logged in from this address before (False when Redis
    does not answer: the limit then holds)."""
    try:
        return bool(
            runtime.get().redis.sismember(
                keys.login_known_addresses(handle_key), address_key
            )
        )
    except redis.RedisError as exc:
        metrics.REDIS_ERRORS.labels(op="login_known").inc()
        logger.warning("login: known addresses unavailable: %s", exc)
        return False


def _remember_address(handle_key: str, address_key: str) -> None:
    key = keys.login_known_addresses(handle_key)
    try:
        pipe = runtime.get().redis.pipeline(transaction=False)
        pipe.sadd(key, address_key)
        pipe.expire(key, keys.LOGIN_KNOWN_ADDRESSES_TTL_SECS)
        pipe.execute()
    except redis.RedisError as exc:
        metrics.REDIS_ERRORS.labels(op="login_known").inc()
        logger.warning("login: address not remembered: %s", exc)


def logout(user_id: int, token: str) -> None:
    """Revoke a token at once: the next request with it gets 401, on any worker."""
    sessions.revoke_token(user_id, token)


def authenticate(token: str) -> int:
    """The user id of a bearer token (sessions.verify: no I/O on a cache hit).

    Raises:
        Unauthorized: malformed, unknown, revoked or expired token.
    """
    return sessions.verify(token).user_id


def change_password(
    user_id: int, session_id: int, current_password: str, new_password: str
) -> None:
    """Set a new password; every other session of the user is revoked at once.

    Raises:
        Forbidden: current_password is wrong.
    """
    router = runtime.get().router
    with router.directory("password_lookup", transaction=False) as cur:
        stored = users.password_hash(cur, user_id)
    if stored is None or not _in_thread(_password_matches, stored, current_password):
        raise Forbidden("The current password is wrong.")
    new_hash = _in_thread(PASSWORD_HASHER.hash, new_password)
    with router.directory("set_password") as cur:
        users.set_password_hash(cur, user_id, new_hash)
    revoked = sessions.revoke_others(user_id, session_id)
    logger.info("user %s: password changed, %d sessions revoked", user_id, revoked)


def update_profile(user_id: int, display_name: str) -> User:
    with runtime.get().router.directory("update_profile") as cur:
        row = users.set_display_name(cur, user_id, display_name)
    if row is None:
        raise NotFound("No such user.")
    return _user(row)


def search(caller_id: int, query: str, limit: int) -> list[User]:
    """Users whose handle or display name starts with `query` (any case), the
    caller included, the exact handle first; users who blocked the caller are
    left out (read on the caller's shard)."""
    router = runtime.get().router
    with router.on_user(caller_id, "search_blockers", transaction=False) as cur:
        hidden = sorted(block_store.blockers_of(cur, caller_id))
    with router.directory("search_users", transaction=False) as cur:
        rows = users.search(cur, query, limit, hidden)
    return [_user(row) for row in rows]


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
