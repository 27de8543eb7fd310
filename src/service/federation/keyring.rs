//! Other servers' signing keys (minimal: fetched directly, self-signature checked, kept in
//! memory until their `valid_until_ts`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ruma::api::federation::discovery::{get_server_keys::v2 as get_keys, ServerSigningKeys};
use ruma::serde::Base64;
use ruma::signatures::PublicKeyMap;
use ruma::{MilliSecondsSinceUnixEpoch, OwnedServerName, ServerName};

use super::client::FederationClient;
use crate::error::{Error, Result};
use crate::service::keys::ServerKeys;

type KeySet = BTreeMap<String, Base64>;

pub struct KeyRing {
    own: Arc<ServerKeys>,
    own_name: OwnedServerName,
    client: Arc<FederationClient>,
    /// Each server's keys and the `valid_until_ts` they share.
    cache: Mutex<BTreeMap<OwnedServerName, (KeySet, u64)>>,
}

impl KeyRing {
    pub fn new(
        own: Arc<ServerKeys>,
        own_name: OwnedServerName,
        client: Arc<FederationClient>,
    ) -> Self {
        KeyRing {
            own,
            own_name,
            client,
            cache: Mutex::default(),
        }
    }

    pub async fn verify_keys(
        &self,
        server: &ServerName,
        key_ids: &[String],
        valid_at: MilliSecondsSinceUnixEpoch,
    ) -> Result<BTreeMap<String, Base64>> {
        let all = if server == self.own_name {
            BTreeMap::from([(
                self.own.key_id(),
                Base64::new(self.own.keypair.public_key().to_vec()),
            )])
        } else {
            let cached = self.cache.lock().unwrap().get(server).cloned();
            match cached {
                Some((keys, until)) if until >= valid_at.get().into() => keys,
                _ => self.fetch(server, valid_at).await?,
            }
        };
        Ok(all
            .into_iter()
            .filter(|(id, _)| key_ids.is_empty() || key_ids.contains(id))
            .collect())
    }

    pub async fn public_key_map(
        &self,
        wanted: &BTreeMap<OwnedServerName, Vec<String>>,
        valid_at: MilliSecondsSinceUnixEpoch,
    ) -> Result<PublicKeyMap> {
        let mut map = PublicKeyMap::new();
        for (server, ids) in wanted {
            map.insert(
                server.to_string(),
                self.verify_keys(server, ids, valid_at).await?,
            );
        }
        Ok(map)
    }

    async fn fetch(
        &self,
        server: &ServerName,
        valid_at: MilliSecondsSinceUnixEpoch,
    ) -> Result<BTreeMap<String, Base64>> {
        let bad = |m: String| Error::unknown(m);
        let response = self
            .client
            .send_unauthenticated(server, get_keys::Request::new())
            .await
            .map_err(|e| bad(e.to_string()))?;
        let keys: ServerSigningKeys = response
            .server_key
            .deserialize()
            .map_err(|e| bad(e.to_string()))?;
        if keys.server_name != server {
            return Err(bad("key response for another server".into()));
        }
        let set: BTreeMap<String, Base64> = keys
            .verify_keys
            .iter()
            .map(|(id, k)| (id.to_string(), k.key.clone()))
            .collect();
        let object: ruma::CanonicalJsonObject =
            serde_json::from_str(response.server_key.json().get())
                .map_err(|e| bad(e.to_string()))?;
        let map = PublicKeyMap::from([(server.to_string(), set.clone())]);
        ruma::signatures::verify_json(&map, &object).map_err(|e| bad(e.to_string()))?;
        let until = u64::from(keys.valid_until_ts.get());
        if until < u64::from(valid_at.get()) {
            return Err(bad("keys expired".into()));
        }
        self.cache
            .lock()
            .unwrap()
            .insert(server.to_owned(), (set.clone(), until));
        Ok(set)
    }
}
