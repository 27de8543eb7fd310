//! Account moderation (spec: Account moderation): locking and suspending local accounts, and
//! who may do it (server admins, never on themselves or on another admin).
//!
//! A locked account gets `401 M_USER_LOCKED` (soft logout) on everything but logout; a
//! suspended one gets `403 M_USER_SUSPENDED` on the actions that change what others see
//! (sending, joining, inviting, profile changes, uploads) while it can still read. Both are
//! enforced where requests are authenticated (`http::route`), from [`Moderation::status`].

use ruma::{ServerName, UserId};
use serde::{Deserialize, Serialize};

use super::users::{now_ms, Users};
use crate::{
    error::{Error, Result},
    store::{Batch, CommitError, Record, Store},
    table,
};

table!(
    /// `user_id → ModerationRecord`; a row exists only while the account is locked or
    /// suspended.
    pub ModerationTable: "account_moderation", String => ModerationRecord
);

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModerationRecord {
    pub locked: bool,
    pub suspended: bool,
    /// When either flag last changed (ms since the epoch).
    pub changed_ms: u64,
}
impl Record for ModerationRecord {}

/// Which restriction an admin action changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restriction {
    Lock,
    Suspend,
}

pub struct Moderation {
    store: Store,
}

impl Moderation {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The account's restrictions (none for accounts never moderated). One point read: this
    /// runs on every authenticated request.
    pub fn status(&self, user_id: &UserId) -> Result<ModerationRecord> {
        Ok(self
            .store
            .get::<ModerationTable>(&user_id.to_string())?
            .unwrap_or_default())
    }

    /// Checks that `actor` may read (`change: false`) or change the restrictions of `target`,
    /// in the order the spec asks: the actor's admin status first (so non-admins learn
    /// nothing about accounts), then that the target is local (400), exists and is active
    /// (404), and is not another admin (403); changing one's own account is refused too.
    pub fn authorize(
        &self,
        users: &Users,
        server_name: &ServerName,
        actor: &UserId,
        target: &UserId,
        change: bool,
    ) -> Result<()> {
        users.require_admin(actor)?;
        if target.server_name() != server_name {
            return Err(Error::invalid_param(
                "User does not belong to the local server",
            ));
        }
        let record = users
            .get(target)?
            .filter(|r| !r.deactivated)
            .ok_or_else(|| Error::not_found("User not found"))?;
        if target == actor {
            if change {
                return Err(Error::forbidden(
                    "Administrators cannot restrict themselves",
                ));
            }
        } else if record.admin {
            return Err(Error::forbidden(
                "The target user is a server administrator",
            ));
        }
        Ok(())
    }

    /// Sets or lifts one restriction of `user_id`, durably; the resulting state.
    pub async fn set(
        &self,
        user_id: &UserId,
        which: Restriction,
        on: bool,
    ) -> Result<ModerationRecord> {
        let key = user_id.to_string();
        for _ in 0..8 {
            let old = self.store.get::<ModerationTable>(&key)?;
            let mut new = old.unwrap_or_default();
            match which {
                Restriction::Lock => new.locked = on,
                Restriction::Suspend => new.suspended = on,
            }
            if old.is_some_and(|o| o.locked == new.locked && o.suspended == new.suspended)
                || (old.is_none() && !on)
            {
                return Ok(new);
            }
            new.changed_ms = now_ms();
            let mut batch = Batch::new();
            batch.expect_value::<ModerationTable>(&key, old.as_ref());
            if new.locked || new.suspended {
                batch.put::<ModerationTable>(&key, &new);
            } else {
                batch.delete::<ModerationTable>(&key);
            }
            match self.store.commit(batch).await {
                Err(CommitError::Conflict) => continue,
                Err(e) => return Err(e.into()),
                Ok(()) => {
                    log::info!("{user_id}: {which:?} set to {on}");
                    return Ok(new);
                }
            }
        }
        Err(CommitError::Conflict.into())
    }
}
