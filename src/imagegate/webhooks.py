"""Standard Webhooks signatures (SPEC §6): for imagegate's sender and for your receiver.

A receiver checks every callback with the key's webhook secret (`whsec_...`, shown by
`imagegate keys create --json`)::

    from imagegate.webhooks import verify, WebhookVerificationError

    try:
        payload = verify(secret, request.headers, request.body)
    except WebhookVerificationError:
        return 400

Signed content is ``"{webhook-id}.{webhook-timestamp}.{body}"``; the signature header is
``v1,<base64 HMAC-SHA256>`` (several space-separated signatures are allowed while secrets rotate).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format prefix, not a secret
TOLERANCE_S = 5 * 60


class WebhookVerificationError(Exception):
    """The message is not signed with this secret, is malformed, or its timestamp is too far off."""


def new_secret() -> str:
    """A fresh random secret: `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WebhookVerificationError("the secret is not whsec_ followed by base64") from exc


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for one message."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers_for(secret: str, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for `body`, stamped now unless `timestamp` is given."""
    stamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret, msg_id, stamp, body),
    }


def verify(secret: str, headers: Mapping[str, str], body: bytes | str, *, tolerance_s: int = TOLERANCE_S) -> Any:
    """Check a delivery's signature and timestamp; return its JSON payload.

    `headers` may use any letter case. Raises WebhookVerificationError when the headers are
    missing, the timestamp is more than `tolerance_s` from now, or no signature matches.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not msg_id or not stamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError as exc:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from exc
    if abs(time.time() - timestamp) > tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance")
    raw = body.encode() if isinstance(body, str) else body
    expected = sign(secret, msg_id, timestamp, raw).removeprefix("v1,")
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return json.loads(raw)
    raise WebhookVerificationError("no matching signature")
