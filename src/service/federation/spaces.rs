//! Space hierarchies of rooms on other servers: the federation `/hierarchy` request the
//! client `/hierarchy` walk makes for child rooms this server does not know
//! (`rooms::hierarchy::remote`). Each request is short (a small answer, a short time limit):
//! a client is waiting.

use std::time::Duration;

use ruma::{api::federation::space::get_hierarchy, RoomId, ServerName};
use serde_json::Value;

use super::client::FederationClient;
use crate::service::rooms::hierarchy::remote::{RemoteSpace, RemoteSpaces, SpaceFuture};

/// How long one federation `/hierarchy` request may take.
pub const HIERARCHY_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read.
pub const MAX_HIERARCHY_BYTES: usize = 1024 * 1024;

impl RemoteSpaces for FederationClient {
    fn fetch<'a>(
        &'a self,
        server: &'a ServerName,
        room_id: &'a RoomId,
        suggested_only: bool,
    ) -> SpaceFuture<'a> {
        Box::pin(async move {
            let mut request = get_hierarchy::v1::Request::new(room_id.to_owned());
            request.suggested_only = suggested_only;
            let response = match self
                .send_with_limits(server, request, HIERARCHY_TIMEOUT, MAX_HIERARCHY_BYTES)
                .await
            {
                Ok(response) => response,
                Err(e) => {
                    log::debug!("hierarchy of {room_id} from {server}: {e}");
                    return None;
                }
            };
            if response.room.summary.room_id != room_id {
                log::debug!("{server} answered about another room than {room_id}");
                return None;
            }
            let children_state = response
                .room
                .children_state
                .iter()
                .filter_map(|event| serde_json::from_str::<Value>(event.json().get()).ok())
                .collect();
            Some(RemoteSpace {
                summary: response.room.summary,
                children_state,
                children: response.children,
                inaccessible_children: response.inaccessible_children,
            })
        })
    }
}
