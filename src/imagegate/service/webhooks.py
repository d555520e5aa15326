"""Delivery of queued callbacks (SPEC §6): signed, retried with growing delays, durable.

Each WebhookDelivery row is one message with a fixed `webhook-id`. A sender claims a due row by
moving its `next_at` past the attempt's timeout (so no other sender picks it meanwhile), POSTs it
signed with the key's current secret, and records the result: 2xx delivered, 410 stopped, anything
else (or no answer) retried after the next configured delay, until the delays run out.
"""

from __future__ import annotations

import logging

import anyio
from sqlalchemy import select, update

from imagegate import __version__
from imagegate.config import WebhookSettings
from imagegate.errors import ImagegateError
from imagegate.net.fetch import SafeFetcher
from imagegate.stores import sql
from imagegate.stores.db import ApiKey, Database, WebhookDelivery, now_ms
from imagegate.webhooks import headers_for

log = logging.getLogger("imagegate.webhooks")

_ANY_DUE = "SELECT 1 FROM webhook_deliveries WHERE state = 'pending' AND next_at <= :now LIMIT 1"
"""Whether any delivery is due: a poll that finds none takes no write lock."""

_CLAIM_MARGIN_MS = 30_000


class WebhookSender:
    """Sends due deliveries until cancelled."""

    def __init__(
        self, db: Database, fetcher: SafeFetcher, settings: WebhookSettings, retry_delays: list[float]
    ) -> None:
        self.db = db
        self.fetcher = fetcher
        self.settings = settings
        self.retry_delays = retry_delays
        self._wake = anyio.Event()
        self._limiter = anyio.CapacityLimiter(settings.concurrency)

    def wake(self) -> None:
        """Look for due deliveries now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        async with anyio.create_task_group() as group:
            while True:
                self._wake = anyio.Event()
                try:
                    with anyio.CancelScope(shield=True):
                        due = await self.claim_due()
                    for delivery_id in due:
                        group.start_soon(self._send_limited, delivery_id)
                except Exception:  # a database hiccup must not stop deliveries
                    log.exception("webhook poll failed; retrying")
                with anyio.move_on_after(self.settings.poll_interval_s):
                    await self._wake.wait()

    async def claim_due(self) -> list[str]:
        """Claim the due pending deliveries that fit the free sending slots; returns their ids."""
        room = int(self.settings.concurrency - self._limiter.borrowed_tokens)
        if room <= 0:
            return []
        now = now_ms()
        async with sql.read(self.db) as statements:
            if await statements.row(_ANY_DUE, {"now": now}) is None:
                return []
        hold_until = now + int(self.settings.timeout_s * 1000) + _CLAIM_MARGIN_MS
        claimed = []
        async with self.db.session() as session, session.begin():
            due = await session.scalars(
                select(WebhookDelivery.id)
                .where(WebhookDelivery.state == "pending", WebhookDelivery.next_at <= now)
                .order_by(WebhookDelivery.next_at)
                .limit(room)
            )
            for delivery_id in list(due):
                won = await session.execute(
                    update(WebhookDelivery)
                    .where(
                        WebhookDelivery.id == delivery_id,
                        WebhookDelivery.state == "pending",
                        WebhookDelivery.next_at <= now,
                    )
                    .values(next_at=hold_until, attempts=WebhookDelivery.attempts + 1)
                )
                if won.rowcount == 1:  # type: ignore[attr-defined]
                    claimed.append(delivery_id)
        return claimed

    async def _send_limited(self, delivery_id: str) -> None:
        async with self._limiter:
            try:
                await self.send(delivery_id)
            except Exception:  # the claim expires and the delivery is retried
                log.exception("webhook %s could not be sent", delivery_id)

    async def send(self, delivery_id: str) -> None:
        """One attempt of a claimed delivery, and its recorded result."""
        with anyio.CancelScope(shield=True):
            async with self.db.session() as session:
                row = await session.get(WebhookDelivery, delivery_id)
                key = await session.scalar(select(ApiKey).where(ApiKey.id == row.key_id)) if row else None
        if row is None or key is None or not key.webhook_secret:
            return
        headers = {
            **headers_for(key.webhook_secret, row.id, row.body),
            "content-type": "application/json",
            "user-agent": f"imagegate-webhooks/{__version__}",
        }
        status: int | None = None
        error: str | None = None
        try:
            status = await self.fetcher.post(
                row.url, row.body, headers, param="callback_url", timeout_s=self.settings.timeout_s
            )
        except ImagegateError as exc:
            error = exc.message
        await self._record(row, status, error)

    async def _record(self, row: WebhookDelivery, status: int | None, error: str | None) -> None:
        now = now_ms()
        delivered = status is not None and 200 <= status < 300
        if status is not None and not delivered:
            error = f"HTTP {status}"
        values: dict[str, object] = {"last_status": status, "last_error": error}
        if delivered:
            values.update(state="delivered", finished_at=now)
        elif status == 410:
            values.update(state="stopped", finished_at=now)
        elif row.attempts <= len(self.retry_delays):
            values.update(next_at=now + int(self.retry_delays[row.attempts - 1] * 1000))
        else:
            values.update(state="failed", finished_at=now)
        with anyio.CancelScope(shield=True):
            async with self.db.session() as session, session.begin():
                await session.execute(update(WebhookDelivery).where(WebhookDelivery.id == row.id).values(**values))
        if values.get("next_at") is not None:
            log.info("webhook %s attempt %d failed (%s); retrying", row.id, row.attempts, values["last_error"])
