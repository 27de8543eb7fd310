//! Profiles: `GET /profile/{userId}` and `GET/PUT/DELETE /profile/{userId}/{keyName}`.
//!
//! `displayname` and `avatar_url` can be set; other keys are answered as the spec's
//! profile.yaml allows: a key outside the key grammar is 400 `M_INVALID_PARAM` (or
//! `M_KEY_TOO_LARGE` beyond 255 bytes), a well-formed key this server does not let users set
//! is 403 `M_FORBIDDEN`, and reading any unset key is 404 `M_NOT_FOUND`. Profiles of users on
//! other servers are 404 until federation queries exist.
//!
//! A change of `displayname` or `avatar_url` is announced in every joined room as a new
//! `m.room.member` event ([`crate::service::profiles::Profiles::update_member_events`]).
//!
//! Like Synapse (and unlike the letter of the spec, which points clients at `DELETE`), an
//! empty string clears `displayname` or `avatar_url`: clients still remove avatars that way.

use std::sync::Arc;

use http::StatusCode;
use ruma::{
    api::client::profile::{
        delete_profile_field, get_profile, get_profile_field, set_profile_field, ProfileFieldName,
        ProfileFieldValue,
    },
    UserId,
};

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::{
        profiles::{AVATAR_URL, DISPLAYNAME},
        Services,
    },
};

pub fn routes(router: &mut Router) {
    router.ruma(get_profile);
    router.ruma(get_field);
    router.ruma(set_field);
    router.ruma(delete_field);
}

/// Longest profile key, in bytes (spec: `M_KEY_TOO_LARGE`).
const MAX_KEY_BYTES: usize = 255;

/// Whether `key` matches the spec's key grammar:
/// `avatar_url|displayname|m\.tz|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+`.
fn valid_key(key: &str) -> bool {
    if matches!(key, "avatar_url" | "displayname" | "m.tz") {
        return true;
    }
    let mut parts = 0;
    for part in key.split('.') {
        let mut bytes = part.bytes();
        let starts_with_letter = bytes.next().is_some_and(|b| b.is_ascii_lowercase());
        if !starts_with_letter
            || !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return false;
        }
        parts += 1;
    }
    parts >= 2
}

/// 400 for keys the spec does not allow at all.
fn check_key(key: &str) -> Result<()> {
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            "M_KEY_TOO_LARGE",
            format!("Profile keys are at most {MAX_KEY_BYTES} bytes"),
        ));
    }
    if !valid_key(key) {
        return Err(Error::invalid_param("Invalid profile key"));
    }
    Ok(())
}

fn is_remote(services: &Services, user_id: &UserId) -> bool {
    !services.queries.is_local(user_id.server_name())
}

/// A local user whose profile is read must exist.
fn check_readable(services: &Services, user_id: &UserId) -> Result<()> {
    if !services.users.exists(user_id)? {
        return Err(Error::not_found("Profile not found"));
    }
    Ok(())
}

/// Only the user may change their own profile.
fn check_writable(ctx: &Ctx, user_id: &UserId) -> Result<()> {
    if ctx.authed()?.user_id != user_id {
        return Err(Error::forbidden(
            "Cannot change the profile of another user",
        ));
    }
    Ok(())
}

async fn get_profile(
    services: Arc<Services>,
    _: Ctx,
    body: get_profile::v3::Request,
) -> Result<get_profile::v3::Response> {
    if is_remote(&services, &body.user_id) {
        let profile = services.queries.profile(&body.user_id, None).await?;
        return Ok(profile.into_iter().collect());
    }
    check_readable(&services, &body.user_id)?;
    Ok(services
        .profiles
        .profile(&body.user_id)?
        .into_iter()
        .collect())
}

async fn get_field(
    services: Arc<Services>,
    _: Ctx,
    body: get_profile_field::v3::Request,
) -> Result<get_profile_field::v3::Response> {
    if is_remote(&services, &body.user_id) {
        return remote_field(&services, &body).await;
    }
    check_readable(&services, &body.user_id)?;
    let field = body.field.as_str();
    let value = services
        .profiles
        .field(&body.user_id, field)?
        .ok_or_else(|| Error::not_found(format!("The profile has no {field}")))?;
    let value = ProfileFieldValue::new(field, value).map_err(|e| {
        log::error!(
            "stored profile field {field} of {} has the wrong type: {e}",
            body.user_id
        );
        Error::unknown("Internal storage error")
    })?;
    Ok(get_profile_field::v3::Response::new(value))
}

/// One field of a remote user's profile; a value of the wrong type is the remote server's
/// fault (502).
async fn remote_field(
    services: &Services,
    body: &get_profile_field::v3::Request,
) -> Result<get_profile_field::v3::Response> {
    let field = body.field.as_str();
    let value = services
        .queries
        .profile(&body.user_id, Some(body.field.clone()))
        .await?
        .remove(field)
        .ok_or_else(|| Error::not_found(format!("The profile has no {field}")))?;
    let value = ProfileFieldValue::new(field, value).map_err(|_| {
        Error::new(
            StatusCode::BAD_GATEWAY,
            "M_UNKNOWN",
            format!(
                "{} sent a {field} of the wrong type",
                body.user_id.server_name()
            ),
        )
    })?;
    Ok(get_profile_field::v3::Response::new(value))
}

async fn set_field(
    services: Arc<Services>,
    ctx: Ctx,
    body: set_profile_field::v3::Request,
) -> Result<set_profile_field::v3::Response> {
    check_writable(&ctx, &body.user_id)?;
    let profiles = &services.profiles;
    match body.value {
        ProfileFieldValue::DisplayName(name) => {
            let name = Some(name).filter(|n| !n.is_empty());
            profiles.set_displayname(&body.user_id, name).await?;
        }
        ProfileFieldValue::AvatarUrl(url) => {
            let url = Some(url).filter(|u| !u.as_str().is_empty());
            profiles
                .set_avatar_url(&body.user_id, url.as_deref())
                .await?;
        }
        other => {
            check_key(other.field_name().as_str())?;
            return Err(Error::forbidden(format!(
                "Only {DISPLAYNAME} and {AVATAR_URL} can be set on this server"
            )));
        }
    }
    announce(&services, &body.user_id).await;
    Ok(set_profile_field::v3::Response::new())
}

async fn delete_field(
    services: Arc<Services>,
    ctx: Ctx,
    body: delete_profile_field::v3::Request,
) -> Result<delete_profile_field::v3::Response> {
    check_writable(&ctx, &body.user_id)?;
    match body.field {
        ProfileFieldName::DisplayName => {
            services
                .profiles
                .set_displayname(&body.user_id, None)
                .await?
        }
        ProfileFieldName::AvatarUrl => {
            services
                .profiles
                .set_avatar_url(&body.user_id, None)
                .await?
        }
        // Nothing else can be set, so a well-formed key is already absent.
        other => {
            check_key(other.as_str())?;
            return Ok(delete_profile_field::v3::Response::new());
        }
    }
    announce(&services, &body.user_id).await;
    Ok(delete_profile_field::v3::Response::new())
}

/// Sends the changed profile into the user's joined rooms. The change itself is already
/// stored and stays; a failure to announce it is logged, not answered.
async fn announce(services: &Services, user_id: &UserId) {
    if let Err(e) = services
        .profiles
        .update_member_events(&services.rooms, user_id)
        .await
    {
        log::warn!("cannot announce the profile change of {user_id}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::valid_key;

    #[test]
    fn key_grammar() {
        for ok in [
            "displayname",
            "avatar_url",
            "m.tz",
            "org.example.field",
            "a.b",
            "x1_.y2",
        ] {
            assert!(valid_key(ok), "{ok}");
        }
        for bad in [
            "", "foo", "Foo.bar", "org..x", ".org.x", "org.x.", "1a.b", "a.B", "a.b-c", "m.tz2.é",
        ] {
            assert!(!valid_key(bad), "{bad}");
        }
    }
}
