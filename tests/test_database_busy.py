"""A busy database makes requests wait their turn, never fail (SQLite: one connection, taken in turn)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event

from imagegate.runtime import Runtime
from tests.conftest import audit_ledgers, open_api
from tests.test_accounts import DATA_URL, balance, db_file, settings

REQUESTS = 64


def slow_statements(runtime: Runtime, seconds: float) -> None:
    """Every SQL statement of the app's database takes `seconds` longer (a slow disk)."""

    def linger(*args: Any) -> None:
        time.sleep(seconds)

    event.listen(runtime.db.engine.sync_engine, "before_cursor_execute", linger)


async def test_64_concurrent_paid_requests_on_a_slow_database_all_succeed(tmp_path: Path) -> None:
    config = settings(tmp_path)
    async with open_api(config) as api:
        slow_statements(api.client._transport.app.state.runtime, 0.003)  # type: ignore[attr-defined]
        form = {"model": "dall-e-2", "prompt": "invert", "image": DATA_URL, "size": "256x256", "output_format": "jpeg"}
        answers = await asyncio.gather(
            *(api.client.post("/v1/images/edits", headers=api.auth, json=form) for _ in range(REQUESTS))
        )
    assert sorted({r.status_code for r in answers}) == [200], [r.text for r in answers if r.status_code != 200][:3]
    assert balance(config, api.key) == (str(1000 - 2 * REQUESTS), "0"), "every request paid exactly once"
    audit_ledgers(db_file(config))
