"""Attacks on the edges of money (admin only): amounts storage cannot hold exactly answer 400 naming the
field, in the admin API and the CLI alike, and never corrupt a balance."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagegate.stores.ledger import MAX_CREDITS
from tests.conftest import Api, audit_ledgers, create_key, invoke_cli
from tests.test_accounts import bearer

HUGE = ["1e30", "9999999999999", "1e300", "1000000000000.000001"]


@pytest.mark.parametrize("amount", [*HUGE, "NaN", "Infinity", "-5", "0.0000001"])
async def test_grants_and_deductions_beyond_what_storage_holds_are_400(api: Api, amount: str) -> None:
    admin = bearer(await create_key(api.config, admin=True))
    made = await api.client.post("/admin/keys", headers=admin, json={"name": "target", "credits": "10"})
    key_id = made.json()["id"]
    for action in ("grant", "deduct"):
        r = await api.client.post(f"/admin/keys/{key_id}/{action}", headers=admin, json={"amount": amount})
        assert r.status_code == 400, (action, amount, r.text)
        assert r.json()["error"]["param"] == "amount"
    shown = await api.client.get(f"/admin/keys/{key_id}", headers=admin)
    assert shown.status_code == 200 and shown.json()["balance"] == "10"
    created = await api.client.post("/admin/keys", headers=admin, json={"credits": amount})
    assert created.status_code == 400 and created.json()["error"]["param"] == "credits", created.text
    audit_ledgers(api.config.data_dir / "imagegate.db")


async def test_a_balance_stops_at_the_maximum_and_stays_exact(api: Api) -> None:
    admin = bearer(await create_key(api.config, admin=True))
    key_id = (await api.client.post("/admin/keys", headers=admin, json={"credits": str(MAX_CREDITS)})).json()["id"]
    over = await api.client.post(f"/admin/keys/{key_id}/grant", headers=admin, json={"amount": "0.000001"})
    assert over.status_code == 400 and over.json()["error"]["param"] == "amount"
    assert "would pass" in over.json()["error"]["message"]
    taken = await api.client.post(f"/admin/keys/{key_id}/deduct", headers=admin, json={"amount": "0.000001"})
    assert taken.status_code == 200 and taken.json()["balance"] == "999999999999.999999"
    back = await api.client.post(f"/admin/keys/{key_id}/grant", headers=admin, json={"amount": "0.000001"})
    assert back.status_code == 200 and back.json()["balance"] == "1000000000000"
    shown = await api.client.get(f"/admin/keys/{key_id}", headers=admin)
    assert shown.status_code == 200 and shown.json()["ledger"]["balance"] == "1000000000000"
    audit_ledgers(api.config.data_dir / "imagegate.db")


def test_the_cli_refuses_them_in_one_line_without_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "IMAGEGATE_DATA_DIR": str(tmp_path / "d")}
    made = invoke_cli("keys", "create", "--credits", "5", env=env)
    key_id = made.stdout.split()[2]
    for command in (
        ("credits", "grant", key_id, "1e30"),
        ("credits", "grant", key_id, "1e300"),
        ("credits", "deduct", key_id, "1e30"),
        ("keys", "create", "--credits", "NaN"),
        ("keys", "create", "--credits", "9999999999999"),
    ):
        done = invoke_cli(*command, env=env)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr and done.stderr.startswith("error: Invalid"), done.stderr
    listed = invoke_cli("credits", "ledger", key_id, env=env)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr
