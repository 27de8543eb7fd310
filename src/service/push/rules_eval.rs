//! Push rules evaluated for one event over all its recipients (spec: "Push Rules", "Predefined
//! Rules").
//!
//! Each recipient has their own ruleset, but most of what the rules ask depends on the event
//! alone: an `event_match` on a key and a pattern gives the same answer for every recipient
//! whose rule asks it, so it is worked out once per event and remembered. The per-recipient
//! word matches (a user's name or display name in the body) are first checked against the
//! body lower-cased once per event: a name that is not even a substring cannot match as a word,
//! so ruma's full match (which lower-cases the body again) runs only for names that occur.
//!
//! Rule semantics are ruma's (`ConditionalPushRule::applies`, `PatternedPushRule::applies_to`,
//! `PushCondition::applies` for everything but `event_match`), reproduced here only in the
//! order and short-cuts they take; a rule kind this module does not know goes to ruma as is.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use ruma::push::{
    Action, AnyPushRuleRef, ConditionalPushRule, EventMatchConditionData, FlattenedJson,
    PushCondition, PushConditionRoomCtx, Ruleset,
};

/// The legacy mention rules, disabled for events that carry `m.mentions` (spec: "Push Rules",
/// `.m.rule.contains_display_name`, `.m.rule.roomnotif`, `.m.rule.contains_user_name`).
const LEGACY_MENTION_RULES: [&str; 2] = [".m.rule.roomnotif", ".m.rule.contains_display_name"];
const LEGACY_USER_NAME_RULE: &str = ".m.rule.contains_user_name";
const BODY: &str = "content.body";

/// One event's push evaluation, shared by its recipients.
pub(super) struct EventRules<'e> {
    event: &'e FlattenedJson,
    sender: Option<&'e str>,
    mentions: bool,
    /// `content.body`, lower-cased as ruma lower-cases it for word matches.
    body_lower: Option<String>,
    /// `event_match` answers by `(key, pattern)`, bucketed by their hash.
    matches: HashMap<u64, Vec<(String, String, bool)>, BuildHasherDefault<KeyHash>>,
}

/// The hash of an `event_match` memo key: FNV-1a over the key, a separator and the pattern.
/// Asked once per rule per recipient, so it must cost less than the match it saves; the
/// memo's map then uses the value as it is ([`KeyHash`]).
fn memo_hash(key: &str, pattern: &str) -> u64 {
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes().chain([0xff]).chain(pattern.bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(PRIME);
    }
    hash
}

/// A hasher for keys that are hashes already ([`memo_hash`]): takes the `u64` as it is.
#[derive(Default)]
struct KeyHash(u64);

impl Hasher for KeyHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; fold anything else in all the same.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl<'e> EventRules<'e> {
    pub(super) fn new(event: &'e FlattenedJson) -> Self {
        Self {
            event,
            sender: event.get_str("sender"),
            mentions: event.contains_mentions(),
            body_lower: event.get_str(BODY).map(str::to_lowercase),
            matches: HashMap::default(),
        }
    }

    /// The actions of the first rule of `ruleset` that applies (empty: none applies).
    pub(super) async fn actions(
        &mut self,
        ruleset: &Ruleset,
        ctx: &PushConditionRoomCtx,
    ) -> Vec<Action> {
        for rule in ruleset {
            if self.applies(rule, ctx).await {
                return rule.actions().to_vec();
            }
        }
        Vec::new()
    }

    fn own_event(&self, ctx: &PushConditionRoomCtx) -> bool {
        self.sender == Some(ctx.user_id.as_str())
    }

    async fn applies(&mut self, rule: AnyPushRuleRef<'_>, ctx: &PushConditionRoomCtx) -> bool {
        // No rule applies to the recipient's own event; past this, `event_match` answers are
        // the same for every recipient.
        if self.own_event(ctx) {
            return false;
        }
        match rule {
            AnyPushRuleRef::Override(rule) | AnyPushRuleRef::Underride(rule) => {
                self.conditional(rule, ctx).await
            }
            AnyPushRuleRef::Content(rule) => {
                if rule.rule_id == LEGACY_USER_NAME_RULE && self.mentions {
                    return false;
                }
                rule.enabled && self.event_match(BODY, &rule.pattern, ctx).await
            }
            AnyPushRuleRef::Room(rule) => {
                rule.enabled
                    && self
                        .event_match("room_id", rule.rule_id.as_str(), ctx)
                        .await
            }
            AnyPushRuleRef::Sender(rule) => {
                rule.enabled && self.event_match("sender", rule.rule_id.as_str(), ctx).await
            }
            #[allow(unreachable_patterns)]
            other => other.applies(self.event, ctx).await,
        }
    }

    async fn conditional(
        &mut self,
        rule: &ConditionalPushRule,
        ctx: &PushConditionRoomCtx,
    ) -> bool {
        if !rule.enabled {
            return false;
        }
        if LEGACY_MENTION_RULES.contains(&rule.rule_id.as_str()) && self.mentions {
            return false;
        }
        for condition in &rule.conditions {
            let holds = match condition {
                PushCondition::EventMatch(data) => {
                    self.event_match(&data.key, &data.pattern, ctx).await
                }
                #[allow(deprecated)]
                PushCondition::ContainsDisplayName => {
                    self.event_match(BODY, &ctx.user_display_name, ctx).await
                }
                other => other.applies(self.event, ctx).await,
            };
            if !holds {
                return false;
            }
        }
        true
    }

    /// Whether the event's `key` matches `pattern` (ruma's glob and, for the body, word
    /// match), remembered per event. `room_id` is the context's, the same for all recipients.
    async fn event_match(&mut self, key: &str, pattern: &str, ctx: &PushConditionRoomCtx) -> bool {
        if key == BODY && !pattern.contains(['*', '?']) {
            // A word match is a substring match to begin with.
            let Some(body) = &self.body_lower else {
                return false;
            };
            if !body.contains(&pattern.to_lowercase()) {
                return false;
            }
        }
        let hash = memo_hash(key, pattern);
        if let Some(bucket) = self.matches.get(&hash) {
            if let Some((_, _, found)) = bucket.iter().find(|(k, p, _)| k == key && p == pattern) {
                return *found;
            }
        }
        let found = ruma_event_match(self.event, key, pattern, ctx).await;
        self.matches
            .entry(hash)
            .or_default()
            .push((key.to_owned(), pattern.to_owned(), found));
        found
    }
}

/// ruma's own answer for one `event_match`, through its public condition type.
async fn ruma_event_match(
    event: &FlattenedJson,
    key: &str,
    pattern: &str,
    ctx: &PushConditionRoomCtx,
) -> bool {
    PushCondition::EventMatch(EventMatchConditionData::new(
        key.to_owned(),
        pattern.to_owned(),
    ))
    .applies(event, ctx)
    .await
}

#[cfg(test)]
mod tests {
    use ruma::{
        owned_room_id, owned_user_id,
        push::{NewPatternedPushRule, NewPushRule, NewSimplePushRule, RuleKind},
        serde::Raw,
        UInt,
    };
    use serde_json::{json, Value};

    use super::*;

    fn ctx(user: &str, display_name: &str) -> PushConditionRoomCtx {
        PushConditionRoomCtx::new(
            owned_room_id!("!room:example.org"),
            UInt::from(5u32),
            user.try_into().unwrap(),
            display_name.to_owned(),
        )
    }

    /// Every event below, for every recipient and ruleset, gets the actions ruma's own
    /// `Ruleset::get_actions` gives it; reusing one `EventRules` over the recipients (as
    /// `stage_events` does) changes nothing.
    #[tokio::test]
    async fn agrees_with_ruma_for_every_recipient() {
        let events: Vec<Value> = vec![
            json!({"type": "m.room.message", "sender": "@bob:example.org",
                   "content": {"msgtype": "m.text", "body": "hello family"}}),
            json!({"type": "m.room.message", "sender": "@bob:example.org",
                   "content": {"msgtype": "m.text", "body": "Alice Liddell, dinner?"}}),
            json!({"type": "m.room.message", "sender": "@bob:example.org",
                   "content": {"msgtype": "m.text", "body": "ask alice about it"}}),
            json!({"type": "m.room.message", "sender": "@bob:example.org",
                   "content": {"msgtype": "m.text", "body": "malice is not a name"}}),
            json!({"type": "m.room.message", "sender": "@bob:example.org",
                   "content": {"msgtype": "m.text", "body": "alice",
                               "m.mentions": {}}}),
            json!({"type": "m.room.message", "sender": "@bob:example.org",
                   "content": {"msgtype": "m.text", "body": "hi",
                               "m.mentions": {"user_ids": ["@alice:example.org"]}}}),
            json!({"type": "m.room.message", "sender": "@bob:example.org",
                   "content": {"msgtype": "m.notice", "body": "alice: a notice"}}),
            json!({"type": "m.room.message", "sender": "@bob:example.org",
                   "content": {"msgtype": "m.text", "body": "@room wake up"}}),
            json!({"type": "m.room.member", "sender": "@bob:example.org",
                   "state_key": "@alice:example.org", "content": {"membership": "invite"}}),
            json!({"type": "m.room.message", "sender": "@alice:example.org",
                   "content": {"msgtype": "m.text", "body": "my own alice"}}),
            json!({"type": "m.reaction", "sender": "@bob:example.org",
                   "content": {}}),
            json!({"type": "m.room.encrypted", "sender": "@bob:example.org",
                   "content": {"ciphertext": "x"}}),
            json!({"type": "m.room.message", "sender": "@carol:example.org",
                   "content": {"msgtype": "m.text", "body": "pizza tonight"}}),
            json!({"type": "m.room.message", "sender": "@bob:example.org",
                   "content": {"msgtype": "m.text", "body": "dinners are not dinner-time"}}),
            json!({"type": "m.room.message", "sender": "@bob:example.org",
                   "content": {"msgtype": "m.text", "body": "no body key here"}}),
        ];
        let alice = owned_user_id!("@alice:example.org");
        let mut custom = Ruleset::server_default(&alice);
        custom
            .insert(
                NewPushRule::Content(NewPatternedPushRule::new(
                    "pizza".into(),
                    "pi*a".into(),
                    vec![Action::Notify],
                )),
                None,
                None,
            )
            .unwrap();
        // A keyword (no wildcard): a word match on the body.
        custom
            .insert(
                NewPushRule::Content(NewPatternedPushRule::new(
                    "dinner".into(),
                    "Dinner".into(),
                    vec![
                        Action::Notify,
                        Action::SetTweak(ruma::push::Tweak::Highlight(true.into())),
                    ],
                )),
                None,
                None,
            )
            .unwrap();
        custom
            .insert(
                NewPushRule::Sender(NewSimplePushRule::new(
                    owned_user_id!("@carol:example.org"),
                    vec![],
                )),
                None,
                None,
            )
            .unwrap();
        custom
            .set_enabled(RuleKind::Override, ".m.rule.suppress_notices", false)
            .unwrap();
        let recipients = [
            (
                "@alice:example.org",
                "Alice Liddell",
                Ruleset::server_default(&alice),
            ),
            ("@alice:example.org", "Alice Liddell", custom),
            (
                "@dave:example.org",
                "Dave",
                Ruleset::server_default(&owned_user_id!("@dave:example.org")),
            ),
            ("@alice:example.org", "", Ruleset::server_default(&alice)),
        ];
        for event in &events {
            let raw = Raw::<Value>::from_json(serde_json::value::to_raw_value(event).unwrap());
            let flat = FlattenedJson::from_raw(&raw);
            let mut shared = EventRules::new(&flat);
            for (user, name, ruleset) in &recipients {
                let ctx = ctx(user, name);
                let expected = ruleset.get_actions(&raw, &ctx).await.to_vec();
                let got = shared.actions(ruleset, &ctx).await;
                assert_eq!(
                    serde_json::to_value(&got).unwrap(),
                    serde_json::to_value(&expected).unwrap(),
                    "{user} ({name:?}) on {event}"
                );
            }
        }
    }
}
