//! Token-bucket rate limiting. Every request is charged to exactly one bucket: the user's when
//! it carries a valid access token, otherwise the client IP's — so nothing is exempt by
//! accident, and a household behind one NAT address is not limited as one user once logged in.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use ruma::OwnedUserId;

/// The network a client address stands for when charging or backing off clients: the address
/// itself for IPv4, its /64 for IPv6. A single IPv6 host usually owns a whole /64 (SLAAC,
/// privacy addresses) and can send from any address in it, so keying by the full address
/// would give it a fresh bucket (and a fresh failed-login record) per request.
pub fn network(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Buckets keyed by `K`. The map lock protects only the bucket arithmetic (no I/O under it).
pub struct Buckets<K> {
    rate: Rate,
    map: Mutex<HashMap<K, Bucket>>,
}

/// Above this many tracked keys, full (idle) buckets are dropped: a full bucket carries no
/// information, so memory stays bounded by the number of recently active clients.
const PRUNE_ABOVE: usize = 4096;

impl<K: Hash + Eq + Clone> Buckets<K> {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token, or returns how long until one is available.
    pub fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let Rate { per_second, burst } = self.rate;
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > PRUNE_ABOVE {
            map.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * per_second
                    < f64::from(burst)
            });
        }
        let bucket = map.entry(key.clone()).or_insert(Bucket {
            tokens: f64::from(burst),
            updated: now,
        });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(f64::from(burst));
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }
}

pub struct RateLimiter {
    enabled: bool,
    users: Buckets<OwnedUserId>,
    ips: Buckets<IpAddr>,
}

impl RateLimiter {
    pub fn new(enabled: bool, per_user: Rate, per_ip: Rate) -> Self {
        Self {
            enabled,
            users: Buckets::new(per_user),
            ips: Buckets::new(per_ip),
        }
    }

    /// `Err(retry_after)` when the caller is over its limit.
    pub fn check(&self, user: Option<&OwnedUserId>, ip: IpAddr) -> Result<(), Duration> {
        if !self.enabled {
            return Ok(());
        }
        let now = Instant::now();
        match user {
            Some(user) => self.users.take(user, now),
            None => self.ips.take(&network(ip), now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills() {
        let buckets = Buckets::new(Rate {
            per_second: 10.0,
            burst: 3,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(buckets.take(&1, t0).is_ok());
        }
        let wait = buckets.take(&1, t0).unwrap_err();
        assert!(wait > Duration::from_millis(50) && wait <= Duration::from_millis(100));
        assert!(buckets.take(&2, t0).is_ok(), "keys are independent");
        assert!(buckets.take(&1, t0 + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn ipv6_clients_are_charged_per_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(network(ip("2001:db8:1:2:a::1")), ip("2001:db8:1:2::"));
        assert_eq!(network(ip("2001:db8:1:2:ffff::9")), ip("2001:db8:1:2::"));
        assert_ne!(network(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(network(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(network(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }
}
