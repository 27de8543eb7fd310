//! `hearth check`, federation part: finds our own server the way another homeserver would
//! (well-known, SRV, port, through the same discovery code the server uses), connects with
//! certificate validation for the name discovery gives, fetches our own
//! `/_matrix/key/v2/server` there and checks it: the server name and the self-signature.
//! Every failure is said in words that name what to fix.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ruma::{serde::Base64, CanonicalJsonObject, CanonicalJsonValue};

use super::{https_get_as, now_secs, CheckArgs, HttpsError};
use crate::config::Config;
use crate::outbound::discovery::{split_server_name, Host, Route, WellKnownOutcome};
use crate::outbound::{IpPolicy, Outbound, TestHooks};

/// The outbound client `check` uses: the server's own TLS roots (plus `--ca`), any address
/// allowed (the admin checks their own server, which may be on a LAN), and the test hooks.
pub fn client(config: &Config, args: &CheckArgs) -> Result<Outbound, String> {
    let mut outbound = config.outbound.clone();
    outbound.allow_networks = vec!["0.0.0.0/0".into(), "::/0".into()];
    if let Some(ca) = &args.ca {
        outbound.extra_ca_file = Some(ca.clone());
    }
    let hooks = TestHooks {
        well_known_port: args.test_well_known_port,
        default_port: args.test_federation_port,
        name_servers: args.test_dns.into_iter().collect(),
        connect_to: args.connect,
    };
    Outbound::with_hooks(&outbound, hooks).map_err(|e| e.to_string())
}

/// Reports on federation; `bad` counts a problem.
pub async fn check(
    config: &Config,
    args: &CheckArgs,
    outbound: &Outbound,
    name: &str,
    roots: &rustls::RootCertStore,
    bad: &mut impl FnMut(String),
) -> Result<(), String> {
    crate::outln!("federation, as another server finds {name}")?;
    let route = match outbound.discover(name).await {
        Ok(route) => route,
        Err(e) => {
            bad(format!("server discovery for {name} failed: {e}"));
            return Ok(());
        }
    };
    let host = split_server_name(name).map_or(name.to_owned(), |(h, _)| h.to_string());
    let well_known_url = format!("https://{host}/.well-known/matrix/server");
    let delegated = match &route.well_known {
        None => {
            crate::outln!(
                "  {name} is an IP address or has a port: no .well-known lookup, no SRV"
            )?;
            None
        }
        Some(WellKnownOutcome::Delegated(d)) => {
            crate::outln!("  {well_known_url} delegates to {d}")?;
            Some(d.clone())
        }
        Some(WellKnownOutcome::Invalid(e)) | Some(WellKnownOutcome::Unreachable(e)) => {
            crate::outln!("  {well_known_url}: {e}, so no delegation")?;
            None
        }
    };
    // The configured delegation should be what the world sees.
    let own_name = args.name.as_deref().is_none_or(|n| n == config.server_name);
    if let (true, Some(configured), Some(outcome)) =
        (own_name, &config.well_known.server, &route.well_known)
    {
        match outcome {
            WellKnownOutcome::Delegated(d) if d != configured => bad(format!(
                "the configuration delegates to {configured} ([well_known] server), but \
                 {well_known_url} says {d}: another web server answers there"
            )),
            WellKnownOutcome::Delegated(_) => {}
            WellKnownOutcome::Invalid(e) | WellKnownOutcome::Unreachable(e) => bad(format!(
                "[well_known] server = {configured} is configured, but {well_known_url} does \
                 not deliver it ({e}): Hearth must answer on port 443 of {host}, or the web \
                 server there must serve or forward /.well-known/matrix/server"
            )),
        }
    }
    let targets: Vec<String> = route
        .targets
        .iter()
        .map(|(h, p)| format!("{}:{p}", h.to_string().trim_end_matches('.')))
        .collect();
    if let Some(srv) = &route.srv {
        crate::outln!("  SRV {srv} gives {}", targets.join(", "))?;
    }
    crate::outln!(
        "  connects to {}; the certificate must be valid for {}; Host: {}",
        targets.join(", "),
        route.tls_name,
        route.host_header
    )?;
    let who = match (&delegated, &route.srv) {
        (_, Some(srv)) => format!("the SRV record {srv} points to"),
        (Some(_), None) => "the well-known delegation points to".to_owned(),
        (None, None) => format!("{name} means"),
    };
    for (i, (target, port)) in route.targets.iter().enumerate() {
        let shown = format!("{}:{port}", target.to_string().trim_end_matches('.'));
        let addrs = match addresses(outbound, args, target, *port).await {
            Ok(addrs) => addrs,
            Err(e) => {
                bad(format!("{who} {shown}, but {e}"));
                continue;
            }
        };
        for addr in addrs {
            if !IpPolicy::default().permits(addr.ip()) && args.connect.is_none() {
                crate::outln!(
                    "  note: {addr} is not a public address; servers on the internet cannot \
                     reach it"
                )?;
            }
            if fetch_keys(&route, addr, &shown, &who, name, roots, bad).await? {
                return Ok(());
            }
        }
        if i + 1 < route.targets.len() {
            crate::outln!("  trying the next target")?;
        }
    }
    Ok(())
}

/// The addresses to try for one target: `--connect`, the IP, or the name's A/AAAA records.
async fn addresses(
    outbound: &Outbound,
    args: &CheckArgs,
    target: &Host,
    port: u16,
) -> Result<Vec<SocketAddr>, String> {
    if let Some(addr) = args.connect {
        return Ok(vec![addr]);
    }
    match target {
        Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, port)]),
        Host::Name(name) => {
            let ips = outbound
                .lookup(name)
                .await
                .map_err(|_| format!("{} does not resolve", name.trim_end_matches('.')))?;
            Ok(ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect())
        }
    }
}

/// Fetches and checks our keys at `addr`; true when the server was reached (whatever the
/// keys said), false to try the next address.
async fn fetch_keys(
    route: &Route,
    addr: SocketAddr,
    shown: &str,
    who: &str,
    name: &str,
    roots: &rustls::RootCertStore,
    bad: &mut impl FnMut(String),
) -> Result<bool, String> {
    let tls_name = match &route.tls_name {
        Host::Ip(ip) => ip.to_string(),
        Host::Name(n) => n.clone(),
    };
    let response = https_get_as(
        addr,
        &tls_name,
        &route.host_header,
        roots.clone(),
        "/_matrix/key/v2/server",
        &["http/1.1"],
    )
    .await;
    let r = match response {
        Ok(r) => r,
        Err(HttpsError::Connect(e)) => {
            bad(format!(
                "{who} {shown}, but nothing listens there ({addr}: {e})"
            ));
            return Ok(false);
        }
        Err(HttpsError::WrongName { presented }) => {
            let names = if presented.is_empty() {
                "no name".to_owned()
            } else {
                presented.join(", ")
            };
            bad(format!(
                "the certificate at {addr} is for {names}, not {tls_name}: other servers \
                 refuse it; get a certificate for {tls_name}"
            ));
            return Ok(true);
        }
        Err(HttpsError::Tls(e)) => {
            bad(format!("TLS with {addr} as {tls_name}: {e}"));
            return Ok(true);
        }
        Err(HttpsError::Other(e)) => {
            bad(format!("{addr}: {e}"));
            return Ok(true);
        }
    };
    let days = (r.not_after - now_secs()) / 86_400;
    crate::outln!(
        "  {addr}: certificate valid for {} (expires in {days} days)",
        r.names.join(", ")
    )?;
    if days < 14 {
        bad(format!("the federation certificate expires in {days} days"));
    }
    if r.status != 200 {
        bad(format!(
            "{addr} answers /_matrix/key/v2/server with HTTP {}: this port does not serve \
             Hearth's federation API (a reverse proxy must forward /_matrix/key/ and \
             /_matrix/federation/)",
            r.status
        ));
        return Ok(true);
    }
    match check_key_response(r.body.as_bytes(), name, now_secs() * 1000) {
        Ok(summary) => crate::outln!("  /_matrix/key/v2/server: {summary}")?,
        Err(problem) => bad(problem),
    }
    Ok(true)
}

/// Checks a `/_matrix/key/v2/server` answer for `name`: JSON, its `server_name`, not
/// expired at `now_ms`, signed by `name` with one of its `verify_keys`. A summary, or what
/// is wrong.
pub fn check_key_response(body: &[u8], name: &str, now_ms: i64) -> Result<String, String> {
    let object: CanonicalJsonObject = serde_json::from_slice(body)
        .map_err(|e| format!("the key response is not a canonical JSON object: {e}"))?;
    let server_name = match object.get("server_name") {
        Some(CanonicalJsonValue::String(s)) => s.clone(),
        _ => return Err("the key response has no server_name".into()),
    };
    if server_name != name {
        return Err(format!(
            "the key response is for another server name: {server_name}, not {name} (this \
             address serves another server, or server_name differs from what was deployed)"
        ));
    }
    let valid_until = match object.get("valid_until_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => i64::from(*ts),
        _ => return Err("the key response has no valid_until_ts".into()),
    };
    if valid_until <= now_ms {
        return Err(format!(
            "the published keys expired {} minutes ago (valid_until_ts)",
            (now_ms - valid_until) / 60_000
        ));
    }
    let mut keys = BTreeMap::new();
    if let Some(CanonicalJsonValue::Object(verify_keys)) = object.get("verify_keys") {
        for (id, key) in verify_keys {
            let CanonicalJsonValue::Object(key) = key else {
                continue;
            };
            if let Some(CanonicalJsonValue::String(k)) = key.get("key") {
                let k = Base64::parse(k)
                    .map_err(|_| format!("verify key {id} is not unpadded base64"))?;
                keys.insert(id.clone(), k);
            }
        }
    }
    if keys.is_empty() {
        return Err("the key response has no verify_keys".into());
    }
    // Only our own signature counts here (a notary's would need its keys).
    let ours = match object.get("signatures") {
        Some(CanonicalJsonValue::Object(sigs)) => sigs.get(name).cloned(),
        _ => None,
    };
    let Some(ours) = ours else {
        return Err(format!("the key response is not signed by {name}"));
    };
    let mut signed = object.clone();
    signed.insert(
        "signatures".into(),
        CanonicalJsonValue::Object([(name.to_owned(), ours)].into_iter().collect()),
    );
    let key_map = [(name.to_owned(), keys.clone())].into_iter().collect();
    ruma::signatures::verify_json(&key_map, &signed).map_err(|e| {
        format!("the self-signature of the key response does not verify ({e}): the keys served do not match the signing key")
    })?;
    let ids: Vec<&str> = keys.keys().map(String::as_str).collect();
    Ok(format!(
        "keys {} for {name}, self-signature valid, valid for {} more hours",
        ids.join(", "),
        (valid_until - now_ms) / 3_600_000
    ))
}
