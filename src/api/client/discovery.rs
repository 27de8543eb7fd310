//! `/versions` and `/.well-known/matrix/{client,server,support,policy_server}`.

use std::{collections::BTreeMap, sync::Arc};

use ruma::api::client::discovery::{
    discover_homeserver, discover_policy_server, discover_support, get_supported_versions,
};
use ruma::api::federation::discovery::discover_homeserver as discover_server;

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::Services,
};

/// Spec versions whose client API Hearth implements (the ones clients gate features on).
const VERSIONS: &[&str] = &[
    "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10",
    "v1.11", "v1.12", "v1.13", "v1.14", "v1.15", "v1.16", "v1.17", "v1.18", "v1.19",
];

pub fn routes(router: &mut Router) {
    router.ruma(versions);
    router.ruma(well_known_client);
    router.ruma(well_known_server);
    router.ruma(well_known_support);
    router.ruma(well_known_policy_server);
}

async fn versions(
    _: Arc<Services>,
    _: Ctx,
    _: get_supported_versions::Request,
) -> Result<get_supported_versions::Response> {
    let mut response =
        get_supported_versions::Response::new(VERSIONS.iter().map(|v| v.to_string()).collect());
    // Simplified sliding sync (MSC4186), what Element X needs to log in.
    response.unstable_features =
        BTreeMap::from([("org.matrix.simplified_msc3575".to_owned(), true)]);
    Ok(response)
}

async fn well_known_client(
    services: Arc<Services>,
    _: Ctx,
    _: discover_homeserver::Request,
) -> Result<discover_homeserver::Response> {
    let base_url = services.config.public_base_url();
    Ok(discover_homeserver::Response::new(
        discover_homeserver::HomeserverInfo::new(base_url),
    ))
}

/// Delegation for federation: only answered when configured, so a remote server falls back to
/// SRV records and port 8448 otherwise (spec: server discovery).
async fn well_known_server(
    services: Arc<Services>,
    _: Ctx,
    _: discover_server::Request,
) -> Result<discover_server::Response> {
    let server = services
        .config
        .well_known
        .server
        .as_deref()
        .filter(|s| !s.is_empty());
    let server =
        server.ok_or_else(|| Error::not_found("No federation delegation is configured"))?;
    let name = server
        .try_into()
        .map_err(|_| Error::unknown("Configured well_known.server is invalid"))?;
    Ok(discover_server::Response::new(name))
}

/// Support contacts (spec: `/.well-known/matrix/support`): only when configured; otherwise 404,
/// the spec's answer for "no server support information available".
async fn well_known_support(
    services: Arc<Services>,
    _: Ctx,
    _: discover_support::Request,
) -> Result<discover_support::Response> {
    let config = &services.config.well_known;
    if config.support_page.is_none() && config.contacts.is_empty() {
        return Err(Error::not_found("No support information is configured"));
    }
    let mut contacts = Vec::with_capacity(config.contacts.len());
    for c in &config.contacts {
        let role = discover_support::ContactRole::from(c.role.as_str());
        // Validation requires a matrix_id or an email_address, and a valid matrix_id.
        let mut contact = match (&c.matrix_id, &c.email_address) {
            (Some(id), _) => {
                let id = id
                    .as_str()
                    .try_into()
                    .map_err(|_| Error::unknown("Configured support contact is invalid"))?;
                discover_support::Contact::with_matrix_id(role, id)
            }
            (None, Some(email)) => {
                discover_support::Contact::with_email_address(role, email.clone())
            }
            (None, None) => continue,
        };
        contact.email_address = c.email_address.clone();
        contacts.push(contact);
    }
    let mut response = discover_support::Response::with_contacts(contacts);
    response.support_page = config.support_page.clone();
    Ok(response)
}

/// Hearth has no policy server (spec: `/.well-known/matrix/policy_server`, 404 "No policy
/// server information available").
async fn well_known_policy_server(
    _: Arc<Services>,
    _: Ctx,
    _: discover_policy_server::Request,
) -> Result<discover_policy_server::Response> {
    Err(Error::not_found("This server has no policy server"))
}
