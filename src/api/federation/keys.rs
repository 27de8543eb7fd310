//! `GET /_matrix/key/v2/server` (minimal).

use std::sync::Arc;

use ruma::api::federation::discovery::{
    get_server_keys::v2 as get_keys, ServerSigningKeys, VerifyKey,
};
use ruma::serde::{Base64, Raw};

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::Services,
};

pub fn routes(router: &mut Router) {
    router.ruma(get);
}

async fn get(services: Arc<Services>, _: Ctx, _: get_keys::Request) -> Result<get_keys::Response> {
    let name = services.federation.server_name().to_owned();
    let until = ruma::MilliSecondsSinceUnixEpoch::from_system_time(
        std::time::SystemTime::now() + std::time::Duration::from_secs(7 * 24 * 3600),
    )
    .unwrap();
    let mut keys = ServerSigningKeys::new(name.clone(), until);
    keys.verify_keys.insert(
        services
            .keys
            .key_id()
            .as_str()
            .try_into()
            .map_err(|_| Error::unknown("key id"))?,
        VerifyKey::new(Base64::new(services.keys.keypair.public_key().to_vec())),
    );
    let mut object: ruma::CanonicalJsonObject =
        serde_json::from_value(serde_json::to_value(&keys).map_err(|_| Error::unknown("keys"))?)
            .map_err(|_| Error::unknown("keys"))?;
    object.remove("signatures");
    ruma::signatures::sign_json(name.as_str(), &services.keys.keypair, &mut object)
        .map_err(|_| Error::unknown("sign"))?;
    let raw = Raw::from_json(
        serde_json::value::to_raw_value(&object).map_err(|_| Error::unknown("keys"))?,
    );
    Ok(get_keys::Response::new(raw))
}
