"""API keys: random, shown once, stored as SHA-256 hashes (SPEC §7)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.errors import AuthenticationFailed, NotFound
from imagegate.stores.db import ApiKey, now_ms
from imagegate.webhooks import new_secret

KEY_PREFIX = "ig-"


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class NewKey:
    """A freshly created key: `raw` is shown once and never stored."""

    id: str
    raw: str
    name: str
    credits: Decimal
    is_admin: bool
    webhook_secret: str


async def create_key(
    session: AsyncSession, *, name: str = "", credits: Decimal = Decimal(0), admin: bool = False
) -> NewKey:
    """Create a key with 256 random bits and its webhook signing secret; the caller commits."""
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = "key_" + secrets.token_hex(8)
    secret = new_secret()
    session.add(
        ApiKey(
            id=key_id,
            name=name,
            key_hash=hash_key(raw),
            prefix=raw[:7],
            credits=credits,
            is_admin=admin,
            webhook_secret=secret,
        )
    )
    return NewKey(key_id, raw, name, credits, admin, secret)


async def count_keys(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(ApiKey)) or 0)


async def authenticate(session: AsyncSession, raw: str | None) -> ApiKey:
    """The live key whose hash matches `raw`; raises AuthenticationFailed otherwise."""
    if not raw:
        raise AuthenticationFailed("You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.")
    row = await session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(raw)))
    if row is None or row.revoked_at is not None:
        shown = raw[:7] + "…" if len(raw) > 7 else "…"
        raise AuthenticationFailed(f"Incorrect API key provided: {shown}")
    return row


async def touch(session: AsyncSession, key_id: str) -> None:
    await session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now_ms()))


async def list_keys(session: AsyncSession) -> list[ApiKey]:
    return list(await session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


async def revoke_key(session: AsyncSession, key_id: str) -> ApiKey:
    row = await session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"No key with id '{key_id}'.")
    if row.revoked_at is None:
        row.revoked_at = now_ms()
    return row


async def grant_credits(session: AsyncSession, key_id: str, amount: Decimal) -> ApiKey:
    row = await session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"No key with id '{key_id}'.")
    row.credits = row.credits + amount
    return row


async def rotate_webhook_secret(session: AsyncSession, key_id: str) -> str:
    """Replace a key's webhook secret; deliveries signed from now on use the new one."""
    row = await session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"No key with id '{key_id}'.")
    row.webhook_secret = new_secret()
    return row.webhook_secret
