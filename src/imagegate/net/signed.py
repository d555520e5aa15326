"""Signed, expiring URLs for files we let a third party fetch (inputs relayed to a provider).

A token names a stored file and an expiry, and carries an HMAC-SHA256 over both under the server's
secret; without the secret a token can be neither forged nor extended.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from pathlib import Path

from imagegate.owner_only import private_dir, private_writer

_TOKEN = re.compile(r"^([A-Za-z0-9_.-]{1,128})~(\d{10,13})~([0-9a-f]{32})$")


class UrlSigner:
    """Makes and checks `name~expires~signature` tokens."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _signature(self, name: str, expires_at: int) -> str:
        return hmac.new(self._secret, f"{name}~{expires_at}".encode(), hashlib.sha256).hexdigest()[:32]

    def token(self, name: str, expires_at: int) -> str:
        """A token for file `name` valid until `expires_at` (Unix seconds)."""
        return f"{name}~{expires_at}~{self._signature(name, expires_at)}"

    def verify(self, token: str, now: int) -> str | None:
        """The file name a valid, unexpired token names; None otherwise."""
        match = _TOKEN.match(token)
        if match is None:
            return None
        name, expires_at = match.group(1), int(match.group(2))
        if expires_at < now or not hmac.compare_digest(match.group(3), self._signature(name, expires_at)):
            return None
        return name


def secret_for(configured: str | None, data_dir: Path) -> bytes:
    """The configured secret, else one kept in `data_dir/signing.key` (made on first use, mode 0600)."""
    if configured:
        return configured.encode()
    path = data_dir / "signing.key"
    if not path.exists():
        with private_writer(private_dir(data_dir) / "signing.key") as out:
            out.write(secrets.token_bytes(32))
    return path.read_bytes()
