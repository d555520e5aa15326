"""Callbacks from providers (seed 003's `callback_url` mode) for requests waiting in this process.

Each waiting request gets a slot whose URL carries a signed, expiring token naming it; a POST to that
URL fills the slot once. Slots live in memory: a callback for a request this process no longer
waits on (it ended, or another process runs it) is refused with 404 and the provider may retry.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import anyio

from imagegate.net.signed import UrlSigner

PREFIX = "cb."


@dataclass
class Slot:
    name: str
    url: str
    body: Any = None
    arrived: anyio.Event = field(default_factory=anyio.Event)

    async def wait(self) -> Any:
        await self.arrived.wait()
        return self.body


class CallbackInbox:
    """Slots by name; `deliver` fills one from an incoming POST."""

    def __init__(self, signer: UrlSigner, public_url: str, ttl_s: int = 86_400) -> None:
        self.signer = signer
        self.public_url = public_url.rstrip("/")
        self.ttl_s = ttl_s
        self._slots: dict[str, Slot] = {}

    def expect(self) -> Slot:
        name = PREFIX + secrets.token_urlsafe(18)
        token = self.signer.token(name, int(time.time()) + self.ttl_s)
        slot = Slot(name, f"{self.public_url}/relay/callbacks/{token}")
        self._slots[name] = slot
        return slot

    def discard(self, slot: Any) -> None:
        if isinstance(slot, Slot):
            self._slots.pop(slot.name, None)

    def deliver(self, token: str, body: Any) -> bool:
        """Fill the slot `token` names; False when the token is invalid or nobody waits on it."""
        name = self.signer.verify(token, int(time.time()))
        slot = self._slots.get(name) if name is not None and name.startswith(PREFIX) else None
        if slot is None or slot.arrived.is_set():
            return False
        slot.body = body
        slot.arrived.set()
        return True
