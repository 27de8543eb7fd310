//! Local user accounts: creation, passwords, deactivation.

use std::net::IpAddr;

use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use super::passwords::{Passwords, Verified};
use crate::{
    error::{Error, Result},
    store::{Batch, CommitError, Record, Store},
    table,
};

table!(
    /// `user_id → UserRecord`, one entry per local account ever created. Entries are never
    /// removed (deactivation keeps the record), so a user id is never handed out twice.
    pub UsersTable: "users", String => UserRecord
);

table!(
    /// `user_id → deactivation time (ms)`: accounts deactivated whose follow-up work (leaving
    /// rooms, deleting cross-signing keys and key backups) is not known to be finished.
    /// Written in the batch that deactivates the account; removed once the work is done, and
    /// finished at start for markers a crash left behind.
    pub PendingDeactivations: "pending_deactivations", String => u64
);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserRecord {
    /// Password hash (format in `passwords`); `None` for accounts that cannot log in with a password (guests,
    /// deactivated accounts).
    pub password_hash: Option<String>,
    pub created_ms: u64,
    pub deactivated: bool,
    pub guest: bool,
    pub admin: bool,
}
impl Record for UserRecord {}

pub struct Users {
    store: Store,
    passwords: Passwords,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Users {
    pub fn new(store: Store, passwords: Passwords) -> Self {
        Self { store, passwords }
    }

    pub fn get(&self, user_id: &UserId) -> Result<Option<UserRecord>> {
        Ok(self.store.get::<UsersTable>(&user_id.to_string())?)
    }

    pub fn exists(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.get(user_id)?.is_some())
    }

    /// Whether the account is a guest account; unknown accounts are not.
    pub fn is_guest(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.get(user_id)?.is_some_and(|r| r.guest))
    }

    /// Stages a guest's upgrade to a full account (same user id): the guest flag cleared and
    /// the password set, guarded so that a concurrent change of the record (a second
    /// upgrade) makes the commit conflict.
    pub fn stage_upgrade_guest(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        current: &UserRecord,
        password_hash: Option<String>,
    ) {
        let key = user_id.to_string();
        let record = UserRecord {
            password_hash,
            guest: false,
            ..current.clone()
        };
        batch
            .expect_value::<UsersTable>(&key, Some(current))
            .put::<UsersTable>(&key, &record);
    }

    /// The stored form of a new password; empty passwords are refused (`M_WEAK_PASSWORD`),
    /// and 429 when every hashing slot is busy.
    pub async fn hash_password(&self, password: &str) -> Result<String> {
        self.passwords.hash(password).await
    }

    /// Whether `password` is the user's password. Unknown, deactivated and password-less
    /// accounts never match, at the same cost as a wrong password. Subject to the
    /// failed-attempt backoff of the account from `client` (429 while it lasts).
    pub async fn check_password(
        &self,
        user_id: &UserId,
        client: IpAddr,
        password: &str,
    ) -> Result<bool> {
        let record = self.get(user_id)?;
        let hash = record
            .as_ref()
            .filter(|r| !r.deactivated)
            .and_then(|r| r.password_hash.clone());
        let verified = self
            .passwords
            .verify(user_id.as_str(), client, password, hash.clone())
            .await?;
        if verified == Verified::YesLegacy {
            self.upgrade_legacy_hash(user_id, password, hash).await;
        }
        Ok(verified != Verified::No)
    }

    /// Checks a password for a login name that cannot be a local account, at the cost of a
    /// real check, so the answer's timing does not tell which names exist.
    pub async fn check_password_of_unknown(
        &self,
        name: &str,
        client: IpAddr,
        password: &str,
    ) -> Result<bool> {
        self.passwords.verify(name, client, password, None).await?;
        Ok(false)
    }

    /// Rewrites a hash of the legacy format (bcrypt of the raw password, truncated at 72
    /// bytes) in the current one. Best effort: the login succeeds either way.
    async fn upgrade_legacy_hash(&self, user_id: &UserId, password: &str, old: Option<String>) {
        let new = match self.passwords.hash(password).await {
            Ok(new) => new,
            Err(e) => {
                log::debug!("password hash of {user_id} not upgraded now: {e}");
                return;
            }
        };
        let result = self
            .update(user_id, |r| {
                // Only if the password did not change meanwhile.
                if r.password_hash == old {
                    r.password_hash = Some(new.clone());
                }
            })
            .await;
        match result {
            Ok(()) => log::info!("upgraded the password hash of {user_id} to the sha256 scheme"),
            Err(e) => log::warn!("cannot upgrade the password hash of {user_id}: {e}"),
        }
    }

    /// Stages the creation of a new account into `batch`; the commit fails with a conflict if
    /// the id was taken meanwhile.
    pub fn stage_create(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        password_hash: Option<String>,
        guest: bool,
        admin: bool,
    ) {
        let record = UserRecord {
            password_hash,
            created_ms: now_ms(),
            deactivated: false,
            guest,
            admin,
        };
        let key = user_id.to_string();
        batch
            .expect_absent::<UsersTable>(&key)
            .put::<UsersTable>(&key, &record);
    }

    /// Stages a new password hash, guarded against a concurrent change of the record.
    pub fn stage_set_password(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        current: &UserRecord,
        hash: String,
    ) {
        let key = user_id.to_string();
        let record = UserRecord {
            password_hash: Some(hash),
            ..current.clone()
        };
        batch
            .expect_value::<UsersTable>(&key, Some(current))
            .put::<UsersTable>(&key, &record);
    }

    /// Guards `batch` on the account being active as it is now: the commit then conflicts if
    /// the account is deactivated (or otherwise changed) meanwhile. A login stages this with
    /// its new device and tokens, because its password check ran on the record as it was
    /// before the check, and a deactivation committed during the check must not be followed
    /// by a working access token.
    pub fn stage_require_active(&self, batch: &mut Batch, user_id: &UserId) -> Result<()> {
        let key = user_id.to_string();
        let current = self
            .store
            .get::<UsersTable>(&key)?
            .filter(|record| !record.deactivated)
            .ok_or_else(|| Error::user_deactivated("This account has been deactivated"))?;
        batch.expect_value::<UsersTable>(&key, Some(&current));
        Ok(())
    }

    /// Replaces the user's password (for the admin CLI).
    pub async fn set_password(&self, user_id: &UserId, password: &str) -> Result<()> {
        let hash = self.hash_password(password).await?;
        self.update(user_id, |r| r.password_hash = Some(hash.clone()))
            .await
    }

    /// Applies `change` to the user's record atomically, retrying if a concurrent change won.
    pub async fn update(&self, user_id: &UserId, change: impl Fn(&mut UserRecord)) -> Result<()> {
        let key = user_id.to_string();
        for _ in 0..8 {
            let old = self
                .store
                .get::<UsersTable>(&key)?
                .ok_or_else(|| Error::not_found("Unknown user"))?;
            let mut new = old.clone();
            change(&mut new);
            let mut batch = Batch::new();
            batch
                .expect_value::<UsersTable>(&key, Some(&old))
                .put::<UsersTable>(&key, &new);
            match self.store.commit(batch).await {
                Err(CommitError::Conflict) => continue,
                other => return Ok(other?),
            }
        }
        Err(CommitError::Conflict.into())
    }

    /// Stages deactivation: the record stays (the id stays reserved) without a password, and
    /// a pending marker records that the follow-up work is still to be done.
    pub fn stage_deactivate(&self, batch: &mut Batch, user_id: &UserId, current: &UserRecord) {
        let key = user_id.to_string();
        let mut record = current.clone();
        record.deactivated = true;
        record.password_hash = None;
        batch
            .expect_value::<UsersTable>(&key, Some(current))
            .put::<UsersTable>(&key, &record)
            .put::<PendingDeactivations>(&key, &now_ms());
    }

    /// Accounts whose deactivation is not finished.
    pub fn pending_deactivations(&self) -> Result<Vec<OwnedUserId>> {
        let rows = self
            .store
            .range::<PendingDeactivations>(None, false, usize::MAX)?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, _)| UserId::parse(id).ok())
            .collect())
    }

    /// Removes the pending marker once the deactivation's follow-up work is done.
    pub async fn finish_deactivation(&self, user_id: &UserId) -> Result<()> {
        let mut batch = Batch::new();
        batch.delete::<PendingDeactivations>(&user_id.to_string());
        Ok(self.store.commit(batch).await?)
    }

    /// Refuses (403) anyone but an active server admin.
    pub fn require_admin(&self, user_id: &UserId) -> Result<()> {
        match self.get(user_id)? {
            Some(r) if r.admin && !r.deactivated => Ok(()),
            _ => Err(Error::forbidden("You are not a server administrator")),
        }
    }

    /// Whether the account is an active server admin.
    pub fn is_admin(&self, user_id: &UserId) -> Result<bool> {
        Ok(self
            .get(user_id)?
            .is_some_and(|r| r.admin && !r.deactivated))
    }

    /// Grants or revokes server admin rights (admin CLI).
    pub async fn set_admin(&self, user_id: &UserId, admin: bool) -> Result<()> {
        self.update(user_id, |r| r.admin = admin).await
    }

    /// All local accounts in user-id order.
    pub fn list(&self) -> Result<Vec<(OwnedUserId, UserRecord)>> {
        let rows = self.store.range::<UsersTable>(None, false, usize::MAX)?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, rec)| Some((UserId::parse(id).ok()?, rec)))
            .collect())
    }
}
