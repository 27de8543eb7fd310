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
//! Whole rules are shared the same way: most of a ruleset (every server-default rule but
//! the user's name, display name, invite and mention rules) reads the event and the room
//! only, so [`CompiledRules`], built when a ruleset is cached, keys each such rule by what
//! decides it, and a room of 64 evaluates it once per event instead of 63 times.
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
use ruma::UserId;

/// The legacy mention rules, disabled for events that carry `m.mentions` (spec: "Push Rules",
/// `.m.rule.contains_display_name`, `.m.rule.roomnotif`, `.m.rule.contains_user_name`).
const LEGACY_MENTION_RULES: [&str; 2] = [".m.rule.roomnotif", ".m.rule.contains_display_name"];
const LEGACY_USER_NAME_RULE: &str = ".m.rule.contains_user_name";
const BODY: &str = "content.body";

/// A user's ruleset with, for each rule, what decides whether it applies: built once when
/// the ruleset is cached, so that evaluating an event for many recipients answers most rules
/// from the event's memo ([`EventRules`]) instead of walking their conditions again.
pub(crate) struct CompiledRules {
    ruleset: Ruleset,
    /// One per rule of `ruleset`, in its evaluation order.
    checks: Vec<Check>,
}

/// How one rule is decided for an event.
enum Check {
    /// Disabled: never applies.
    Off,
    /// Decided by the event and the room alone: the same answer for every user whose rule
    /// has the same `key` (its kind, the short-cuts its id takes and its conditions), so it
    /// is worked out once per event. `hash` is the key's [`memo_hash`].
    Shared { key: Box<str>, hash: u64 },
    /// Depends on the recipient (their display name), is about the ruleset's owner, or is a
    /// kind this module does not know: evaluated for each recipient.
    Personal,
}

impl CompiledRules {
    /// Compiles `owner`'s ruleset.
    pub(crate) fn new(ruleset: Ruleset, owner: &UserId) -> Self {
        let checks = ruleset
            .iter()
            .map(|rule| match Check::of(rule) {
                // A rule about its owner (the invite and mention defaults name the user, the
                // user-name default is their localpart) is asked by no one else: remembering
                // its answer would only cost a copy of its key per recipient.
                Check::Shared { key, .. }
                    if key.contains(owner.as_str())
                        || matches!(rule, AnyPushRuleRef::Content(r) if r.pattern == owner.localpart()) =>
                {
                    Check::Personal
                }
                check => check,
            })
            .collect();
        Self { ruleset, checks }
    }
}

impl Check {
    fn of(rule: AnyPushRuleRef<'_>) -> Self {
        if !rule.enabled() {
            return Check::Off;
        }
        let key = match rule {
            AnyPushRuleRef::Override(rule) | AnyPushRuleRef::Underride(rule) => {
                let shared = rule.conditions.iter().all(|c| {
                    matches!(
                        c,
                        PushCondition::EventMatch(_)
                            | PushCondition::RoomMemberCount(_)
                            | PushCondition::SenderNotificationPermission(_)
                            | PushCondition::EventPropertyIs(_)
                            | PushCondition::EventPropertyContains(_)
                    )
                });
                if !shared {
                    return Check::Personal;
                }
                let Ok(conditions) = serde_json::to_string(&rule.conditions) else {
                    return Check::Personal;
                };
                let legacy = LEGACY_MENTION_RULES.contains(&rule.rule_id.as_str());
                format!("c{}{conditions}", u8::from(legacy))
            }
            AnyPushRuleRef::Content(rule) => {
                let legacy = rule.rule_id == LEGACY_USER_NAME_RULE;
                format!("p{}{}", u8::from(legacy), rule.pattern)
            }
            AnyPushRuleRef::Room(rule) => format!("r{}", rule.rule_id),
            AnyPushRuleRef::Sender(rule) => format!("s{}", rule.rule_id),
            #[allow(unreachable_patterns)]
            _ => return Check::Personal,
        };
        Check::Shared {
            hash: memo_hash("", &key),
            key: key.into_boxed_str(),
        }
    }
}

/// Answers remembered for one event, bucketed by the [`memo_hash`] of their key.
type Memo<T> = HashMap<u64, Vec<T>, BuildHasherDefault<KeyHash>>;

/// One event's push evaluation, shared by its recipients.
pub(super) struct EventRules<'e> {
    event: &'e FlattenedJson,
    sender: Option<&'e str>,
    mentions: bool,
    /// `content.body`, lower-cased as ruma lower-cases it for word matches.
    body_lower: Option<String>,
    /// `event_match` answers by `(key, pattern)`, bucketed by their hash.
    matches: Memo<(String, String, bool)>,
    /// Answers of [`Check::Shared`] rules by key, bucketed by its hash.
    rules: Memo<(Box<str>, bool)>,
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
            // Room for the server-default rules without growing.
            rules: HashMap::with_capacity_and_hasher(32, Default::default()),
        }
    }

    /// The actions of the first rule of `rules` that applies (empty: none applies).
    pub(super) async fn actions<'r>(
        &mut self,
        rules: &'r CompiledRules,
        ctx: &PushConditionRoomCtx,
    ) -> &'r [Action] {
        // No rule applies to the recipient's own event; past this, shared answers are the
        // same for every recipient.
        if self.own_event(ctx) {
            return &[];
        }
        for (rule, check) in rules.ruleset.iter().zip(&rules.checks) {
            let applies = match check {
                Check::Off => false,
                Check::Personal => self.applies(rule, ctx).await,
                Check::Shared { key, hash } => {
                    let known = self
                        .rules
                        .get(hash)
                        .and_then(|bucket| bucket.iter().find(|(k, _)| k == key))
                        .map(|(_, applies)| *applies);
                    match known {
                        Some(applies) => applies,
                        None => {
                            let applies = self.applies(rule, ctx).await;
                            self.rules
                                .entry(*hash)
                                .or_default()
                                .push((key.clone(), applies));
                            applies
                        }
                    }
                }
            };
            if applies {
                return rule.actions();
            }
        }
        &[]
    }

    fn own_event(&self, ctx: &PushConditionRoomCtx) -> bool {
        self.sender == Some(ctx.user_id.as_str())
    }

    /// Whether the enabled `rule` applies to the event, for a recipient who did not send it
    /// (disabled rules are [`Check::Off`] and never asked).
    async fn applies(&mut self, rule: AnyPushRuleRef<'_>, ctx: &PushConditionRoomCtx) -> bool {
        match rule {
            AnyPushRuleRef::Override(rule) | AnyPushRuleRef::Underride(rule) => {
                self.conditional(rule, ctx).await
            }
            AnyPushRuleRef::Content(rule) => {
                if rule.rule_id == LEGACY_USER_NAME_RULE && self.mentions {
                    return false;
                }
                self.event_match(BODY, &rule.pattern, ctx).await
            }
            AnyPushRuleRef::Room(rule) => {
                self.event_match("room_id", rule.rule_id.as_str(), ctx)
                    .await
            }
            AnyPushRuleRef::Sender(rule) => {
                self.event_match("sender", rule.rule_id.as_str(), ctx).await
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

    fn ctx(user: &str, display_name: &str, members: u32) -> PushConditionRoomCtx {
        PushConditionRoomCtx::new(
            owned_room_id!("!room:example.org"),
            UInt::from(members),
            user.try_into().unwrap(),
            display_name.to_owned(),
        )
    }

    /// Every event below, for every recipient and ruleset, in a room of two and of five,
    /// gets the actions ruma's own `Ruleset::get_actions` gives it; reusing one `EventRules`
    /// over the recipients (as `stage_events` does) changes nothing, even where rulesets share
    /// rules with other actions or rules that depend on the recipient.
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
        custom
            .set_enabled(RuleKind::Underride, ".m.rule.encrypted", false)
            .unwrap();
        // The same conditions as another user's rule below, with other actions.
        let pizza = || {
            PushCondition::EventMatch(EventMatchConditionData::new(
                "content.body".into(),
                "*pizza*".into(),
            ))
        };
        custom
            .insert(
                NewPushRule::Override(ruma::push::NewConditionalPushRule::new(
                    "pizza-alert".into(),
                    vec![pizza()],
                    vec![Action::Notify],
                )),
                None,
                None,
            )
            .unwrap();
        let dave = owned_user_id!("@dave:example.org");
        let mut quiet = Ruleset::server_default(&dave);
        quiet
            .insert(
                NewPushRule::Override(ruma::push::NewConditionalPushRule::new(
                    "pizza-quiet".into(),
                    vec![pizza()],
                    vec![],
                )),
                None,
                None,
            )
            .unwrap();
        // A rule on the recipient's display name (personal), and one on the room.
        #[allow(deprecated)]
        quiet
            .insert(
                NewPushRule::Override(ruma::push::NewConditionalPushRule::new(
                    "my-name".into(),
                    vec![PushCondition::ContainsDisplayName],
                    vec![
                        Action::Notify,
                        Action::SetTweak(ruma::push::Tweak::Sound("ding".into())),
                    ],
                )),
                None,
                None,
            )
            .unwrap();
        quiet
            .insert(
                NewPushRule::Room(NewSimplePushRule::new(
                    owned_room_id!("!room:example.org"),
                    vec![Action::Notify],
                )),
                None,
                None,
            )
            .unwrap();
        let recipients = [
            (
                "@alice:example.org",
                "Alice Liddell",
                Ruleset::server_default(&alice),
            ),
            ("@alice:example.org", "Alice Liddell", custom),
            ("@dave:example.org", "Dave", Ruleset::server_default(&dave)),
            ("@dave:example.org", "Dave", quiet.clone()),
            ("@dave:example.org", "Alice", quiet),
            ("@alice:example.org", "", Ruleset::server_default(&alice)),
        ]
        .map(|(user, name, ruleset)| {
            let owner = UserId::parse(user).unwrap();
            (user, name, CompiledRules::new(ruleset, &owner))
        });
        for members in [2, 5] {
            for event in &events {
                let raw = Raw::<Value>::from_json(serde_json::value::to_raw_value(event).unwrap());
                let flat = FlattenedJson::from_raw(&raw);
                let mut shared = EventRules::new(&flat);
                for (user, name, rules) in &recipients {
                    let ctx = ctx(user, name, members);
                    let expected = rules.ruleset.get_actions(&raw, &ctx).await.to_vec();
                    let got = shared.actions(rules, &ctx).await;
                    assert_eq!(
                        serde_json::to_value(got).unwrap(),
                        serde_json::to_value(&expected).unwrap(),
                        "{user} ({name:?}) in a room of {members} on {event}"
                    );
                }
            }
        }
    }
}
