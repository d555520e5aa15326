"""Callbacks from providers (seed 003's `callback_url` mode) for relayed requests.

Each waiting request gets a slot whose URL carries a signed, expiring token naming it; a POST to that
URL fills the slot once. The callback may reach any node behind the load balancer: the node that holds
the slot fills it at once, any other keeps the body in the database, where the waiting request looks
for it every `poll_s`.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from imagegate.net.signed import UrlSigner
from imagegate.stores.db import Database, RelayCallback, now_ms

PREFIX = "cb."
KEEP_MS = 86_400_000


@dataclass
class Slot:
    name: str
    url: str
    inbox: CallbackInbox
    body: Any = None
    arrived: anyio.Event = field(default_factory=anyio.Event)

    async def wait(self) -> Any:
        """The callback's body, from this process or (posted to another node) from the database."""
        while not self.arrived.is_set():
            with anyio.move_on_after(self.inbox.poll_s):
                await self.arrived.wait()
            if not self.arrived.is_set():
                stored = await self.inbox.take(self.name)
                if stored is not None:
                    self.body = stored
                    self.arrived.set()
        return self.body


class CallbackInbox:
    """Slots by name; `deliver` fills one from an incoming POST."""

    def __init__(
        self, signer: UrlSigner, public_url: str, db: Database | None = None, ttl_s: int = 86_400, poll_s: float = 1.0
    ) -> None:
        self.signer = signer
        self.public_url = public_url.rstrip("/")
        self.db = db
        self.ttl_s = ttl_s
        self.poll_s = poll_s
        self._slots: dict[str, Slot] = {}

    def expect(self) -> Slot:
        name = PREFIX + secrets.token_urlsafe(18)
        token = self.signer.token(name, int(time.time()) + self.ttl_s)
        slot = Slot(name, f"{self.public_url}/relay/callbacks/{token}", self)
        self._slots[name] = slot
        return slot

    def discard(self, slot: Any) -> None:
        if isinstance(slot, Slot):
            self._slots.pop(slot.name, None)

    def accepts(self, token: str) -> str | None:
        """The slot name a valid, unexpired callback token names, or None (checked before any body is read)."""
        name = self.signer.verify(token, int(time.time()))
        return name if name is not None and name.startswith(PREFIX) else None

    async def deliver(self, name: str, body: Any) -> bool:
        """Fill the slot `name` (from `accepts`), here or (for another node) through the database; False
        when the callback already came."""
        slot = self._slots.get(name)
        if slot is not None:
            if slot.arrived.is_set():
                return False
            slot.body = body
            slot.arrived.set()
            return True
        if self.db is None:
            return False
        try:
            async with self.db.session() as session, session.begin():
                await session.execute(delete(RelayCallback).where(RelayCallback.created_at < now_ms() - KEEP_MS))
                session.add(RelayCallback(name=name, body=body))
        except IntegrityError:
            return False
        return True

    async def take(self, name: str) -> Any:
        """The body kept for `name` by another node (removed as it is taken), or None."""
        if self.db is None:
            return None
        with anyio.CancelScope(shield=True):
            async with self.db.session() as session, session.begin():
                row = await session.get(RelayCallback, name)
                if row is None:
                    return None
                await session.delete(row)
                return row.body
