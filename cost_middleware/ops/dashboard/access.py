"""Who may read the dashboard: loopback only, unless a token is configured.

Without a token the app answers only a loopback client that names a loopback host (a page
on another site that rebinds its DNS name to 127.0.0.1 sends its own name as ``Host``, so
it is refused). With a token every request must carry it: ``Authorization: Bearer …``,
``?token=…`` (which also sets a cookie, so the page's links work), or that cookie; it is
compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Iterable
from http.cookies import CookieError, SimpleCookie

#: The cookie set after a valid ``?token=``.
COOKIE = "cost_middleware_dashboard"
#: Shorter tokens are refused: a dashboard of spend is worth more than a guessable secret.
MIN_TOKEN = 16
#: Characters a token may hold: it travels in a header, a query and a cookie unencoded.
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]+")


class AccessError(ValueError):
    """A bind address or token the dashboard refuses; the message says what to do."""


def check_token(token: str | None) -> str | None:
    if token is None:
        return None
    if len(token) < MIN_TOKEN or not _TOKEN.fullmatch(token):
        raise AccessError(f"the dashboard token must be at least {MIN_TOKEN} characters of "
                          "A-Z a-z 0-9 . _ ~ + / = - (e.g. python -c 'import secrets; "
                          "print(secrets.token_urlsafe(32))')")
    return token


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 possibly in brackets) is this machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token."""
    if token is None and not is_loopback(host):
        raise AccessError(f"refusing to serve the dashboard on {host} without a token: anyone "
                          "who can reach that address would read your spend. Set "
                          "COST_MIDDLEWARE_DASHBOARD_TOKEN (or --token), or bind to 127.0.0.1")


def host_name(header: str) -> str:
    """The host of a ``Host`` header value, without its port."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def presented(headers: Iterable[tuple[bytes, bytes]], query_token: str | None) -> list[str]:
    """Every token the request carries (header, query, cookie)."""
    found = [] if query_token is None else [query_token]
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credential = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                found.append(credential.strip())
        elif name == b"cookie":
            try:
                jar = SimpleCookie(value.decode("latin-1"))
            except CookieError:
                continue
            if COOKIE in jar:
                found.append(jar[COOKIE].value)
    return found


def token_matches(expected: str, offered: Iterable[str]) -> bool:
    want = expected.encode()
    # Every offer is compared (no early exit), each in constant time.
    results = [hmac.compare_digest(want, offer.encode("utf-8", "replace")) for offer in offered]
    return any(results)
