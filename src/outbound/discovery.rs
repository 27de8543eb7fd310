//! Server discovery: from a server name to the addresses, TLS name and `Host` header of its
//! federation API, as the spec's "Resolving server names" (server-server API) lays it out.
//!
//! | server name | well-known | connect to | certificate / SNI | `Host` |
//! | --- | --- | --- | --- | --- |
//! | IP literal `[:port]` | no | IP, port or 8448 | the IP (no SNI) | the server name |
//! | `host:port` | no | A/AAAA of host, port | host | the server name |
//! | `host`, `m.server` = IP`[:port]` | yes | IP, port or 8448 | the IP (no SNI) | `m.server` |
//! | `host`, `m.server` = `d:port` | yes | A/AAAA of d, port | d | `d:port` |
//! | `host`, `m.server` = `d` | yes | SRV `_matrix-fed._tcp.d.`, `_matrix._tcp.d.`, else d:8448 | d | d |
//! | `host`, no valid well-known | yes | SRV `_matrix-fed._tcp.host.`, `_matrix._tcp.host.`, else host:8448 | host | host |
//!
//! This module holds the decisions (pure, unit-tested with fake lookups); `federation.rs`
//! supplies the real lookups (the well-known fetch through the outbound client, SRV through
//! hickory) and the connection.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::OutboundError;

/// The federation port when neither the server name, the delegation nor SRV gives one.
pub const DEFAULT_PORT: u16 = 8448;
/// How long a valid well-known answer is cached when it has no `Cache-Control: max-age`.
pub const WELL_KNOWN_DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest a valid well-known answer is cached, whatever its headers say.
pub const WELL_KNOWN_MAX_TTL: Duration = Duration::from_secs(48 * 3600);
/// The shortest a valid well-known answer is cached (also with `no-cache`/`max-age=0`): a
/// busy destination would otherwise cost one extra HTTPS request per federation request.
pub const WELL_KNOWN_MIN_TTL: Duration = Duration::from_secs(60);
/// A failed well-known fetch is cached this long the first time, doubling with each further
/// failure in a row up to [`WELL_KNOWN_ERROR_MAX_TTL`].
pub const WELL_KNOWN_ERROR_TTL: Duration = Duration::from_secs(5 * 60);
/// The longest a failed well-known fetch is cached (the spec recommends up to an hour).
pub const WELL_KNOWN_ERROR_MAX_TTL: Duration = Duration::from_secs(3600);
/// Well-known answers kept at most; past it, expired and then soonest-expiring ones go.
pub const WELL_KNOWN_MAX_ENTRIES: usize = 10_000;

/// The host part of a server name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    /// A DNS name, lowercased.
    Name(String),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// Splits a server name (or an `m.server` value) per the spec's grammar: `host[:port]` where
/// host is an IPv4 literal, a `[IPv6]` literal or a DNS name. `None` if it is not one.
pub fn split_server_name(name: &str) -> Option<(Host, Option<u16>)> {
    let (host, port) = if let Some(rest) = name.strip_prefix('[') {
        let (v6, rest) = rest.split_once(']')?;
        (Host::Ip(IpAddr::V6(v6.parse::<Ipv6Addr>().ok()?)), rest)
    } else {
        let (host, rest) = match name.rfind(':') {
            Some(i) => (&name[..i], &name[i..]),
            None => (name, ""),
        };
        let valid = !host.is_empty()
            && host.len() <= 255
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !valid {
            return None;
        }
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) => Host::Name(host.to_ascii_lowercase()),
        };
        (host, rest)
    };
    let port = match port.strip_prefix(':') {
        None if port.is_empty() => None,
        Some(p) if (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok().filter(|p| *p != 0)?)
        }
        _ => return None,
    };
    Some((host, port))
}

/// What `https://<host>/.well-known/matrix/server` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WellKnownOutcome {
    /// A valid answer: the `m.server` value (a valid server name).
    Delegated(String),
    /// An answer that is no valid delegation (a status other than 200, not JSON, no valid
    /// `m.server`, too large, a redirect loop): the server meant it, so discovery goes on
    /// without delegation.
    Invalid(String),
    /// No answer (DNS, connection, TLS, timeout, a 5xx): perhaps passing.
    Unreachable(String),
}

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// The target host name (as DNS wrote it, with its trailing dot).
    pub target: String,
}

/// Where to send a federation request, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Where to connect, in the order to try; names are resolved with A/AAAA.
    pub targets: Vec<(Host, u16)>,
    /// The name the certificate must be valid for; sent as SNI unless it is an IP address.
    pub tls_name: Host,
    /// The `Host` header of every request.
    pub host_header: String,
    /// The well-known answer, if one was asked for (for logs and `hearth check`).
    pub well_known: Option<WellKnownOutcome>,
    /// The SRV name whose records gave the targets, if any.
    pub srv: Option<String>,
}

/// The lookups discovery needs; the real ones are in `federation.rs`, fakes in the tests.
pub trait Lookups {
    /// The (cached) well-known answer of `host` (a DNS name).
    fn well_known(&self, host: &str) -> impl Future<Output = WellKnownOutcome> + Send;
    /// The SRV records of `name` (an FQDN with its trailing dot); empty when there are none.
    /// An error (the DNS server failed) is handled like "none" by discovery.
    fn srv(&self, name: &str) -> impl Future<Output = Result<Vec<SrvRecord>, String>> + Send;
    /// A number in `0..=max`, uniformly, for the SRV weight order.
    fn random(&self, max: u32) -> u32;
}

/// Runs discovery for `server_name`; `default_port` is 8448 except in tests.
pub async fn discover<L: Lookups>(
    server_name: &str,
    lookups: &L,
    default_port: u16,
) -> Result<Route, OutboundError> {
    let (host, port) = split_server_name(server_name).ok_or(OutboundError::InvalidUrl)?;
    let direct = |host: Host, port: u16, host_header: String| Route {
        targets: vec![(host.clone(), port)],
        tls_name: host,
        host_header,
        well_known: None,
        srv: None,
    };
    let name = match (host, port) {
        // Steps 1 and 2: an IP literal, or an explicit port: no well-known, no SRV.
        (Host::Ip(ip), port) => {
            return Ok(direct(
                Host::Ip(ip),
                port.unwrap_or(default_port),
                server_name.to_owned(),
            ))
        }
        (host, Some(port)) => return Ok(direct(host, port, server_name.to_owned())),
        (Host::Name(name), None) => name,
    };
    // Step 3: the well-known delegation.
    let well_known = lookups.well_known(&name).await;
    if let WellKnownOutcome::Delegated(delegated) = &well_known {
        let split = split_server_name(delegated);
        let mut route = match split {
            // 3.1: an IP literal: its port or 8448; `Host` is the delegated value as given.
            Some((Host::Ip(ip), port)) => direct(
                Host::Ip(ip),
                port.unwrap_or(default_port),
                delegated.clone(),
            ),
            // 3.2: a name with a port.
            Some((host, Some(port))) => direct(host, port, delegated.clone()),
            // 3.3 - 3.5: SRV of the delegated name, then its port 8448.
            Some((Host::Name(d), None)) => srv_route(&d, lookups, default_port).await?,
            // Validated when fetched; treated like no delegation if it ever were not.
            None => srv_route(&name, lookups, default_port).await?,
        };
        route.well_known = Some(well_known);
        return Ok(route);
    }
    // Steps 4 - 6: SRV of the server name, then its port 8448.
    let mut route = srv_route(&name, lookups, default_port).await?;
    route.well_known = Some(well_known);
    Ok(route)
}

/// `_matrix-fed._tcp.<name>.`, then the deprecated `_matrix._tcp.<name>.`, then `name:8448`;
/// the certificate and `Host` are `name` in every case.
async fn srv_route<L: Lookups>(
    name: &str,
    lookups: &L,
    default_port: u16,
) -> Result<Route, OutboundError> {
    let bare = name.trim_end_matches('.');
    for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
        let srv_name = format!("{service}.{bare}.");
        let records = match lookups.srv(&srv_name).await {
            Ok(records) => records,
            Err(e) => {
                log::debug!("discovery {bare}: SRV {srv_name}: {e}");
                continue;
            }
        };
        if records.is_empty() {
            continue;
        }
        // RFC 2782: a single record with target "." says the service is not offered here.
        if records.len() == 1 && records[0].target.trim_end_matches('.').is_empty() {
            log::debug!("discovery {bare}: {srv_name} says the service is not available");
            return Err(OutboundError::Dns);
        }
        let targets = order_srv(records, |max| lookups.random(max))
            .into_iter()
            .filter(|r| !r.target.trim_end_matches('.').is_empty())
            .map(|r| (Host::Name(r.target.to_ascii_lowercase()), r.port))
            .collect();
        return Ok(Route {
            targets,
            tls_name: Host::Name(bare.to_owned()),
            host_header: bare.to_owned(),
            well_known: None,
            srv: Some(srv_name),
        });
    }
    Ok(Route {
        targets: vec![(Host::Name(bare.to_owned()), default_port)],
        tls_name: Host::Name(bare.to_owned()),
        host_header: bare.to_owned(),
        well_known: None,
        srv: None,
    })
}

/// Orders SRV records as RFC 2782 says: by priority, and within one priority by a weighted
/// random choice (`random(max)` gives a number in `0..=max`), zero weights first in the draw.
pub fn order_srv(
    mut records: Vec<SrvRecord>,
    mut random: impl FnMut(u32) -> u32,
) -> Vec<SrvRecord> {
    // Stable: equal priorities keep their DNS order; zero weights go first in each group.
    records.sort_by_key(|r| (r.priority, r.weight != 0));
    let mut ordered = Vec::with_capacity(records.len());
    while !records.is_empty() {
        let priority = records[0].priority;
        let end = records
            .iter()
            .take_while(|r| r.priority == priority)
            .count();
        let mut group: Vec<SrvRecord> = records.drain(..end).collect();
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = random(total).min(total);
            let mut running = 0;
            let index = group
                .iter()
                .position(|r| {
                    running += u32::from(r.weight);
                    running >= pick
                })
                .unwrap_or(group.len() - 1);
            ordered.push(group.remove(index));
        }
    }
    ordered
}

/// The `m.server` of a well-known body, validated as a server name.
pub fn parse_well_known(body: &[u8]) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let server = value
        .get("m.server")
        .ok_or("no \"m.server\" in it")?
        .as_str()
        .ok_or("\"m.server\" is not a string")?;
    if split_server_name(server).is_none() {
        return Err(format!("\"m.server\" is not a server name: {server:?}"));
    }
    Ok(server.to_owned())
}

/// Where a redirect from `base` to `location` leads, if that is an `https` URL: an absolute
/// URL, a scheme-relative `//host/path`, an absolute path, or a path relative to `base`'s.
pub fn redirect_target(base: &http::Uri, location: &str) -> Option<http::Uri> {
    let location = location.trim();
    let absolute = if location.contains("://") {
        location.to_owned()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("https://{rest}")
    } else {
        let authority = base.authority()?;
        if location.starts_with('/') {
            format!("https://{authority}{location}")
        } else {
            let dir = base.path().rsplit_once('/').map_or("", |(dir, _)| dir);
            format!("https://{authority}{dir}/{location}")
        }
    };
    let uri: http::Uri = absolute.parse().ok()?;
    (uri.scheme_str() == Some("https") && uri.host().is_some_and(|h| !h.is_empty())).then_some(uri)
}

/// The lifetime `Cache-Control` gives: `max-age` seconds, zero for `no-store`/`no-cache`,
/// `None` when it says neither.
pub fn cache_control_ttl(header: Option<&str>) -> Option<Duration> {
    let mut ttl = None;
    for directive in header?.split(',') {
        let directive = directive.trim().to_ascii_lowercase();
        if directive == "no-store" || directive == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(secs) = directive.strip_prefix("max-age=") {
            ttl = secs
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    ttl
}

/// How long to keep a well-known outcome: valid answers per their headers (default 24 h)
/// within [1 min, 48 h]; failures with an exponential backoff per failure in a row, from
/// 5 min up to 1 h (a definitive answer's own max-age within that range wins).
pub fn well_known_ttl(
    outcome: &WellKnownOutcome,
    header_ttl: Option<Duration>,
    failures: u32,
) -> Duration {
    match outcome {
        WellKnownOutcome::Delegated(_) => header_ttl
            .unwrap_or(WELL_KNOWN_DEFAULT_TTL)
            .clamp(WELL_KNOWN_MIN_TTL, WELL_KNOWN_MAX_TTL),
        WellKnownOutcome::Invalid(_) if header_ttl.is_some_and(|t| !t.is_zero()) => header_ttl
            .unwrap_or_default()
            .clamp(WELL_KNOWN_MIN_TTL, WELL_KNOWN_ERROR_MAX_TTL),
        _ => {
            let doublings = failures.saturating_sub(1).min(16);
            (WELL_KNOWN_ERROR_TTL * (1u32 << doublings)).min(WELL_KNOWN_ERROR_MAX_TTL)
        }
    }
}

#[derive(Debug, Clone)]
struct Cached {
    outcome: WellKnownOutcome,
    expires: Instant,
    /// Failed fetches in a row (for the backoff).
    failures: u32,
}

type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// The well-known answers per host name, bounded. Each host has a slot whose async lock is
/// held while it is fetched, so concurrent requests to a cold destination fetch it once.
pub struct WellKnownCache {
    slots: Mutex<HashMap<Box<str>, Slot>>,
    max_entries: usize,
}

impl WellKnownCache {
    pub fn new(max_entries: usize) -> Self {
        WellKnownCache {
            slots: Mutex::new(HashMap::new()),
            max_entries: max_entries.max(1),
        }
    }

    /// Host names with a slot (cached or being fetched).
    pub fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached outcome for `host` if still fresh at `now`; otherwise `fetch` (which returns
    /// the outcome and the lifetime its `Cache-Control` gives) runs and its outcome is stored.
    /// A passing failure after a valid answer keeps using that answer (rechecked with the
    /// error backoff): the delegated server may well be up while the well-known host is not.
    pub async fn get_or_fetch<F, Fut>(&self, host: &str, now: Instant, fetch: F) -> WellKnownOutcome
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = (WellKnownOutcome, Option<Duration>)>,
    {
        let slot = self.slot(host, now);
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| c.expires > now) {
            return c.outcome.clone();
        }
        let (fetched, header_ttl) = fetch().await;
        let previous = cached.take();
        let failures = match &fetched {
            WellKnownOutcome::Delegated(_) => 0,
            _ => previous.as_ref().map_or(0, |p| p.failures) + 1,
        };
        let ttl = well_known_ttl(&fetched, header_ttl, failures);
        let outcome = match (&fetched, previous) {
            (
                WellKnownOutcome::Unreachable(e),
                Some(Cached {
                    outcome: WellKnownOutcome::Delegated(d),
                    ..
                }),
            ) => {
                log::debug!("discovery {host}: well-known unreachable ({e}); keeping {d}");
                WellKnownOutcome::Delegated(d)
            }
            _ => fetched,
        };
        *cached = Some(Cached {
            outcome: outcome.clone(),
            expires: now + ttl,
            failures,
        });
        outcome
    }

    /// The slot of `host`, made if missing; at the bound, expired entries are dropped first,
    /// then the one expiring soonest. Slots being fetched (locked) are never dropped, so the
    /// bound may be passed by as many hosts as are being fetched at once.
    fn slot(&self, host: &str, now: Instant) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get(host) {
            return slot.clone();
        }
        if slots.len() >= self.max_entries {
            let expiry = |slot: &Slot| slot.try_lock().ok().map(|c| c.as_ref().map(|c| c.expires));
            slots.retain(|_, slot| match expiry(slot) {
                None => true,
                Some(None) => false,
                Some(Some(expires)) => expires > now,
            });
            if slots.len() >= self.max_entries {
                let soonest = slots
                    .iter()
                    .filter_map(|(k, slot)| Some((expiry(slot)??, k.clone())))
                    .min();
                if let Some((_, key)) = soonest {
                    slots.remove(&key);
                }
            }
        }
        slots.entry(host.into()).or_default().clone()
    }
}

#[cfg(test)]
mod tests;
