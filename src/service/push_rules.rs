//! Push rules: the user's `global` ruleset (spec: "Push Rules").
//!
//! A user who never changed a rule has no row and gets ruma's server-default ruleset for their
//! user id. The first change stores the whole ruleset (defaults included) as JSON; every later
//! change is a read-modify-write of that row guarded by `expect_value`, retried when a
//! concurrent change won. Rule semantics (ordering, `before`/`after`, server-default rules
//! being undeletable) come from `ruma::push::Ruleset`.
//!
//! Not yet done: emitting `m.push_rules` account data on the sync stream, and adding rules that
//! a newer ruma introduces as server defaults to rulesets stored before the upgrade.

use ruma::{
    push::{
        Action, AnyPushRule, InsertPushRuleError, NewPushRule, RemovePushRuleError, RuleKind,
        Ruleset,
    },
    OwnedUserId, UserId,
};

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use super::{notifier::Notifier, push::rules_eval::CompiledRules, stream::Stream};
use crate::{
    error::{Error, Result},
    store::{Batch, CommitError, Raw, Store},
    table,
};

table!(
    /// `user_id → ruleset` as the JSON of `ruma::push::Ruleset` (the `global` scope). Absent
    /// means the user never changed a rule and has exactly the server defaults; once present,
    /// the row holds the complete ruleset, server-default rules included, and is only
    /// replaced whole under an `expect_value` precondition on its previous bytes.
    pub PushRulesTable: "push_rules", String => Raw
);

table!(
    /// `user_id → position` of the latest change of the user's rules, so `/sync` can send
    /// `m.push_rules` again when it changed since the client's token.
    pub PushRulesChanged: "push_rules_changed", String => u64
);

/// How often a change retries after losing a race with a concurrent change.
const UPDATE_ATTEMPTS: usize = 8;

/// Longest accepted rule id, in bytes.
pub const MAX_RULE_ID_BYTES: usize = 255;

pub struct PushRules {
    store: Store,
    stream: Arc<Stream>,
    notifier: Arc<Notifier>,
    /// Parsed rulesets of recent senders' room members, for push evaluation when an event is
    /// persisted (a message to a room of 1,000 needs 1,000 rulesets).
    cache: Arc<Mutex<RulesetCache>>,
}

/// Parsed rulesets by user. Invariant: an entry is never older than the stored row: a change
/// bumps `generation` and drops the entry after its commit, and a reader only inserts what it
/// loaded when no change happened since it started loading.
#[derive(Default)]
struct RulesetCache {
    generation: u64,
    rulesets: HashMap<OwnedUserId, Arc<CompiledRules>>,
}

/// Most rulesets kept parsed; the cache starts over when full.
const CACHE_ENTRIES: usize = 10_000;

fn rule_not_found() -> Error {
    Error::not_found("The push rule was not found")
}

/// The kinds of the client API (`override`, `underride`, `sender`, `room`, `content`); anything
/// else is `M_INVALID_PARAM`.
pub fn check_kind(kind: &RuleKind) -> Result<()> {
    match kind {
        RuleKind::Override
        | RuleKind::Underride
        | RuleKind::Sender
        | RuleKind::Room
        | RuleKind::Content => Ok(()),
        other => Err(Error::invalid_param(format!(
            "Unknown push rule kind: {other}"
        ))),
    }
}

fn insert_error(e: InsertPushRuleError) -> Error {
    match e {
        InsertPushRuleError::ServerDefaultRuleId => {
            Error::invalid_param("Rule ids starting with '.' are reserved for server-default rules")
        }
        InsertPushRuleError::InvalidRuleId => {
            Error::invalid_param("Rule ids must not contain '/' or '\\'")
        }
        InsertPushRuleError::RelativeToServerDefaultRule => {
            Error::invalid_param("A rule cannot be placed relative to a server-default rule")
        }
        // The spec's example for a missing `before`/`after` rule is a 400 M_UNKNOWN.
        InsertPushRuleError::UnknownRuleId => Error::new(
            http::StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            "The before/after rule was not found",
        ),
        InsertPushRuleError::BeforeHigherThanAfter => {
            Error::invalid_param("The before rule is more important than the after rule")
        }
        other => Error::invalid_param(format!("Cannot set this push rule: {other}")),
    }
}

impl PushRules {
    pub fn new(store: Store, stream: Arc<Stream>, notifier: Arc<Notifier>) -> Self {
        Self {
            store,
            stream,
            notifier,
            cache: Arc::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, RulesetCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The user's global ruleset compiled for evaluation, shared: from memory when it was
    /// read before.
    pub(crate) fn cached_rules(&self, user_id: &UserId) -> Result<Arc<CompiledRules>> {
        let generation = {
            let cache = self.cache();
            if let Some(ruleset) = cache.rulesets.get(user_id) {
                return Ok(ruleset.clone());
            }
            cache.generation
        };
        let ruleset = Arc::new(CompiledRules::new(self.ruleset(user_id)?, user_id));
        let mut cache = self.cache();
        if cache.generation == generation {
            if cache.rulesets.len() >= CACHE_ENTRIES {
                cache.rulesets.clear();
            }
            cache.rulesets.insert(user_id.to_owned(), ruleset.clone());
        }
        Ok(ruleset)
    }

    /// Whether the user's rules changed after position `since` and at or before `upto`.
    pub fn changed_since(&self, user_id: &UserId, since: u64, upto: u64) -> Result<bool> {
        let pos = self.store.get::<PushRulesChanged>(&user_id.to_string())?;
        Ok(pos.is_some_and(|pos| pos > since && pos <= upto))
    }

    /// The stored row and the ruleset it holds (server defaults when there is none).
    fn load(&self, user_id: &UserId) -> Result<(Option<Raw>, Ruleset)> {
        let row = self.store.get::<PushRulesTable>(&user_id.to_string())?;
        let ruleset = match &row {
            Some(Raw(bytes)) => serde_json::from_slice(bytes).map_err(|e| {
                log::error!("corrupt push rules of {user_id}: {e}");
                Error::unknown("Internal storage error")
            })?,
            None => Ruleset::server_default(user_id),
        };
        Ok((row, ruleset))
    }

    /// The user's global ruleset.
    pub fn ruleset(&self, user_id: &UserId) -> Result<Ruleset> {
        Ok(self.load(user_id)?.1)
    }

    /// One rule, or 404 `M_NOT_FOUND`.
    pub fn rule(&self, user_id: &UserId, kind: &RuleKind, rule_id: &str) -> Result<AnyPushRule> {
        check_kind(kind)?;
        let ruleset = self.ruleset(user_id)?;
        let rule = ruleset
            .get(kind.clone(), rule_id)
            .ok_or_else(rule_not_found)?;
        Ok(rule.to_owned())
    }

    /// Applies `change` to the user's ruleset and stores the result, retrying on a concurrent
    /// change. Nothing is written when `change` fails.
    async fn update<T>(
        &self,
        user_id: &UserId,
        change: impl Fn(&mut Ruleset) -> Result<T>,
    ) -> Result<T> {
        let key = user_id.to_string();
        for _ in 0..UPDATE_ATTEMPTS {
            let (row, mut ruleset) = self.load(user_id)?;
            let out = change(&mut ruleset)?;
            let json = serde_json::to_vec(&ruleset).map_err(|e| {
                log::error!("cannot serialize push rules: {e}");
                Error::unknown("Cannot store the push rules")
            })?;
            let pending = self.stream.allocate()?;
            let mut batch = Batch::new();
            batch
                .expect_value::<PushRulesTable>(&key, row.as_ref())
                .put::<PushRulesTable>(&key, &Raw(json))
                .put::<PushRulesChanged>(&key, &pending.pos);
            // The user's other devices learn of the change through /sync.
            let (notifier, user) = (self.notifier.clone(), user_id.to_owned());
            let wake = move || notifier.notify([user.as_ref()]);
            // Whatever the outcome, a reader must not keep or insert the old ruleset. The
            // commit task drops this once the write is done, even if this request is
            // cancelled meanwhile.
            let (cache, user) = (self.cache.clone(), user_id.to_owned());
            let evict = super::OnDrop::new(move || {
                let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
                cache.generation += 1;
                cache.rulesets.remove(&user);
            });
            let result = self
                .stream
                .commit(&self.store, batch, vec![pending], evict, wake)
                .await;
            match result {
                Ok(()) => return Ok(out),
                Err(CommitError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommitError::Conflict.into())
    }

    /// Creates or replaces a user-defined rule, placed by `before`/`after` (spec: `PUT
    /// /pushrules/global/{kind}/{ruleId}`). A replaced rule keeps its `enabled` state.
    pub async fn set_rule(
        &self,
        user_id: &UserId,
        rule: NewPushRule,
        before: Option<&str>,
        after: Option<&str>,
    ) -> Result<()> {
        let rule_id = rule.rule_id();
        if rule_id.is_empty() || rule_id.len() > MAX_RULE_ID_BYTES {
            return Err(Error::invalid_param(format!(
                "Rule ids must be 1 to {MAX_RULE_ID_BYTES} bytes long"
            )));
        }
        self.update(user_id, |ruleset| {
            ruleset
                .insert(rule.clone(), after, before)
                .map_err(insert_error)
        })
        .await
    }

    /// Deletes a user-defined rule; server-default rules cannot be deleted (400
    /// `M_INVALID_PARAM`), unknown rules are 404 `M_NOT_FOUND`.
    pub async fn delete_rule(
        &self,
        user_id: &UserId,
        kind: &RuleKind,
        rule_id: &str,
    ) -> Result<()> {
        check_kind(kind)?;
        self.update(user_id, |ruleset| {
            ruleset.remove(kind.clone(), rule_id).map_err(|e| match e {
                RemovePushRuleError::ServerDefault => {
                    Error::invalid_param("Server-default rules cannot be deleted")
                }
                _ => rule_not_found(),
            })
        })
        .await
    }

    /// Enables or disables a rule (server-default rules included).
    pub async fn set_enabled(
        &self,
        user_id: &UserId,
        kind: &RuleKind,
        rule_id: &str,
        enabled: bool,
    ) -> Result<()> {
        check_kind(kind)?;
        if self.rule(user_id, kind, rule_id)?.enabled() == enabled {
            return Ok(());
        }
        self.update(user_id, |ruleset| {
            ruleset
                .set_enabled(kind.clone(), rule_id, enabled)
                .map_err(|_| rule_not_found())
        })
        .await
    }

    /// Replaces the actions of a rule (server-default rules included).
    pub async fn set_actions(
        &self,
        user_id: &UserId,
        kind: &RuleKind,
        rule_id: &str,
        actions: Vec<Action>,
    ) -> Result<()> {
        check_kind(kind)?;
        self.update(user_id, |ruleset| {
            ruleset
                .set_actions(kind.clone(), rule_id, actions.clone())
                .map_err(|_| rule_not_found())
        })
        .await
    }
}
