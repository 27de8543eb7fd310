"""End-to-end encryption across servers: matrix-nio (vodozemac crypto) clients, one user on
Hearth and one on Synapse, in encrypted rooms of each server.

Usage: python nio_e2ee.py HEARTH_BASE HEARTH_NAME SYNAPSE_BASE SYNAPSE_NAME WORKDIR SUFFIX
(SUFFIX keeps the user names apart on the Synapse the tests share). For each server in turn,
its user creates an encrypted room and invites the other, who joins over federation; each
decrypts the other's message (device keys queried and one-time keys claimed over federation,
room keys sent as to-device messages over federation). Exits non-zero with a message on any
failure. Every wait is bounded.
"""

import asyncio
import os
import sys
import time

from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    LoginResponse,
    MegolmEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomInviteResponse,
    RoomMessageText,
    SyncResponse,
)
from nio.api import RoomPreset

HEARTH_BASE, HEARTH_NAME, SYNAPSE_BASE, SYNAPSE_NAME, WORK, SUFFIX = sys.argv[1:7]
CONFIG = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
ENCRYPTION = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}


def fail(message):
    print(f"FAIL: {message}", flush=True)
    sys.exit(1)


async def device(base, server_name, user, password):
    """A registered, logged-in, key-uploading client with its own crypto store."""
    store = os.path.join(WORK, user)
    os.makedirs(store, exist_ok=True)
    setup = AsyncClient(base, user)
    response = await setup.register(user, password)
    await setup.close()
    if not isinstance(response, RegisterResponse):
        fail(f"register {user} on {base}: {response}")
    client = AsyncClient(base, f"@{user}:{server_name}", store_path=store, config=CONFIG)
    response = await client.login(password, device_name=f"{user}-device")
    if not isinstance(response, LoginResponse):
        fail(f"login {user}: {response}")
    await sync(client, full_state=True)
    return client


async def sync(client, full_state=False):
    response = await client.sync(timeout=1000, full_state=full_state)
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


async def wait_until(what, check, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    fail(f"timed out: {what}")


async def wait_for_text(client, room_id, text, seconds=45):
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
    fail(f"{client.user_id} never decrypted {text!r} ({undecrypted} undecryptable events seen)")


async def send(client, room_id, text):
    await sync(client)
    response = await client.room_send(
        room_id, "m.room.message", {"msgtype": "m.text", "body": text}, ignore_unverified_devices=True
    )
    if not getattr(response, "event_id", None):
        fail(f"send {text!r} as {client.user_id}: {response}")


async def encrypted_room(host, guest, label):
    """`host` creates an encrypted room and invites `guest` (of the other server), who joins;
    each then decrypts a message of the other."""
    # The invite is sent after the creation: Hearth's createRoom does not take users of
    # other servers in `invite` yet.
    created = await host.room_create(preset=RoomPreset.private_chat, initial_state=[ENCRYPTION])
    if not isinstance(created, RoomCreateResponse):
        fail(f"{label}: create room: {created}")
    room_id = created.room_id
    invited = await host.room_invite(room_id, guest.user_id)
    if not isinstance(invited, RoomInviteResponse):
        fail(f"{label}: inviting {guest.user_id}: {invited}")

    async def invited():
        response = await sync(guest)
        return room_id in response.rooms.invite

    await wait_until(f"{label}: the invite reaching {guest.user_id}", invited)
    joined = await guest.join(room_id)
    if not isinstance(joined, JoinResponse):
        fail(f"{label}: {guest.user_id} joining: {joined}")

    async def host_sees_join():
        await sync(host)
        room = host.rooms.get(room_id)
        return room is not None and guest.user_id in room.users

    await wait_until(f"{label}: {host.user_id} seeing the join", host_sees_join)
    await sync(guest)

    text = f"{label}: hello {guest.user_id}, this is encrypted"
    await send(host, room_id, text)
    await wait_for_text(guest, room_id, text)
    print(f"{label}: {guest.user_id} decrypted {host.user_id}'s message", flush=True)
    text = f"{label}: hi {host.user_id}, decrypted fine"
    await send(guest, room_id, text)
    await wait_for_text(host, room_id, text)
    print(f"{label}: {host.user_id} decrypted {guest.user_id}'s message", flush=True)


async def main():
    alice = await device(HEARTH_BASE, HEARTH_NAME, f"nioalice{SUFFIX}", "alice-password")
    bob = await device(SYNAPSE_BASE, SYNAPSE_NAME, f"niobob{SUFFIX}", "bob-password")
    await encrypted_room(alice, bob, "room on Hearth")
    await encrypted_room(bob, alice, "room on Synapse")
    for client in (alice, bob):
        await client.close()
    print("OK", flush=True)


asyncio.run(asyncio.wait_for(main(), timeout=240))
