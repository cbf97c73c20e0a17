"""Push providers: how a push reaches one kind of device.

A provider checks a target when a device is registered and delivers pushes to it.
`webhook` (an http(s) URL the user controls, e.g. a relay to APNs/FCM) is built
in. Adding a provider (APNs, FCM) means writing a class with the same three
members and listing its factory in PROVIDER_FACTORIES; the queue, retries,
dead-letter list and device removal are the worker's and stay as they are.

    class ApnsProvider:
        kind = "apns"
        def check_target(self, target, *, own_endpoints) -> str: ...
        def deliver(self, device, push) -> DeliveryResult: ...
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import gevent
from gevent.resolver.ares import Resolver as AresResolver

from messenger.models import Device
from messenger.settings import Settings

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Messenger-Signature"
# Longer URLs are not webhooks anyone types; the bound keeps rows and logs small.
URL_MAX_CHARS = 2048
# A receiver's answer is read only this far: its status is what counts.
RESPONSE_READ_MAX_BYTES = 4096
# Registration resolves a host name to refuse private targets early; a slow DNS
# server must not hold the request (delivery checks again anyway).
RESOLVE_TIMEOUT_SECS = 2.0
USER_AGENT = "messenger-push/1"

Outcome = Literal["delivered", "gone", "retry", "rejected"]


class InvalidTarget(ValueError):
    """A device target a provider refuses; the message is one sentence."""


@dataclass(frozen=True)
class DeliveryResult:
    """What became of one push to one device.

    outcome: `delivered` (done), `gone` (the device no longer exists: remove it),
    `retry` (try again later; dead-lettered after the last attempt) or `rejected`
    (will never work: dead-lettered at once).
    """

    outcome: Outcome
    status: int | None = None
    detail: str = ""
    retry_after_secs: float | None = None


class PushProvider(Protocol):
    """One kind of push target. Implementations must be safe to share between
    greenlets and must not raise from deliver (return `retry` instead)."""

    kind: str

    def check_target(self, target: str, *, own_endpoints: set[tuple[str, int]]) -> str:
        """The normalised target to store.

        Args:
            own_endpoints: (host, port) pairs that reach this messenger.

        Raises:
            InvalidTarget: the target is refused (the message says why).
        """
        ...

    def deliver(self, device: Device, push: dict[str, Any]) -> DeliveryResult:
        """Send one push (the API.md body) to one device."""
        ...


# ---- signatures -------------------------------------------------------------------


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The X-Messenger-Signature value: t=<unix seconds>,v1=<hex HMAC-SHA256>.

    The MAC covers "<t>.<raw body>", keyed with the UTF-8 bytes of the secret, so
    a receiver can reject old timestamps (replays) and altered bodies.
    """
    mac = hmac.new(
        secret.encode("utf-8"), str(timestamp).encode() + b"." + body, hashlib.sha256
    )
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    secret: str,
    body: bytes,
    header: str,
    *,
    now: float | None = None,
    tolerance_secs: int = 300,
) -> bool:
    """What a receiver does with a push (used by tests; documented for users)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_secs:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


# ---- addresses --------------------------------------------------------------------

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public_address(ip: _IP) -> bool:
    """False for loopback, private, link-local, CGNAT, multicast and reserved."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _literal(host: str) -> _IP | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _is_local_name(host: str) -> bool:
    return host == "localhost" or host.endswith(".localhost")


# c-ares waits this long for one answer before asking again (once); the
# callers' own deadlines bound the whole lookup.
_DNS_TRY_TIMEOUT_SECS = 1.0
_resolvers: dict[tuple[int, str], AresResolver] = {}


def _resolver(dns_server: str) -> AresResolver:
    """A c-ares resolver on this thread's event loop, one per server setting.

    Host names are looked up on the event loop, not through gevent's default
    resolver, which runs getaddrinfo in the hub's thread pool: that pool also
    hashes passwords, and a DNS server that never answers held its threads for
    the system resolver's timeouts while logins queued behind them.
    """
    hub = gevent.get_hub()
    key = (id(hub), dns_server)
    resolver = _resolvers.get(key)
    if resolver is None or resolver.hub is not hub:
        options: dict[str, Any] = {
            "timeout": _DNS_TRY_TIMEOUT_SECS,
            "tries": 2,
        }
        if dns_server:
            host, _, port = dns_server.rpartition(":")
            if not host or "]" in port:  # a bare address, or [v6] without a port
                host, port = dns_server, ""
            options["servers"] = host.strip("[]")
            if port:
                options["udp_port"] = options["tcp_port"] = int(port)
        resolver = AresResolver(hub=hub, use_environ=False, **options)
        _resolvers[key] = resolver
    return resolver


def _resolve(host: str, port: int, dns_server: str = "") -> list[str]:
    """The addresses of a host (IP literals resolve to themselves).

    Raises:
        OSError: the lookup failed or timed out.
    """
    infos = _resolver(dns_server).getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _is_own(host: str, port: int, own_endpoints: set[tuple[str, int]]) -> bool:
    if (host, port) in own_endpoints:
        return True
    ip = _literal(host)
    is_loopback = _is_local_name(host) or (ip is not None and ip.is_loopback)
    # A messenger bound to every interface answers on any loopback address.
    return is_loopback and any(
        own_port == port and own_host in ("0.0.0.0", "::", "localhost", "127.0.0.1")
        for own_host, own_port in own_endpoints
    )


def endpoints(host: str, scheme: str) -> set[tuple[str, int]]:
    """(host, port) pairs of a "host[:port]" string such as a request's Host header.

    Without a port both 80 and 443: behind a proxy that terminates TLS the request's
    scheme says http while clients use https.
    """
    parts = urlsplit(f"{scheme}://{host}")
    name = (parts.hostname or "").rstrip(".")
    try:
        port = parts.port
    except ValueError:
        port = None
    return {(name, port)} if port else {(name, 80), (name, 443)}


# ---- webhook ----------------------------------------------------------------------


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to an address checked beforehand, whatever DNS says by then
    (a host re-pointed at a private address between check and connect)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(
        self,
        host: str,
        port: int,
        address: str,
        timeout: float,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


class _Deadline(Exception):
    pass


class WebhookProvider:
    """POSTs the push as JSON to a URL, signed with the device's secret.

    2xx is delivery; 404/410 mean the device is gone; anything else (network
    errors, timeouts, 5xx, other statuses) is retried. Redirects are not followed.
    """

    kind = "webhook"

    def __init__(
        self, *, timeout_secs: float, allow_private: bool, dns_server: str = ""
    ) -> None:
        self.timeout_secs = timeout_secs
        self.allow_private = allow_private
        self.dns_server = dns_server
        self._tls = ssl.create_default_context()

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookProvider:
        return cls(
            timeout_secs=settings.push_timeout_secs,
            allow_private=settings.push_allow_private,
            dns_server=settings.push_dns_server,
        )

    def check_target(self, target: str, *, own_endpoints: set[tuple[str, int]]) -> str:
        """Accept http(s) URLs that reach neither this messenger nor, unless
        allowed, a loopback, private or link-local address."""
        url = target.strip()
        if len(url) > URL_MAX_CHARS:
            raise InvalidTarget(f"The URL is longer than {URL_MAX_CHARS} characters.")
        if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
            raise InvalidTarget("The URL contains spaces or control characters.")
        if not url.isascii():
            raise InvalidTarget(
                "Write the URL in ASCII: punycode for the host, %-escapes elsewhere."
            )
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.netloc:
            raise InvalidTarget("Use an http:// or https:// URL.")
        if "@" in parts.netloc:
            raise InvalidTarget(
                "Put credentials in the URL's path or query, not before its host."
            )
        host = (parts.hostname or "").rstrip(".")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise InvalidTarget("The URL's port is not valid.") from None
        if not host:
            raise InvalidTarget("The URL has no host.")
        if _is_own(host, port, own_endpoints):
            raise InvalidTarget("The URL points at this messenger.")
        if not self.allow_private and not self._looks_public(host, port):
            raise InvalidTarget(
                "The URL's host is a loopback, private or link-local address."
            )
        return url

    def _looks_public(self, host: str, port: int) -> bool:
        if _is_local_name(host):
            return False
        ip = _literal(host)
        if ip is not None:
            return is_public_address(ip)
        try:
            with gevent.Timeout(RESOLVE_TIMEOUT_SECS):
                addresses = _resolve(host, port, self.dns_server)
        except (OSError, gevent.Timeout):
            return True  # unknown today; every delivery checks again
        return all(is_public_address(ipaddress.ip_address(a)) for a in addresses)

    def deliver(self, device: Device, push: dict[str, Any]) -> DeliveryResult:
        body = json.dumps(push, separators=(",", ":"), ensure_ascii=False).encode()
        parts = urlsplit(device.url)
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").rstrip(".")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            return DeliveryResult("rejected", detail="invalid port")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # Every socket step has its own timeout; this bounds a receiver that
        # answers one byte at a time.
        deadline = gevent.Timeout(self.timeout_secs * 3, _Deadline)
        deadline.start()
        try:
            try:
                addresses = _resolve(host, port, self.dns_server)
            except OSError as exc:
                return DeliveryResult("retry", detail=f"DNS: {exc.__class__.__name__}")
            allowed = [
                a
                for a in addresses
                if self.allow_private or is_public_address(ipaddress.ip_address(a))
            ]
            if not allowed:
                return DeliveryResult(
                    "rejected", detail="host resolves to a private address"
                )
            return self._post(scheme, host, port, allowed[0], path, device, body)
        except ValueError as exc:  # a URL http.client cannot send (stored before
            # today's checks): it will never work
            return DeliveryResult(
                "rejected", detail=f"bad URL: {exc.__class__.__name__}"
            )
        except _Deadline:
            return DeliveryResult("retry", detail="timed out")
        finally:
            deadline.close()

    def _post(
        self,
        scheme: str,
        host: str,
        port: int,
        address: str,
        path: str,
        device: Device,
        body: bytes,
    ) -> DeliveryResult:
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = _PinnedHTTPSConnection(
                host, port, address, self.timeout_secs, self._tls
            )
        else:
            conn = _PinnedHTTPConnection(host, port, address, self.timeout_secs)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: sign(device.secret, body, int(time.time())),
        }
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read(RESPONSE_READ_MAX_BYTES)
            status = response.status
            retry_after = _retry_after(response.getheader("Retry-After"))
        except (OSError, http.client.HTTPException) as exc:
            return DeliveryResult("retry", detail=f"network: {exc.__class__.__name__}")
        finally:
            conn.close()
        if 200 <= status < 300:
            return DeliveryResult("delivered", status)
        if status in (404, 410):
            return DeliveryResult("gone", status, f"HTTP {status}")
        return DeliveryResult("retry", status, f"HTTP {status}", retry_after)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: our own backoff will do


# ---- registry ---------------------------------------------------------------------

# kind → factory. Add APNs/FCM here (see the module docstring and the README).
PROVIDER_FACTORIES: dict[str, Callable[[Settings], PushProvider]] = {
    "webhook": WebhookProvider.from_settings,
}

_built: list[tuple[Settings, dict[str, PushProvider]]] = []


def providers(settings: Settings) -> dict[str, PushProvider]:
    """The providers configured by these settings, built once per process."""
    for known, built in _built:
        if known is settings:
            return built
    built = {kind: factory(settings) for kind, factory in PROVIDER_FACTORIES.items()}
    _built[:] = [(settings, built)]
    return built


def own_endpoints(
    settings: Settings, request_hosts: Iterable[tuple[str, str]] = ()
) -> set[tuple[str, int]]:
    """(host, port) pairs of this messenger: its bind address and the Host headers
    ((host, scheme) pairs) clients reach it by."""
    found = {(settings.host.lower(), settings.port)}
    for host, scheme in request_hosts:
        found |= endpoints(host.lower(), scheme)
    return found
