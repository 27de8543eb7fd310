//! Guest accounts (spec: client-server API, "Guest Access"): creation and the checks of an
//! upgrade to a full account. What guests may call is decided in one place, the HTTP layer
//! (`http/guests.rs`); which rooms they may join, in the rooms service
//! (`rooms/build/guests.rs`).
//!
//! A guest account is a `users` record with `guest: true` and no password, so nobody can log
//! in to it: its access tokens are the only way in. Its user id has a random numeric localpart
//! drawn until one is free; `users` records are never removed, so an id is never handed out
//! twice, across restarts included.

use std::net::IpAddr;

use rand::RngExt;
use ruma::{OwnedDeviceId, OwnedUserId, UserId};

use super::{
    sessions::{random_device_id, IssuedTokens},
    users::UserRecord,
    Services,
};
use crate::{
    error::{Error, Result},
    store::{Batch, CommitError},
};

/// A new guest account and its first device.
pub struct NewGuest {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub tokens: IssuedTokens,
}

/// A guest account about to be upgraded, as it was when checked.
pub struct GuestToUpgrade {
    pub user_id: OwnedUserId,
    pub record: UserRecord,
}

/// Localparts of guest accounts: 12 decimal digits (a numeric localpart, as is usual for
/// guests; drawn again if taken).
fn random_guest_localpart() -> String {
    format!("{:012}", rand::rng().random_range(0..1_000_000_000_000u64))
}

impl Services {
    /// Creates a guest account with a device chosen here and an access token (spec: every
    /// request parameter except `initial_device_display_name` is ignored for guests). 403
    /// `M_GUEST_ACCESS_FORBIDDEN` when guest access is off.
    pub async fn register_guest(
        &self,
        device_display_name: Option<String>,
        client: IpAddr,
    ) -> Result<NewGuest> {
        if !self.config.registration.guests {
            return Err(Error::guest_access_forbidden(
                "Guest access is not enabled on this server",
            ));
        }
        // A conflict means the drawn id exists already: draw again.
        for _ in 0..8 {
            let localpart = random_guest_localpart();
            let user_id = UserId::parse(format!("@{localpart}:{}", self.config.server_name))
                .map_err(|_| Error::unknown("cannot form a guest user id"))?;
            let device_id = random_device_id();
            let mut batch = Batch::new();
            self.users
                .stage_create(&mut batch, &user_id, None, true, false);
            self.profiles
                .stage_set_displayname(&mut batch, &user_id, Some(localpart));
            let tokens = self.sessions.stage_login(
                &mut batch,
                &user_id,
                &device_id,
                device_display_name.clone(),
                false,
                client,
            )?;
            match self
                .sessions
                .commit_login(batch, &user_id, Some(&tokens))
                .await?
            {
                Ok(()) => {
                    log::info!("registered guest {user_id}");
                    return Ok(NewGuest {
                        user_id,
                        device_id,
                        tokens,
                    });
                }
                Err(CommitError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommitError::Conflict.into())
    }

    /// Checks a `guest_access_token` given to `/register` to upgrade a guest: the token must
    /// be valid (401 `M_UNKNOWN_TOKEN`), its account a guest (403 `M_FORBIDDEN`), and
    /// `username` given (400 `M_MISSING_PARAM`) and equal to the guest's localpart (400
    /// `M_INVALID_PARAM`): the upgrade keeps the user id. Works whether guest access is on or
    /// off, so guests can leave that status after it was switched off.
    pub async fn guest_to_upgrade(
        &self,
        guest_access_token: &str,
        username: Option<&str>,
        client: IpAddr,
    ) -> Result<GuestToUpgrade> {
        let authed = self
            .sessions
            .authenticate(guest_access_token, client, None)
            .await?;
        let record = self
            .users
            .get(&authed.user_id)?
            .filter(|r| r.guest && !r.deactivated)
            .ok_or_else(|| Error::forbidden("guest_access_token is not a guest's access token"))?;
        let username =
            username.ok_or_else(|| Error::missing_param("A guest upgrade needs username"))?;
        if username.to_lowercase() != authed.user_id.localpart() {
            return Err(Error::invalid_param(format!(
                "A guest upgrade keeps the user id: username must be {}",
                authed.user_id.localpart()
            )));
        }
        Ok(GuestToUpgrade {
            user_id: authed.user_id,
            record,
        })
    }
}
