//! What guest accounts may call: the one place guest access to endpoints is decided (spec:
//! client-server API, "Guest Access", client behaviour). Default deny: a guest's request to an
//! endpoint that needs an access token and is not listed here is refused with 403
//! `M_GUEST_ACCESS_FORBIDDEN`, before its body is read or its handler runs.
//!
//! The list is the spec's, matched on the request's own path (so `PUT
//! /profile/{userId}/displayname` is allowed while the other profile fields, which share its
//! route, are not), for every version prefix (`r0`, `v3`, `v1`). Choices where the spec leaves
//! room:
//! - `GET/PUT /rooms/{roomId}/state/{eventType}` (the empty state key written without its
//!   slash) is the same endpoint as `…/state/{eventType}/{stateKey}`, so it is allowed too;
//! - `GET /capabilities` is allowed beyond the spec's list: it only describes the server, and
//!   clients read it at start;
//! - endpoints whose access token is optional (`/register`, `/publicRooms`, `GET /profile`,
//!   …) are not checked: a guest could call them by leaving its token out anyway;
//! - everything else is refused as the spec's list has it, including endpoints clients often
//!   call (`POST /join/{roomIdOrAlias}` — guests use `POST /rooms/{roomId}/join` —, filters,
//!   push rules, account data, typing, receipts, `/logout`, `/keys/changes`, key backup).
//!
//! `GET /rooms/{roomId}/initialSync` and `GET /events` are listed for when those endpoints are
//! served. With `[registration] guests = false` a guest's token is refused everywhere.

use http::Method;
use ruma::UserId;

use crate::{error::Error, service::Services};

/// `(method, path after /_matrix/client/{version}/)`; `{}` matches one path segment.
const GUEST_ENDPOINTS: &[(Method, &str)] = &[
    // Retrieving events and associated media.
    (Method::GET, "rooms/{}/state"),
    (Method::GET, "rooms/{}/context/{}"),
    (Method::GET, "rooms/{}/event/{}"),
    (Method::GET, "rooms/{}/state/{}"),
    (Method::GET, "rooms/{}/state/{}/{}"),
    (Method::GET, "rooms/{}/messages"),
    (Method::GET, "rooms/{}/members"),
    (Method::GET, "rooms/{}/initialSync"),
    (Method::GET, "sync"),
    (Method::GET, "events"),
    (Method::GET, "media/download/{}/{}"),
    (Method::GET, "media/download/{}/{}/{}"),
    (Method::GET, "media/thumbnail/{}/{}"),
    // Sending events.
    (Method::POST, "rooms/{}/join"),
    (Method::POST, "rooms/{}/leave"),
    (Method::PUT, "rooms/{}/send/{}/{}"),
    (Method::PUT, "rooms/{}/state/{}"),
    (Method::PUT, "rooms/{}/state/{}/{}"),
    (Method::PUT, "sendToDevice/{}/{}"),
    // Account maintenance.
    (Method::PUT, "profile/{}/displayname"),
    (Method::DELETE, "profile/{}/displayname"),
    (Method::GET, "devices"),
    (Method::GET, "devices/{}"),
    (Method::PUT, "devices/{}"),
    (Method::GET, "account/whoami"),
    // End-to-end encryption.
    (Method::POST, "keys/upload"),
    (Method::POST, "keys/query"),
    (Method::POST, "keys/claim"),
    // Beyond the spec's list (see the module comment).
    (Method::GET, "capabilities"),
];

/// Whether a guest may send `method` to `path` (the request path, without the query).
pub fn allowed(method: &Method, path: &str) -> bool {
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    let Some(rest) = path.strip_prefix("/_matrix/client/") else {
        return false;
    };
    // Skip the version segment.
    let Some((_, rest)) = rest.split_once('/') else {
        return false;
    };
    let segments: Vec<std::borrow::Cow<'_, str>> = rest
        .split('/')
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy())
        .collect();
    GUEST_ENDPOINTS.iter().any(|(m, pattern)| {
        m == method
            && pattern.split('/').count() == segments.len()
            && pattern
                .split('/')
                .zip(&segments)
                .all(|(p, s)| p == "{}" || p == s)
    })
}

/// Refuses a guest's request to an endpoint guests may not use (403
/// `M_GUEST_ACCESS_FORBIDDEN`). Reads the user's record only when the endpoint is not open to
/// guests, so the endpoints guests use most (sync, send) cost nothing extra.
pub fn check(
    services: &Services,
    method: &Method,
    path: &str,
    user_id: &UserId,
) -> Result<(), Error> {
    let enabled = services.config.registration.guests;
    if (enabled && allowed(method, path)) || !services.users.is_guest(user_id)? {
        return Ok(());
    }
    Err(Error::guest_access_forbidden(if enabled {
        "Guest accounts cannot use this endpoint"
    } else {
        "Guest access is not enabled on this server"
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every listed endpoint is one the server serves (a typo in the list would silently
    /// lock guests out).
    #[test]
    fn every_listed_endpoint_is_routed() {
        let router = crate::api::router();
        for (method, pattern) in GUEST_ENDPOINTS {
            let tail = pattern.replace("{}", "x");
            let routed = ["v3", "v1"].iter().any(|version| {
                let path = format!("/_matrix/client/{version}/{tail}");
                assert!(allowed(method, &path), "{method} {path}");
                matches!(
                    router.find(method, &path),
                    crate::http::router::Match::Found(..)
                )
            });
            assert!(routed, "{method} {pattern} is not routed");
        }
    }

    #[test]
    fn matches_the_spec_list_on_concrete_paths() {
        let ok = |m: Method, p: &str| allowed(&m, p);
        assert!(ok(Method::GET, "/_matrix/client/v3/sync"));
        assert!(ok(Method::HEAD, "/_matrix/client/v3/sync"));
        assert!(ok(Method::GET, "/_matrix/client/r0/rooms/!a:b/messages"));
        assert!(ok(
            Method::PUT,
            "/_matrix/client/v3/rooms/!a:b/send/m.room.message/1"
        ));
        assert!(ok(
            Method::PUT,
            "/_matrix/client/v3/rooms/!a:b/state/m.room.topic"
        ));
        assert!(ok(
            Method::PUT,
            "/_matrix/client/v3/profile/@g:x/displayname"
        ));
        assert!(ok(
            Method::PUT,
            "/_matrix/client/v3/profile/@g:x/display%6Eame"
        ));
        assert!(ok(Method::GET, "/_matrix/client/v1/media/download/x/abc"));
        assert!(ok(Method::POST, "/_matrix/client/v3/keys/upload"));

        assert!(!ok(
            Method::PUT,
            "/_matrix/client/v3/profile/@g:x/avatar_url"
        ));
        assert!(!ok(Method::POST, "/_matrix/client/v3/createRoom"));
        assert!(!ok(Method::POST, "/_matrix/client/v3/join/!a:b"));
        assert!(!ok(Method::POST, "/_matrix/client/v3/rooms/!a:b/invite"));
        assert!(!ok(Method::DELETE, "/_matrix/client/v3/devices/ABC"));
        assert!(!ok(Method::POST, "/_matrix/client/v3/pushers/set"));
        assert!(!ok(Method::GET, "/_matrix/client/v3/sync/extra"));
        assert!(!ok(Method::POST, "/_matrix/media/v3/upload"));
        assert!(!ok(Method::GET, "/_matrix/client/v3"));
    }
}
