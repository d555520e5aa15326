"""The admin HTTP API and the accounts CLI (SPEC §7, §10): admin keys only, no raw key anywhere."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from imagegate.config import load_config
from tests.conftest import Api, audit_ledgers, create_key, invoke_cli, make_image, open_api
from tests.test_accounts import DATA_URL, bearer


async def test_admin_api_needs_an_admin_key(api: Api) -> None:
    for method, path in [
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("PATCH", "/admin/keys/key_x"),
        ("DELETE", "/admin/keys/key_x"),
        ("POST", "/admin/keys/key_x/grant"),
        ("GET", "/admin/keys/key_x/ledger"),
        ("GET", "/admin/usage"),
    ]:
        r = await api.client.request(method, path, headers=api.auth)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["error"]["code"] == "permission_denied"
        anonymous = await api.client.request(method, path)
        assert anonymous.status_code == 401


async def test_admin_manages_keys_credits_and_reads_tasks_ledgers_and_usage(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    admin = bearer(await create_key(api.config, admin=True))
    made = await api.client.post(
        "/admin/keys",
        headers=admin,
        json={"name": "shop", "credits": "5.5", "rpm": 7, "models": ["gpt-image-2"], "expires_at": 4102444800},
    )
    assert made.status_code == 201, made.text
    created = made.json()
    key_id, raw = created["id"], created["key"]
    assert raw.startswith("ig-") and created["webhook_secret"].startswith("whsec_")
    assert created["balance"] == "5.5" and created["limits"]["rpm"] == 7 and created["expires_at"] == 4102444800

    listing = await api.client.get("/admin/keys", headers=admin)
    assert key_id in listing.text and raw not in listing.text and "key_hash" not in listing.text
    assert "webhook_secret" not in listing.text

    patched = await api.client.patch(f"/admin/keys/{key_id}", headers=admin, json={"rpm": None, "max_active": 3})
    assert patched.json()["limits"] == {"rpm": None, "max_active": 3, "max_images": None}
    assert patched.json()["effective_limits"]["rpm"] == api.config.accounts.requests_per_minute
    bad = await api.client.patch(f"/admin/keys/{key_id}", headers=admin, json={"rpm": -1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rpm"
    for field, value in (("max_images", 10**30), ("expires_at", 10**30)):
        huge = await api.client.patch(f"/admin/keys/{key_id}", headers=admin, json={field: value})
        assert huge.status_code == 400 and huge.json()["error"]["param"] == field, "past a column: a 400, not a 500"

    granted = await api.client.post(
        f"/admin/keys/{key_id}/grant", headers=admin, json={"amount": "2.5", "note": "gift"}
    )
    assert granted.json()["balance"] == "8"
    overdrawn = await api.client.post(f"/admin/keys/{key_id}/deduct", headers=admin, json={"amount": 100})
    assert overdrawn.status_code == 402 and overdrawn.json()["error"]["code"] == "insufficient_credits"
    negative = await api.client.post(f"/admin/keys/{key_id}/grant", headers=admin, json={"amount": "-1"})
    assert negative.status_code == 400 and negative.json()["error"]["param"] == "amount"
    deducted = await api.client.post(f"/admin/keys/{key_id}/deduct", headers=admin, json={"amount": 1})
    assert deducted.json()["balance"] == "7"

    edit = await api.client.post("/v1/images/edits", headers=bearer(raw), json={"prompt": "invert", "image": DATA_URL})
    assert edit.status_code == 200, edit.text
    tasks = (await api.client.get(f"/admin/keys/{key_id}/tasks", headers=admin)).json()["data"]
    assert [(t["id"], t["state"], t["cost"]) for t in tasks] == [(edit.json()["task_id"], "success", "6")]
    entries = (await api.client.get(f"/admin/keys/{key_id}/ledger", headers=admin)).json()["data"]
    assert [(e["kind"], e["amount"], e["held"]) for e in entries] == [
        ("settle", "-6", "-6"),
        ("hold", "0", "6"),
        ("deduct", "-1", "0"),
        ("grant", "2.5", "0"),
        ("grant", "5.5", "0"),
    ]
    shown = (await api.client.get(f"/admin/keys/{key_id}", headers=admin)).json()
    assert shown["balance"] == "1" == shown["ledger"]["balance"] and shown["ledger"]["held"] == "0"
    assert shown["last_used_at"] is not None

    usage = (await api.client.get("/admin/usage", headers=admin, params={"key_id": key_id})).json()["data"]
    assert [(u["model"], u["tasks"], u["succeeded"], u["images"], u["credits"]) for u in usage] == [
        ("gpt-image-2", 1, 1, 1, "6")
    ]
    everyone = (await api.client.get("/admin/usage", headers=admin, params={"days": 7})).json()["data"]
    assert sum(row["tasks"] for row in everyone) == 1

    missing = await api.client.get("/admin/keys/key_nope/ledger", headers=admin)
    assert missing.status_code == 404
    revoked = await api.client.delete(f"/admin/keys/{key_id}", headers=admin)
    assert revoked.json()["state"] == "revoked"
    assert (await api.client.get("/v1/usage", headers=bearer(raw))).status_code == 401
    audit_ledgers(api.config.data_dir / "imagegate.db")
    assert raw not in caplog.text, "no raw key reaches the logs"


def test_cli_keys_with_limits_credits_and_ledger(tmp_path: Path) -> None:
    env = {**os.environ, "IMAGEGATE_DATA_DIR": str(tmp_path / "d")}
    made = invoke_cli(
        "keys", "create", "--credits", "10", "--rpm", "5", "--max-active", "2", "--admin", "--json", env=env
    )
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout.strip().splitlines()[-1])
    assert key["admin"] is True and key["limits"] == {"rpm": 5, "max_active": 2, "max_images": None}
    assert (
        invoke_cli("credits", "grant", key["id"], "2.25", "--note", "top-up", env=env)
        .stdout.strip()
        .endswith("12.25 credits")
    )
    over = invoke_cli("credits", "deduct", key["id"], "100", env=env)
    assert over.returncode == 1 and "available" in over.stderr
    assert invoke_cli("credits", "deduct", key["id"], "0.25", env=env).returncode == 0
    limited = invoke_cli("keys", "limits", key["id"], "--max-images", "3", "--models", "gpt-image-2,dall-e-2", env=env)
    assert json.loads(limited.stdout)["models"] == ["gpt-image-2", "dall-e-2"]
    listing = invoke_cli("keys", "list", "--json", env=env)
    assert key["key"] not in listing.stdout + invoke_cli("keys", "list", env=env).stdout
    (shown,) = json.loads(listing.stdout)
    assert shown["balance"] == "12" and shown["effective_limits"]["max_images"] == 3
    rows = [json.loads(line) for line in invoke_cli("credits", "ledger", key["id"], env=env).stdout.splitlines()]
    assert [(r["kind"], r["amount"], r["note"]) for r in rows] == [
        ("deduct", "-0.25", ""),
        ("grant", "2.25", "top-up"),
        ("grant", "10", "starting balance"),
    ]
    audit_ledgers(tmp_path / "d" / "imagegate.db")


async def test_admin_channels_show_circuit_health_and_attempts(tmp_path: Path) -> None:
    config = load_config(data_dir=tmp_path / "d", channels=[{"name": "built-in", "engine": "classic"}])
    async with open_api(config) as api:
        admin = await create_key(config, admin=True)
        edited = await api.client.post(
            "/v1/images/edits",
            headers=api.auth,
            data={"prompt": "sepia"},
            files=[("image", ("a.png", make_image(), "image/png"))],
        )
        assert edited.status_code == 200, edited.text
        refused = await api.client.get("/admin/channels", headers=api.auth)
        assert refused.status_code == 403
        listed = (await api.client.get("/admin/channels", headers={"Authorization": f"Bearer {admin}"})).json()["data"]
    assert listed == [
        {
            "name": "built-in",
            "engine": "classic",
            "models": "all",
            "priority": 0,
            "weight": 1,
            "circuit": "closed",
            "health": None,
            "attempts": {"ok": 1},
        }
    ]
