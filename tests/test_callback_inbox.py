"""Providers' callbacks reach the waiting request whichever node they are posted to (both databases)."""

from __future__ import annotations

import anyio

from imagegate.net.signed import UrlSigner
from imagegate.service.callbacks_in import CallbackInbox
from imagegate.stores.db import Database


async def test_a_callback_posted_to_another_node_reaches_the_waiting_request(database: Database) -> None:
    signer = UrlSigner(b"shared-secret" * 3)
    waiting = CallbackInbox(signer, "http://node-a", database, poll_s=0.05)
    other = CallbackInbox(signer, "http://node-b", database, poll_s=0.05)
    slot = waiting.expect()
    token = slot.url.rsplit("/", 1)[1]
    assert slot.url.startswith("http://node-a/relay/callbacks/")
    name = other.accepts(token)
    assert name == slot.name
    assert await other.deliver(name, {"success": True, "task_id": "t1"})
    assert not await other.deliver(name, {"success": True, "task_id": "t1"}), "one callback per slot"
    with anyio.fail_after(5):
        assert await slot.wait() == {"success": True, "task_id": "t1"}
    assert await waiting.take(slot.name) is None, "taken once"
    assert other.accepts(token.replace("~", "x", 1)) is None, "a forged token is refused"
    assert other.accepts(token[:-1] + ("0" if token[-1] != "0" else "1")) is None, "so is a tampered one"


async def test_a_callback_to_the_waiting_node_fills_its_slot_at_once(database: Database) -> None:
    inbox = CallbackInbox(UrlSigner(b"k" * 32), "http://node-a", database, poll_s=60)
    slot = inbox.expect()
    assert await inbox.deliver(inbox.accepts(slot.url.rsplit("/", 1)[1]) or "", {"success": False})
    with anyio.fail_after(1):
        assert await slot.wait() == {"success": False}
