"""Inputs published for a provider to fetch: stored for one attempt, reachable only through a signed
URL under IMAGEGATE_PUBLIC_URL that expires, and withdrawn when the attempt ends."""

from __future__ import annotations

import secrets
import time

from imagegate.core.request import OutputFormat
from imagegate.net.signed import UrlSigner
from imagegate.stores.blobs import BlobStore

PREFIX = "relay."
"""Published blobs are named `relay.<random>.<ext>`, a shape the `/files/` route never serves."""


class PublishedInputs:
    """The InputHost of the task-jobs dialect client."""

    def __init__(self, blobs: BlobStore, signer: UrlSigner, public_url: str, ttl_s: int = 3600) -> None:
        self.blobs = blobs
        self.signer = signer
        self.public_url = public_url.rstrip("/")
        self.ttl_s = ttl_s

    async def publish(self, data: bytes, fmt: OutputFormat) -> tuple[str, str]:
        name = f"{PREFIX}{secrets.token_urlsafe(18)}.{fmt.value}"
        await self.blobs.put(name, data)
        token = self.signer.token(name, int(time.time()) + self.ttl_s)
        return f"{self.public_url}/inputs/{token}", name

    async def withdraw(self, handle: str) -> None:
        await self.blobs.delete(handle)

    def resolve(self, token: str) -> str | None:
        """The blob a valid, unexpired token names (only ever a published input)."""
        name = self.signer.verify(token, int(time.time()))
        return name if name is not None and name.startswith(PREFIX) else None
