//! One user on the SDK the way Element X runs it: a `Client` that discovers simplified sliding
//! sync from `/versions`, a password login, a `SyncService` (room list sliding sync plus the
//! encryption sync) and the `RoomListService`'s room list kept up to date from its stream.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{StreamExt, pin_mut};
use matrix_sdk::{
    Client, Room, RoomState,
    latest_events::LatestEventValue,
    ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId},
    sliding_sync::VersionBuilder,
};
use matrix_sdk_ui::{
    Timeline,
    eyeball_im::Vector,
    room_list_service::{RoomListItem, filters::new_filter_non_left},
    sync_service::{self, SyncService},
};
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::wait::{until, within};

/// A logged-in SDK user with its sync running.
pub struct SdkUser {
    pub client: Client,
    pub sync: SyncService,
    /// The room list as the `RoomListService` shows it (non-left rooms, sorted by recency).
    rooms: Arc<Mutex<Vector<RoomListItem>>>,
    list_task: JoinHandle<Result<()>>,
}

impl SdkUser {
    /// Logs `name` in with `password` on a fresh client (in-memory stores: a new device) and
    /// starts its `SyncService`.
    pub async fn login(base: &str, name: &str, password: &str) -> Result<Self> {
        let client = within("building the client", async {
            Client::builder()
                .homeserver_url(base)
                // As Element X does: use simplified sliding sync only if /versions offers it.
                .sliding_sync_version_builder(VersionBuilder::DiscoverNative)
                .build()
                .await
                .context(
                    "building the client (does /versions advertise org.matrix.simplified_msc3575?)",
                )
        })
        .await?;
        within("password login", async {
            client
                .matrix_auth()
                .login_username(name, password)
                .initial_device_display_name("hearth sdk client")
                .await
                .with_context(|| format!("password login of {name}"))
        })
        .await?;
        let sync = within("building the sync service", async {
            SyncService::builder(client.clone())
                .build()
                .await
                .context("building the SyncService")
        })
        .await?;
        within("starting the sync service", async {
            sync.start().await;
            Ok(())
        })
        .await?;

        let rooms = Arc::new(Mutex::new(Vector::new()));
        let service = sync.room_list_service();
        let shown = rooms.clone();
        let list_task = tokio::spawn(async move {
            let list = service
                .all_rooms()
                .await
                .context("RoomListService::all_rooms")?;
            let (entries, controller) = list.entries_with_dynamic_adapters(200);
            if !controller.set_filter(Box::new(new_filter_non_left())) {
                bail!("the room list stream is gone before its filter was set");
            }
            pin_mut!(entries);
            while let Some(diffs) = entries.next().await {
                let mut shown = shown.lock().unwrap();
                for diff in diffs {
                    diff.apply(&mut shown);
                }
            }
            Ok(())
        });
        Ok(Self {
            client,
            sync,
            rooms,
            list_task,
        })
    }

    pub fn user_id(&self) -> Result<OwnedUserId> {
        self.client
            .user_id()
            .map(ToOwned::to_owned)
            .context("no user id after login")
    }

    pub fn device_id(&self) -> Result<OwnedDeviceId> {
        self.client
            .device_id()
            .map(ToOwned::to_owned)
            .context("no device id after login")
    }

    /// Fails if the sync service or the room list stream has stopped on an error.
    pub fn healthy(&self) -> Result<()> {
        match self.sync.state().get() {
            sync_service::State::Error(error) => bail!("the SyncService failed: {error}"),
            sync_service::State::Terminated => bail!("the SyncService terminated"),
            sync_service::State::Offline => bail!("the SyncService went offline"),
            sync_service::State::Idle | sync_service::State::Running => {}
        }
        if self.list_task.is_finished() {
            bail!("the room list stream ended");
        }
        Ok(())
    }

    /// The room list entry for `room_id`, if the room list shows it now.
    pub fn listed(&self, room_id: &RoomId) -> Option<Room> {
        let shown = self.rooms.lock().unwrap();
        shown
            .iter()
            .find(|item| item.room_id() == room_id)
            .map(|item| (**item).clone())
    }

    /// The room ids in the order the room list shows them.
    pub fn order(&self) -> Vec<OwnedRoomId> {
        let shown = self.rooms.lock().unwrap();
        shown.iter().map(|item| item.room_id().to_owned()).collect()
    }

    /// Waits until the room list's order satisfies `check` (the list re-sorts a moment after
    /// a room's data changes).
    pub async fn until_order(
        &self,
        what: &str,
        check: impl Fn(&[OwnedRoomId]) -> bool,
    ) -> Result<()> {
        until(what, async || {
            self.healthy()?;
            Ok(check(&self.order()).then_some(()))
        })
        .await
        .map_err(|error| anyhow!("{error:#}\n{}", self.describe_list()))
    }

    /// Waits until the room list shows `room_id` and `check` accepts it.
    pub async fn until_listed(
        &self,
        what: &str,
        room_id: &RoomId,
        check: impl Fn(&Room) -> bool,
    ) -> Result<Room> {
        until(what, async || {
            self.healthy()?;
            Ok(self.listed(room_id).filter(|room| check(room)))
        })
        .await
        .map_err(|error| anyhow!("{error:#}\n{}", self.describe_list()))
    }

    /// The room list as text, for failure messages.
    pub fn describe_list(&self) -> String {
        let shown = self.rooms.lock().unwrap();
        let mut out = format!(
            "room list of {:?} ({} rooms):",
            self.client.user_id(),
            shown.len()
        );
        for item in shown.iter() {
            out.push_str(&format!(
                "\n  {} {:?} name={:?} latest={:?}",
                item.room_id(),
                item.state(),
                display_name(item),
                latest_body(item),
            ));
        }
        out
    }

    /// Stops the sync (bounded).
    pub async fn stop(self) -> Result<()> {
        within("stopping the sync service", async {
            self.sync.stop().await;
            Ok(())
        })
        .await?;
        self.list_task.abort();
        Ok(())
    }
}

/// The name the room list would show, as the SDK computed it from the sync.
pub fn display_name(room: &Room) -> Option<String> {
    room.cached_display_name().map(|name| name.to_string())
}

/// The body of the room's latest event as the room list would preview it (remote events only).
pub fn latest_body(room: &Room) -> Option<String> {
    match room.latest_event() {
        LatestEventValue::Remote(event) => {
            let content = event.raw().get_field::<Value>("content").ok().flatten()?;
            content["body"].as_str().map(ToOwned::to_owned)
        }
        _ => None,
    }
}

/// Whether the room is in `state` (joined, invited, ...).
pub fn is(room: &Room, state: RoomState) -> bool {
    room.state() == state
}

/// The message bodies the timeline shows, oldest first, with their senders and whether they
/// arrived encrypted (and were decrypted). Undecryptable events show as `None` bodies.
pub async fn messages(timeline: &Timeline) -> Vec<(String, Option<String>, bool)> {
    timeline
        .items()
        .await
        .iter()
        .filter_map(|item| item.as_event())
        .filter_map(|event| {
            let content = event.content();
            let body = if let Some(message) = content.as_message() {
                Some(message.body().to_owned())
            } else if content.is_unable_to_decrypt() {
                None
            } else {
                return None;
            };
            Some((
                event.sender().to_string(),
                body,
                event.encryption_info().is_some(),
            ))
        })
        .collect()
}
