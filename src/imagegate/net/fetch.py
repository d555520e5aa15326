"""Safe fetching of client-supplied URLs (SPEC §8) and decoding of inline (data URL / base64) images.

Every address a host resolves to, at every redirect hop, is checked before connecting, and the
connection is pinned to the checked address (the original host goes in `Host` and TLS SNI), so a
DNS answer that changes between check and connect cannot redirect us. Size and time limits apply
while the body streams in.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import tempfile
from dataclasses import dataclass, field
from typing import IO
from urllib.parse import urljoin, urlsplit

import anyio
import httpx
import pybase64

from imagegate.errors import ImageTooLarge, InvalidImage, InvalidImageUrl, excerpt
from imagegate.net.acyclic_client import AcyclicClient, AnswerTooLarge

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
SPOOL_IN_MEMORY = 1024 * 1024
_REDIRECTS = {301, 302, 303, 307, 308}


@dataclass(frozen=True)
class FetchPolicy:
    """Where fetches may go and how much they may take."""

    allow: tuple[IpNetwork, ...] = ()
    max_bytes: int = 50 * 1024 * 1024
    timeout_s: float = 20.0
    connect_timeout_s: float = 5.0
    max_redirects: int = 5
    schemes: frozenset[str] = field(default_factory=lambda: frozenset({"http", "https"}))


def _embedded_ipv4(ip: IpAddress) -> ipaddress.IPv4Address | None:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip.teredo is not None:
            return ip.teredo[1]
    return None


GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
"""The only IPv6 block handed out for public hosts; everything outside it (site-local fec0::/10, NAT64,
unique-local, ...) is refused, so ranges defined after this code was written are refused too."""
SPECIAL_PURPOSE: tuple[IpNetwork, ...] = (
    ipaddress.IPv4Network("192.0.0.0/24"),  # IETF protocol assignments
    ipaddress.IPv4Network("192.88.99.0/24"),  # 6to4 relay anycast (deprecated)
    ipaddress.IPv6Network("2001::/23"),  # IETF protocol assignments: Teredo, ORCHID, benchmarking, ...
    ipaddress.IPv6Network("2001:db8::/32"),  # documentation
    ipaddress.IPv6Network("3fff::/20"),  # documentation (RFC 9637)
    ipaddress.IPv6Network("5f00::/16"),  # SRv6 segment identifiers (RFC 9602)
)
"""Special-purpose ranges inside otherwise global space that `ipaddress.is_global` lets through."""


def address_refusal(ip: IpAddress, allow: tuple[IpNetwork, ...]) -> str | None:
    """Why `ip` may not be contacted (loopback, private, ...), or None when it may.

    Only globally routable addresses pass: `is_global`, inside IPv6's global unicast block, and not
    in a special-purpose range. IPv4 addresses embedded in IPv6 (mapped, 6to4, Teredo) are judged as
    the IPv4 address. An address inside an `allow` network is always permitted.
    """
    if any(ip in net for net in allow if net.version == ip.version):
        return None
    inner = _embedded_ipv4(ip)
    if inner is not None:
        return address_refusal(inner, allow)
    for attr in (
        "is_loopback",
        "is_private",
        "is_link_local",
        "is_multicast",
        "is_reserved",
        "is_unspecified",
    ):
        if getattr(ip, attr):
            return attr.removeprefix("is_").replace("_", "-")
    if isinstance(ip, ipaddress.IPv6Address) and ip not in GLOBAL_UNICAST_V6:
        return "non-global"
    if any(ip in net for net in SPECIAL_PURPOSE if net.version == ip.version):
        return "special-purpose"
    if not ip.is_global:
        return "non-global"
    return None


async def resolve(host: str, port: int) -> list[IpAddress]:
    """All addresses `host` resolves to (numeric spellings such as 2130706433 included)."""
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return [literal]
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[IpAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if ip not in found:
            found.append(ip)
    return found


class SafeFetcher:
    """Fetches client URLs into spooled temporary files under a FetchPolicy."""

    def __init__(self, policy: FetchPolicy, client: httpx.AsyncClient | None = None) -> None:
        self.policy = policy
        self._client = client or AcyclicClient(
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(policy.timeout_s, connect=policy.connect_timeout_s),
            headers={"user-agent": "imagegate-fetch/1"},
            max_answer_bytes=policy.max_bytes,  # inflated a bounded piece at a time, not by httpx
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def check_url(self, url: str, param: str) -> tuple[httpx.URL, IpAddress]:
        """Validate scheme and host of `url` and return it with the address to connect to.

        Raises InvalidImageUrl naming `param` when any resolved address is refused.
        """
        try:
            parsed = urlsplit(url)
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
        except ValueError as exc:
            raise InvalidImageUrl(f"Invalid URL in '{param}': {excerpt(str(exc))}.", param=param) from exc
        if parsed.scheme not in self.policy.schemes or not parsed.hostname:
            raise InvalidImageUrl(f"Invalid URL in '{param}': only http and https URLs are fetched.", param=param)
        host = parsed.hostname
        shown = excerpt(host)
        try:
            addresses = await resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise InvalidImageUrl(f"Invalid URL in '{param}': host '{shown}' does not resolve.", param=param) from exc
        if not addresses:
            raise InvalidImageUrl(f"Invalid URL in '{param}': host '{shown}' does not resolve.", param=param)
        for ip in addresses:
            reason = address_refusal(ip, self.policy.allow)
            if reason is not None:
                raise InvalidImageUrl(
                    f"Refused URL in '{param}': host '{shown}' resolves to a {reason} address; "
                    "only public addresses are fetched.",
                    param=param,
                )
        try:
            return httpx.URL(url), addresses[0]
        except httpx.InvalidURL as exc:
            raise InvalidImageUrl(f"Invalid URL in '{param}': {excerpt(str(exc))}.", param=param) from exc

    async def fetch(self, url: str, param: str) -> IO[bytes]:
        """Download `url` into a spooled temporary file (rewound), obeying the policy at every hop.

        Raises InvalidImageUrl on refusal, failure, timeout or an oversized body; the caller owns
        (and closes) the returned file.
        """
        try:
            with anyio.fail_after(self.policy.timeout_s):
                return await self._fetch_following(url, param)
        except TimeoutError as exc:
            raise InvalidImageUrl(
                f"Failed to fetch '{param}': no complete answer within {self.policy.timeout_s:g} s.",
                param=param,
            ) from exc

    async def _fetch_following(self, url: str, param: str) -> IO[bytes]:
        for _ in range(self.policy.max_redirects + 1):
            target, ip = await self.check_url(url, param)
            location = await self._fetch_once(target, ip, param)
            if isinstance(location, str):
                url = urljoin(str(target), location)
                continue
            return location
        raise InvalidImageUrl(
            f"Failed to fetch '{param}': more than {self.policy.max_redirects} redirects.", param=param
        )

    def _pinned(
        self, method: str, target: httpx.URL, ip: IpAddress, headers: dict[str, str] | None = None, content: bytes = b""
    ) -> httpx.Request:
        """A request to `target` that connects to the checked `ip` (Host header and TLS SNI keep the name)."""
        pinned = target.copy_with(host=str(ip))
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        sent = {**(headers or {}), "host": target.netloc.decode("ascii")}
        return self._client.build_request(method, pinned, headers=sent, content=content or None, extensions=extensions)

    async def post(self, url: str, body: bytes, headers: dict[str, str], *, param: str, timeout_s: float) -> int:
        """POST `body` to `url` under the same address rules, following no redirect; the HTTP status.

        The answer's body is not read. Raises InvalidImageUrl when the URL is refused, the connection
        fails, or no answer comes within `timeout_s`.
        """
        target, ip = await self.check_url(url, param)
        request = self._pinned("POST", target, ip, headers, body)
        try:
            with anyio.fail_after(timeout_s):
                response = await self._client.send(request, stream=True)
                await response.aclose()
        except TimeoutError as exc:
            raise InvalidImageUrl(f"No answer from '{param}' within {timeout_s:g} s.", param=param) from exc
        except httpx.HTTPError as exc:
            raise InvalidImageUrl(
                f"Failed to reach '{param}': {type(exc).__name__} while connecting to {excerpt(target.host)}.",
                param=param,
            ) from exc
        return response.status_code

    async def _fetch_once(self, target: httpx.URL, ip: IpAddress, param: str) -> IO[bytes] | str:
        request = self._pinned("GET", target, ip)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise InvalidImageUrl(
                f"Failed to fetch '{param}': {type(exc).__name__} while connecting to {excerpt(target.host)}.",
                param=param,
            ) from exc
        try:
            if response.status_code in _REDIRECTS and "location" in response.headers:
                return response.headers["location"]
            if response.status_code != 200:
                raise InvalidImageUrl(
                    f"Failed to fetch '{param}': the server answered HTTP {response.status_code}.",
                    param=param,
                )
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.policy.max_bytes:
                raise self._too_large(param)
            return await self._spool(response, param)
        finally:
            await response.aclose()

    async def _spool(self, response: httpx.Response, param: str) -> IO[bytes]:
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - returned to caller
        total = 0
        try:
            async for chunk in response.aiter_bytes():
                total += len(chunk)
                if total > self.policy.max_bytes:
                    raise self._too_large(param)
                spool.write(chunk)
        except AnswerTooLarge as exc:
            spool.close()
            raise self._too_large(param) from exc
        except httpx.HTTPError as exc:
            spool.close()
            raise InvalidImageUrl(f"Failed to fetch '{param}': the transfer broke off.", param=param) from exc
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return spool

    def _too_large(self, param: str) -> InvalidImageUrl:
        return InvalidImageUrl(
            f"Failed to fetch '{param}': the image is larger than {self.policy.max_bytes:,} bytes.",
            param=param,
        )


def decode_inline(text: str, *, param: str, max_bytes: int) -> IO[bytes]:
    """Decode a `data:image/...;base64,` URL or raw base64 into a spooled file (rewound).

    Raises InvalidImage for malformed input and ImageTooLarge beyond `max_bytes`.
    """
    payload = text
    if text.startswith("data:"):
        header, sep, payload = text.partition(",")
        if not sep or ";base64" not in header:
            raise InvalidImage(f"Invalid data URL in '{param}': expected data:image/...;base64,...", param=param)
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise ImageTooLarge(f"Image in '{param}' is larger than {max_bytes:,} bytes.", param=param)
    try:
        raw = pybase64.b64decode(payload, validate=True)
    except ValueError:
        try:
            raw = pybase64.b64decode("".join(payload.split()), validate=True)
        except ValueError as exc:
            raise InvalidImage(f"Invalid image in '{param}': not a URL, data URL or base64.", param=param) from exc
    if len(raw) > max_bytes:  # the estimate above is quick but allows for padding it cannot see
        raise ImageTooLarge(f"Image in '{param}' is larger than {max_bytes:,} bytes.", param=param)
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - returned to caller
    spool.write(raw)
    spool.seek(0)
    return spool
