//! Registration tokens (`m.login.registration_token`): made by the admin with
//! `hearth token create`, spent by registrations.

use rand::RngExt;
use serde::{Deserialize, Serialize};

use super::users::now_ms;
use crate::{
    error::{Error, Result},
    store::{Batch, Record, Store},
    table,
};

table!(
    /// `token → RegistrationToken`. `completed` counts finished registrations; a token is
    /// usable while `completed < uses_allowed` (or unlimited) and before `expiry_ms`.
    pub RegTokensTable: "registration_tokens", String => RegistrationToken
);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegistrationToken {
    pub uses_allowed: Option<u32>,
    pub completed: u32,
    pub expiry_ms: Option<u64>,
    pub created_ms: u64,
}
impl Record for RegistrationToken {}

impl RegistrationToken {
    pub fn is_valid(&self, now: u64) -> bool {
        self.uses_allowed.is_none_or(|n| self.completed < n)
            && self.expiry_ms.is_none_or(|t| now < t)
    }
}

pub struct RegTokens {
    store: Store,
}

/// The spec's grammar for registration tokens: at most 64 of `[A-Za-z0-9._~-]`.
pub fn is_valid_token_syntax(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 64
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
}

impl RegTokens {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    pub fn get(&self, token: &str) -> Result<Option<RegistrationToken>> {
        if !is_valid_token_syntax(token) {
            return Ok(None);
        }
        Ok(self.store.get::<RegTokensTable>(&token.to_owned())?)
    }

    pub fn is_usable(&self, token: &str) -> Result<bool> {
        Ok(self.get(token)?.is_some_and(|t| t.is_valid(now_ms())))
    }

    /// Stages one completed use of `token`, guarded so two registrations cannot both spend the
    /// last use.
    pub fn stage_use(&self, batch: &mut Batch, token: &str) -> Result<()> {
        let key = token.to_owned();
        let current = self.get(token)?.filter(|t| t.is_valid(now_ms()));
        let current = current.ok_or_else(|| Error::forbidden("Registration token is not valid"))?;
        let mut spent = current.clone();
        spent.completed += 1;
        batch
            .expect_value::<RegTokensTable>(&key, Some(&current))
            .put::<RegTokensTable>(&key, &spent);
        Ok(())
    }

    /// Creates a token (random when `token` is `None`).
    pub fn create(
        &self,
        token: Option<String>,
        uses_allowed: Option<u32>,
        expiry_ms: Option<u64>,
    ) -> Result<String> {
        let token = token.unwrap_or_else(|| {
            const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
            let mut rng = rand::rng();
            (0..16)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                .collect()
        });
        if !is_valid_token_syntax(&token) {
            return Err(Error::invalid_param(
                "A token is 1-64 characters of A-Z a-z 0-9 . _ ~ -",
            ));
        }
        let record = RegistrationToken {
            uses_allowed,
            completed: 0,
            expiry_ms,
            created_ms: now_ms(),
        };
        let mut batch = Batch::new();
        batch
            .expect_absent::<RegTokensTable>(&token)
            .put::<RegTokensTable>(&token, &record);
        self.store.commit_blocking(batch).map_err(|e| match e {
            crate::store::CommitError::Conflict => {
                Error::invalid_param("That token already exists")
            }
            other => other.into(),
        })?;
        Ok(token)
    }

    pub fn list(&self) -> Result<Vec<(String, RegistrationToken)>> {
        Ok(self
            .store
            .range::<RegTokensTable>(None, false, usize::MAX)?)
    }

    /// Removes a token; returns whether it existed.
    pub fn revoke(&self, token: &str) -> Result<bool> {
        let key = token.to_owned();
        if self.store.get::<RegTokensTable>(&key)?.is_none() {
            return Ok(false);
        }
        let mut batch = Batch::new();
        batch.delete::<RegTokensTable>(&key);
        self.store.commit_blocking(batch)?;
        Ok(true)
    }
}
