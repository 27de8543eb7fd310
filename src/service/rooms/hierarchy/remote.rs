//! Remote rooms in the space hierarchy (spec: client-server API, spaces, "Server behaviour";
//! server-server API, "Spaces").
//!
//! - Asking: a child room unknown here is described by the federation `/hierarchy` of a server
//!   from its `via` list ([`RemoteSpaces`], implemented over the federation client in
//!   `service::federation::spaces`). One walk makes at most [`MAX_REMOTE_REQUESTS`] requests;
//!   an answer's `children` describe grandchildren without another request, and its
//!   `inaccessible_children` are not asked about again. Nothing is cached between requests.
//!   What a user is shown of a remote room is decided from its summary by the local rule
//!   ([`Rooms::can_peek_summary`]).
//! - Answering: [`Rooms::hierarchy_for_server`] describes a local space and those of its
//!   children this server knows, as far as the asking server "could feasibly peek/join"
//!   them ([`Rooms::server_can_peek`]); children it cannot are listed as inaccessible, children
//!   unknown here are left out.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    pin::Pin,
};

use ruma::{
    events::room::member::MembershipState,
    room::{JoinRule, JoinRuleSummary, RoomSummary},
    OwnedRoomId, OwnedServerName, RoomId, ServerName, UserId,
};
use serde_json::Value;

use super::{HierarchyRoom, MAX_WALK};
use crate::{
    error::{Error, Result},
    service::{
        federation::acl,
        rooms::{RoomRecord, Rooms},
    },
};

/// The most federation `/hierarchy` requests one client `/hierarchy` request makes.
pub const MAX_REMOTE_REQUESTS: usize = 4;

/// A remote room as a federation `/hierarchy` answer describes it.
#[derive(Debug, Clone)]
pub struct RemoteSpace {
    pub summary: RoomSummary,
    /// Its `m.space.child` events, stripped, with `origin_server_ts` (empty when the room is
    /// not a space, or when it is known only as another space's child).
    pub children_state: Vec<Value>,
    /// Summaries of its children the answering server could describe.
    pub children: Vec<RoomSummary>,
    /// Children the answering server says this server cannot peek or join.
    pub inaccessible_children: Vec<OwnedRoomId>,
}

/// A future of [`RemoteSpaces::fetch`].
pub type SpaceFuture<'a> = Pin<Box<dyn Future<Output = Option<RemoteSpace>> + Send + 'a>>;

/// Where the hierarchy walk learns about rooms this server does not know.
pub trait RemoteSpaces: Send + Sync {
    /// `server`'s description of `room_id` (federation `/hierarchy`), `None` on any failure
    /// or an answer about another room.
    fn fetch<'a>(
        &'a self,
        server: &'a ServerName,
        room_id: &'a RoomId,
        suggested_only: bool,
    ) -> SpaceFuture<'a>;
}

/// No other server is asked: the walk sees the rooms this server knows.
pub struct LocalOnly;

impl RemoteSpaces for LocalOnly {
    fn fetch<'a>(&'a self, _: &'a ServerName, _: &'a RoomId, _: bool) -> SpaceFuture<'a> {
        Box::pin(async { None })
    }
}

/// What one walk learned from other servers, and its request budget.
pub(super) struct Remotes<'a> {
    remote: &'a dyn RemoteSpaces,
    own_name: OwnedServerName,
    suggested_only: bool,
    requests_left: usize,
    /// Rooms described by an answer: `true` when asked about themselves (their
    /// `children_state` is known), `false` when listed as another room's child.
    described: HashMap<OwnedRoomId, (RemoteSpace, bool)>,
    inaccessible: HashSet<OwnedRoomId>,
}

impl<'a> Remotes<'a> {
    pub(super) fn new(
        remote: &'a dyn RemoteSpaces,
        own_name: OwnedServerName,
        suggested_only: bool,
    ) -> Self {
        Self {
            remote,
            own_name,
            suggested_only,
            requests_left: MAX_REMOTE_REQUESTS,
            described: HashMap::new(),
            inaccessible: HashSet::new(),
        }
    }

    /// The description of the remote room `room_id`: asked of its `via` servers in order
    /// while the budget lasts, else what an earlier answer said of it as a child.
    pub(super) async fn describe(
        &mut self,
        room_id: &RoomId,
        via: &[OwnedServerName],
    ) -> Option<RemoteSpace> {
        if self.inaccessible.contains(room_id) {
            return None;
        }
        if let Some((space, true)) = self.described.get(room_id) {
            return Some(space.clone());
        }
        for server in via {
            if self.requests_left == 0 {
                break;
            }
            if *server == self.own_name {
                continue;
            }
            self.requests_left -= 1;
            let Some(space) = self
                .remote
                .fetch(server, room_id, self.suggested_only)
                .await
            else {
                continue;
            };
            for child in &space.children {
                self.described
                    .entry(child.room_id.clone())
                    .or_insert_with(|| {
                        let known = RemoteSpace {
                            summary: child.clone(),
                            children_state: Vec::new(),
                            children: Vec::new(),
                            inaccessible_children: Vec::new(),
                        };
                        (known, false)
                    });
            }
            self.inaccessible
                .extend(space.inaccessible_children.iter().cloned());
            self.described
                .insert(room_id.to_owned(), (space.clone(), true));
            return Some(space);
        }
        self.described.get(room_id).map(|(space, _)| space.clone())
    }
}

/// What this server answers to a federation `/hierarchy` request.
#[derive(Debug, Clone)]
pub struct ServerHierarchy {
    pub room: HierarchyRoom,
    pub children: Vec<RoomSummary>,
    pub inaccessible_children: Vec<OwnedRoomId>,
}

impl Rooms {
    /// Whether `user_id` may see a remote room described by `summary`: the local rule
    /// ([`Rooms::can_peek`]) on what the summary says — joined or invited here, else a public,
    /// knockable or world-readable room, or a restricted one whose allowed rooms include one
    /// the user is joined to; never when banned.
    pub fn can_peek_summary(&self, user_id: &UserId, summary: &RoomSummary) -> Result<bool> {
        match self.membership(&summary.room_id, user_id)? {
            Some(MembershipState::Join | MembershipState::Invite) => return Ok(true),
            Some(MembershipState::Ban) => return Ok(false),
            _ => {}
        }
        if summary.world_readable {
            return Ok(true);
        }
        Ok(match &summary.join_rule {
            JoinRuleSummary::Public
            | JoinRuleSummary::Knock
            | JoinRuleSummary::KnockRestricted(_) => true,
            JoinRuleSummary::Restricted(restricted) => {
                let mut joined = false;
                for room in &restricted.allowed_room_ids {
                    if self.membership(room, user_id)? == Some(MembershipState::Join) {
                        joined = true;
                        break;
                    }
                }
                joined
            }
            _ => false,
        })
    }

    /// Whether the server `origin` "could feasibly peek/join" the local room: its ACL allows
    /// `origin`, and a user of `origin` is joined or invited, or anyone could peek it
    /// ([`Rooms::can_peek`] without a user), or it is restricted (the asking server judges its
    /// users against `allowed_room_ids`).
    pub fn server_can_peek(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        record: &RoomRecord,
    ) -> Result<bool> {
        if !acl::allows(self, room_id, origin)? {
            return Ok(false);
        }
        let member = self
            .members(record.sid)?
            .into_iter()
            .any(|(user, membership)| {
                (membership == "join" || membership == "invite")
                    && UserId::parse(user).is_ok_and(|u| u.server_name() == origin)
            });
        if member || self.can_peek(None, room_id, record)? {
            return Ok(true);
        }
        let restricted_ok = self
            .room_version(record)?
            .rules()
            .is_some_and(|r| r.authorization.restricted_join_rule);
        Ok(restricted_ok && matches!(self.join_rule(record.sid)?, JoinRule::Restricted(_)))
    }

    /// The federation `/hierarchy` answer for the local room `room_id`: 404 when it is unknown
    /// here or `origin` could not peek or join it.
    pub fn hierarchy_for_server(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        suggested_only: bool,
    ) -> Result<ServerHierarchy> {
        let not_found = || Error::not_found("Room does not exist");
        let record = self.room(room_id)?.ok_or_else(not_found)?;
        if !self.server_can_peek(origin, room_id, &record)? {
            return Err(not_found());
        }
        let is_space = self.room_type(record.sid)? == Some(ruma::room::RoomType::Space);
        let (links, children_state) = if is_space {
            self.space_children(record.sid, suggested_only)?
        } else {
            (Vec::new(), Vec::new())
        };
        let mut children = Vec::new();
        let mut inaccessible_children = Vec::new();
        for link in links.into_iter().take(MAX_WALK) {
            let Some(child) = self.room(&link.room_id)? else {
                continue;
            };
            if self.server_can_peek(origin, &link.room_id, &child)? {
                children.push(self.summary(&link.room_id, &child)?);
            } else {
                inaccessible_children.push(link.room_id);
            }
        }
        Ok(ServerHierarchy {
            room: HierarchyRoom {
                summary: self.summary(room_id, &record)?,
                children_state,
            },
            children,
            inaccessible_children,
        })
    }
}
