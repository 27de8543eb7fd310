//! Verification of key responses (spec: Retrieving server keys; Appendices, Signing JSON).

use std::collections::BTreeMap;

use ruma::{
    api::federation::discovery::ServerSigningKeys, serde::Base64, CanonicalJsonObject,
    CanonicalJsonValue, ServerName, SigningKeyAlgorithm,
};

/// A key response listing more keys than this (current and old) is refused.
const MAX_KEYS_PER_RESPONSE: usize = 100;

/// A key response that passed [`verify_response`].
pub(super) struct Verified {
    pub keys: ServerSigningKeys,
    /// The response with only its server's signatures.
    pub signed: CanonicalJsonObject,
}

/// Checks a key response claimed to be `server`'s: valid canonical JSON of the right shape,
/// `server_name` equal to `server`, and signed by `server` with a key of its `verify_keys`
/// (every such signature must verify, and there must be one); when relayed by a notary, also
/// signed by the notary with one of the keys given.
pub(super) fn verify_response(
    server: &ServerName,
    json: &str,
    notary: Option<(&ServerName, &BTreeMap<String, Base64>)>,
) -> Result<Verified, String> {
    let object: CanonicalJsonObject =
        serde_json::from_str(json).map_err(|e| format!("malformed key response: {e}"))?;
    let keys: ServerSigningKeys =
        serde_json::from_str(json).map_err(|e| format!("malformed key response: {e}"))?;
    if keys.verify_keys.len() + keys.old_verify_keys.len() > MAX_KEYS_PER_RESPONSE {
        return Err(format!(
            "the key response lists more than {MAX_KEYS_PER_RESPONSE} keys"
        ));
    }
    if keys.server_name != server {
        return Err(format!(
            "the key response is for {}, not {server}",
            keys.server_name
        ));
    }
    let canonical = ruma::signatures::to_canonical_json_string_for_signing(&object)
        .map_err(|e| format!("malformed key response: {e}"))?;
    let verify_keys: BTreeMap<String, Base64> = keys
        .verify_keys
        .iter()
        .map(|(id, k)| (id.to_string(), k.key.clone()))
        .collect();
    check_signatures(&object, &canonical, server, &verify_keys)
        .map_err(|e| format!("bad self-signature: {e}"))?;
    if let Some((notary, keys)) = notary {
        check_signatures(&object, &canonical, notary, keys)
            .map_err(|e| format!("bad notary signature: {e}"))?;
    }
    let mut signed = object;
    if let Some(CanonicalJsonValue::Object(signatures)) = signed.get_mut("signatures") {
        signatures.retain(|entity, _| entity == server.as_str());
    }
    Ok(Verified { keys, signed })
}

/// Every signature of `entity` on `object` made with one of `keys` verifies, and there is at
/// least one.
fn check_signatures(
    object: &CanonicalJsonObject,
    canonical: &str,
    entity: &ServerName,
    keys: &BTreeMap<String, Base64>,
) -> Result<(), String> {
    let Some(CanonicalJsonValue::Object(signatures)) = object.get("signatures") else {
        return Err("unsigned".to_owned());
    };
    let Some(CanonicalJsonValue::Object(by_entity)) = signatures.get(entity.as_str()) else {
        return Err(format!("not signed by {entity}"));
    };
    let mut verified = 0;
    for (key_id, signature) in by_entity {
        // Only ed25519 keys are defined; signatures by anything else are not ours to judge.
        let Some(key) = keys.get(key_id).filter(|_| key_id.starts_with("ed25519:")) else {
            continue;
        };
        let CanonicalJsonValue::String(signature) = signature else {
            return Err(format!("signature {key_id} is not a string"));
        };
        let signature = Base64::<ruma::serde::base64::Standard>::parse(signature)
            .map_err(|_| format!("signature {key_id} is not base64"))?;
        ruma::signatures::verify_canonical_json_bytes(
            &SigningKeyAlgorithm::Ed25519,
            key.as_bytes(),
            signature.as_bytes(),
            canonical.as_bytes(),
        )
        .map_err(|e| format!("signature {key_id} does not verify: {e}"))?;
        verified += 1;
    }
    if verified == 0 {
        return Err(format!(
            "no signature of {entity} by a key it is known to have"
        ));
    }
    Ok(())
}
