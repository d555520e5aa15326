"""API keys: random, shown once, stored as SHA-256 hashes (SPEC §7), with their own limits."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.config import AccountDefaults
from imagegate.errors import AuthenticationFailed, BadRequest, NotFound, excerpt
from imagegate.stores import ledger
from imagegate.stores.db import ApiKey, now_ms
from imagegate.stores.sql import Sql, from_row, select_sql
from imagegate.webhooks import new_secret

KEY_PREFIX = "ig-"


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class KeyLimits:
    """A key's effective limits (its own, else the configured defaults); 0 means unlimited."""

    rpm: int
    max_active: int
    max_output_images: int


def limits_of(key: ApiKey, defaults: AccountDefaults) -> KeyLimits:
    """The limits that apply to `key`."""
    return KeyLimits(
        rpm=defaults.requests_per_minute if key.rpm is None else key.rpm,
        max_active=defaults.max_active_tasks if key.max_active is None else key.max_active,
        max_output_images=defaults.max_output_images if key.max_images is None else key.max_images,
    )


EDITABLE = ("name", "rpm", "max_active", "max_images", "models", "expires_at")
"""The fields an operator may change on an existing key (None restores the default)."""


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
    session: AsyncSession,
    *,
    name: str = "",
    credits: Decimal = Decimal(0),
    admin: bool = False,
    **settings: Any,
) -> NewKey:
    """Create a key with 256 random bits and its webhook signing secret; the caller commits.

    `settings` are EDITABLE fields (limits, allowed models, expiry); a starting balance is a ledger grant.
    """
    if credits:
        ledger.check_amount(credits, "credits")
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = "key_" + secrets.token_hex(8)
    secret = new_secret()
    row = ApiKey(
        id=key_id,
        name=name,
        key_hash=hash_key(raw),
        prefix=raw[:7],
        credits=Decimal(0),
        held=Decimal(0),
        is_admin=admin,
        webhook_secret=secret,
    )
    _apply(row, settings)
    session.add(row)
    await session.flush()
    if credits:
        await ledger.grant(session, key_id, credits, note="starting balance", param="credits")
    return NewKey(key_id, raw, name, credits, admin, secret)


MAX_LIMIT = 2**31 - 1
"""The largest per-key limit a column holds (the database's 32-bit integer)."""
MAX_MOMENT_MS = 2**63 - 1


def _apply(row: ApiKey, settings: dict[str, Any]) -> None:
    unknown = set(settings) - set(EDITABLE)
    if unknown:
        raise BadRequest(f"Unknown key settings: {', '.join(sorted(unknown))}.")
    for name in ("rpm", "max_active", "max_images"):
        value = settings.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_LIMIT):
            raise BadRequest(
                f"Invalid '{name}': {excerpt(value)}; use a whole number up to {MAX_LIMIT}, 0 for unlimited.",
                param=name,
            )
    expires = settings.get("expires_at")
    if expires is not None and not 0 <= expires <= MAX_MOMENT_MS:
        raise BadRequest(
            f"Invalid 'expires_at': {excerpt(expires)} is not a time this server can store.", param="expires_at"
        )
    models = settings.get("models")
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
        raise BadRequest("Invalid 'models': expected an array of model ids.", param="models")
    for name, value in settings.items():
        setattr(row, name, value)


async def update_key(session: AsyncSession, key_id: str, settings: dict[str, Any]) -> ApiKey:
    """Change EDITABLE fields of a key; raises NotFound or BadRequest naming the bad field."""
    row = await session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"No key with id '{key_id}'.", param="key_id")
    _apply(row, settings)
    return row


async def count_keys(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(ApiKey)) or 0)


_BY_HASH = select_sql(ApiKey) + " WHERE key_hash = :hash"


async def authenticate(sql: Sql, raw: str | None) -> ApiKey:
    """The live key whose hash matches `raw` (a detached row); raises AuthenticationFailed otherwise."""
    if not raw:
        raise AuthenticationFailed("You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.")
    found = await sql.row(_BY_HASH, {"hash": hash_key(raw)})
    row = from_row(ApiKey, found) if found is not None else None
    shown = raw[:7] + "…" if len(raw) > 7 else "…"
    if row is None or row.revoked_at is not None:
        raise AuthenticationFailed(f"Incorrect API key provided: {shown}")
    if row.expires_at is not None and row.expires_at <= now_ms():
        raise AuthenticationFailed(f"The API key {shown} has expired.")
    return row


async def touch(sql: Sql, key_id: str) -> None:
    """Record that the key was used now."""
    await sql.run("UPDATE api_keys SET last_used_at = :now WHERE id = :id", {"now": now_ms(), "id": key_id})


async def list_keys(session: AsyncSession) -> list[ApiKey]:
    return list(await session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


async def revoke_key(session: AsyncSession, key_id: str) -> ApiKey:
    row = await session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"No key with id '{key_id}'.")
    if row.revoked_at is None:
        row.revoked_at = now_ms()
    return row


async def rotate_webhook_secret(session: AsyncSession, key_id: str) -> str:
    """Replace a key's webhook secret; deliveries signed from now on use the new one."""
    row = await session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"No key with id '{key_id}'.")
    row.webhook_secret = new_secret()
    return row.webhook_secret
