"""Which base URL result links carry, never taken from an untrusted `Host` header (SPEC §8).

Without `public_url`, a request's `Host` header is only believed when it names one of the configured
`trusted_hosts`; otherwise links use the address the connection was accepted on, so a forged
`Host: evil.example` cannot plant its host in stored results and webhooks.
"""

from __future__ import annotations

from collections.abc import Iterable

from imagegate.asgi import Scope, header

_DEFAULT_PORTS = {"http": 80, "https": 443}


def host_header(scope: Scope) -> str:
    """The request's `Host` header, lower-cased ('' when absent)."""
    return (header(scope, b"host") or b"").decode("latin-1").strip().lower()


def is_trusted(host: str, trusted: Iterable[str]) -> bool:
    """Whether `host` (`name` or `name:port`) is one of `trusted` (entries `name`, `name:port` or
    `*.domain` for any subdomain)."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    for entry in (entry.strip().lower() for entry in trusted):
        if entry in (host, name):
            return True
        if entry.startswith("*.") and name.endswith(entry[1:]):
            return True
    return False


def url_host(address: str) -> str:
    """`address` as a URL's host: an IPv6 address in brackets, anything else as it is."""
    return f"[{address}]" if ":" in address else address


def listening_base(scope: Scope) -> str:
    """`scheme://address:port` of the socket the request came in on (the default port left out)."""
    scheme = str(scope.get("scheme", "http"))
    server = scope.get("server") or ("127.0.0.1", None)
    address, port = url_host(str(server[0])), server[1]
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{address}"
    return f"{scheme}://{address}:{port}"


def public_base(scope: Scope, public_url: str | None, trusted: list[str]) -> str:
    """The base of result URLs for a request: `public_url`, else its trusted `Host`, else the
    listening address; no trailing slash."""
    if public_url:
        return public_url.rstrip("/")
    host = host_header(scope)
    if trusted and host and is_trusted(host, trusted):
        return f"{scope.get('scheme', 'http')}://{host}"
    return listening_base(scope)
