"""End-to-end encryption interop: matrix-nio (vodozemac crypto) clients against Hearth.

Usage: python nio_e2ee.py BASE_URL WORKDIR
Two users, each with their own device, share an encrypted room and decrypt each other's
messages; a device the second user adds later receives the room key and decrypts a new one.
Exits non-zero with a message on any failure. Every wait is bounded.
"""

import asyncio
import os
import sys
import time

from nio import (
    AsyncClient,
    AsyncClientConfig,
    DevicesResponse,
    LoginResponse,
    MegolmEvent,
    RegisterResponse,
    RoomMessageText,
    RoomCreateResponse,
    JoinResponse,
    SyncResponse,
)
from nio.api import RoomPreset

BASE, WORK = sys.argv[1], sys.argv[2]
CONFIG = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)


def fail(message):
    print(f"FAIL: {message}", flush=True)
    sys.exit(1)


async def device(user, password, name, register=False):
    """A logged-in, key-uploading client for `user` with its own crypto store."""
    store = os.path.join(WORK, name)
    os.makedirs(store, exist_ok=True)
    if register:
        setup = AsyncClient(BASE, user)
        response = await setup.register(user, password)
        await setup.close()
        if not isinstance(response, RegisterResponse):
            fail(f"register {user}: {response}")
    client = AsyncClient(BASE, f"@{user}:localhost", store_path=store, config=CONFIG)
    response = await client.login(password, device_name=name)
    if not isinstance(response, LoginResponse):
        fail(f"login {user}/{name}: {response}")
    await sync(client, full_state=True)
    if client.should_upload_keys:
        await client.keys_upload()
    return client


async def sync(client, full_state=False):
    response = await client.sync(timeout=2000, full_state=full_state)
    if not isinstance(response, SyncResponse):
        fail(f"sync {client.user_id}: {response}")
    if client.should_upload_keys:
        await client.keys_upload()
    if client.should_query_keys:
        await client.keys_query()
    if client.should_claim_keys:
        await client.keys_claim(client.get_users_for_key_claiming())
    await client.send_to_device_messages()
    return response


async def wait_for_text(client, room_id, text, seconds=30):
    """Syncs until a decrypted message with `text` arrives in `room_id`."""
    deadline = time.monotonic() + seconds
    undecrypted = 0
    while time.monotonic() < deadline:
        response = await sync(client)
        room = response.rooms.join.get(room_id)
        for event in room.timeline.events if room else []:
            if isinstance(event, RoomMessageText) and event.body == text:
                if not event.decrypted:
                    fail(f"{client.user_id} got {text!r} unencrypted")
                return
            if isinstance(event, MegolmEvent):
                undecrypted += 1
    fail(f"{client.user_id}/{client.device_id} never decrypted {text!r} ({undecrypted} undecryptable events seen)")


async def send(client, room_id, text):
    await sync(client)
    response = await client.room_send(
        room_id, "m.room.message", {"msgtype": "m.text", "body": text}, ignore_unverified_devices=True
    )
    if not getattr(response, "event_id", None):
        fail(f"send {text!r}: {response}")


async def main():
    alice = await device("alice", "alice-password", "alice-laptop", register=True)
    bob = await device("bob", "bob-password", "bob-phone", register=True)

    created = await alice.room_create(
        preset=RoomPreset.private_chat,
        invite=["@bob:localhost"],
        initial_state=[{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
    )
    if not isinstance(created, RoomCreateResponse):
        fail(f"create room: {created}")
    room_id = created.room_id
    await sync(bob)
    joined = await bob.join(room_id)
    if not isinstance(joined, JoinResponse):
        fail(f"bob join: {joined}")
    await sync(bob)

    await send(alice, room_id, "hello bob, this is encrypted")
    await wait_for_text(bob, room_id, "hello bob, this is encrypted")
    print("bob decrypted alice's message", flush=True)

    await send(bob, room_id, "hi alice, decrypted fine")
    await wait_for_text(alice, room_id, "hi alice, decrypted fine")
    print("alice decrypted bob's message", flush=True)

    # A device added later gets the keys for messages sent after it appeared.
    bob_tablet = await device("bob", "bob-password", "bob-tablet")
    await sync(alice)
    await send(alice, room_id, "message for all of bob's devices")
    await wait_for_text(bob_tablet, room_id, "message for all of bob's devices")
    await wait_for_text(bob, room_id, "message for all of bob's devices")
    print("bob's new device decrypted a message sent after it joined", flush=True)

    # matrix-nio validates the device list strictly; include a device logged in without a name.
    plain = AsyncClient(BASE, "@bob:localhost")
    response = await plain.login("bob-password")
    if not isinstance(response, LoginResponse):
        fail(f"login without a device name: {response}")
    devices = await plain.devices()
    if not isinstance(devices, DevicesResponse):
        fail(f"bob's device list: {devices}")
    ids = {d.id for d in devices.devices}
    if not {plain.device_id, bob.device_id, bob_tablet.device_id} <= ids:
        fail(f"bob's device list lacks a device: {ids}")
    if any(d.last_seen_ip is None or d.last_seen_date is None for d in devices.devices):
        fail(f"bob's devices without last-seen data: {devices.devices}")
    await plain.close()
    print("matrix-nio accepted bob's device list", flush=True)

    for client in (alice, bob, bob_tablet):
        await client.close()
    print("OK", flush=True)


asyncio.run(asyncio.wait_for(main(), timeout=240))
