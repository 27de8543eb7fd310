//! Local user accounts: creation, passwords, deactivation.

use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserRecord {
    /// bcrypt hash; `None` for accounts that cannot log in with a password (guests,
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
    bcrypt_cost: u32,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Users {
    pub fn new(store: Store, bcrypt_cost: u32) -> Self {
        Self { store, bcrypt_cost }
    }

    pub fn get(&self, user_id: &UserId) -> Result<Option<UserRecord>> {
        Ok(self.store.get::<UsersTable>(&user_id.to_string())?)
    }

    pub fn exists(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.get(user_id)?.is_some())
    }

    /// bcrypt runs on the blocking pool: at cost 12 it takes hundreds of milliseconds.
    pub async fn hash_password(&self, password: &str) -> Result<String> {
        let (password, cost) = (password.to_owned(), self.bcrypt_cost);
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|_| Error::unknown("password hashing task failed"))?
            .map_err(|e| Error::unknown(format!("password hashing failed: {e}")))
    }

    /// Whether `password` is the user's password. Unknown, deactivated and password-less
    /// accounts never match.
    pub async fn check_password(&self, user_id: &UserId, password: &str) -> Result<bool> {
        let Some(record) = self.get(user_id)? else {
            return Ok(false);
        };
        let Some(hash) = record.password_hash.filter(|_| !record.deactivated) else {
            return Ok(false);
        };
        let password = password.to_owned();
        let ok =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .map_err(|_| Error::unknown("password check task failed"))?;
        Ok(ok)
    }

    /// Stages the creation of a new account into `batch`; the commit fails with a conflict if
    /// the id was taken meanwhile.
    pub fn stage_create(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        password_hash: Option<String>,
        guest: bool,
    ) {
        let record = UserRecord {
            password_hash,
            created_ms: now_ms(),
            deactivated: false,
            guest,
            admin: false,
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

    /// Stages deactivation: the record stays (the id stays reserved) without a password.
    pub fn stage_deactivate(&self, batch: &mut Batch, user_id: &UserId, current: &UserRecord) {
        let key = user_id.to_string();
        let mut record = current.clone();
        record.deactivated = true;
        record.password_hash = None;
        batch
            .expect_value::<UsersTable>(&key, Some(current))
            .put::<UsersTable>(&key, &record);
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
