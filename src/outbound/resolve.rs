//! Name resolution for outbound requests: hickory-resolver on tokio, configured like the
//! system resolver, with `/etc/hosts` honoured.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use super::discovery::SrvRecord;

/// Resolves host names to addresses. Cheap to clone (the resolver shares its cache).
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    /// The system configuration (`/etc/resolv.conf`). When it cannot be read or parsed (a
    /// minimal container), the name servers are the C library's fallback, a local resolver
    /// on `127.0.0.1` / `::1`, rather than a third party chosen for the user; a warning says
    /// so. The hosts file is always consulted first, so `localhost` resolves without DNS.
    pub fn from_system() -> Result<Self, String> {
        let builder = match TokioResolver::builder_tokio() {
            Ok(builder) => builder,
            Err(e) => {
                log::warn!(
                    "outbound DNS: cannot use /etc/resolv.conf ({e}); using a local resolver \
                     on 127.0.0.1 and ::1"
                );
                let servers = [
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                ]
                .into_iter()
                .map(NameServerConfig::udp_and_tcp)
                .collect();
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(servers),
                    TokioRuntimeProvider::default(),
                )
            }
        };
        let mut builder = builder;
        builder.options_mut().use_hosts_file = ResolveHosts::Always;
        let inner = builder
            .build()
            .map_err(|e| format!("outbound DNS resolver: {e}"))?;
        Ok(Resolver { inner })
    }

    /// Only the DNS servers `servers` (UDP and TCP on their ports), for tests of discovery
    /// against a local DNS server; the hosts file is still consulted first.
    pub fn with_name_servers(servers: &[SocketAddr]) -> Result<Self, String> {
        let servers = servers
            .iter()
            .map(|addr| {
                let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                    .into_iter()
                    .map(|mut c| {
                        c.port = addr.port();
                        c
                    })
                    .collect();
                NameServerConfig::new(addr.ip(), true, connections)
            })
            .collect();
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        );
        builder.options_mut().use_hosts_file = ResolveHosts::Always;
        let inner = builder
            .build()
            .map_err(|e| format!("outbound DNS resolver: {e}"))?;
        Ok(Resolver { inner })
    }

    /// The SRV records of `name` (an FQDN with its trailing dot); empty when the name has
    /// none (or does not exist).
    pub async fn srv(&self, name: &str) -> Result<Vec<SrvRecord>, String> {
        match self.inner.srv_lookup(name).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::SRV(srv) => Some(SrvRecord {
                        priority: srv.priority,
                        weight: srv.weight,
                        port: srv.port,
                        target: srv.target.to_ascii(),
                    }),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The addresses of `host` (a name, not an IP literal), in the resolver's preference
    /// order. An empty answer is an error.
    pub async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let lookup = self
            .inner
            .lookup_ip(host)
            .await
            .map_err(|e| e.to_string())?;
        let addrs: Vec<IpAddr> = lookup.iter().collect();
        if addrs.is_empty() {
            return Err("no addresses".into());
        }
        Ok(addrs)
    }
}
