//! The outbound IP policy: which addresses the server may connect to when it fetches a URL that
//! somebody else chose (a pusher's gateway, later a federation peer or a URL preview).
//!
//! Without it, a user could make the server talk to its own loopback services, the home
//! network behind it, or a cloud metadata endpoint (server-side request forgery). So every
//! address that is not globally reachable is refused unless `[outbound] allow_networks` lists
//! it. IPv6 forms that carry an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64 `64:ff9b::/96`,
//! 6to4 `2002::/16`) are judged by that IPv4 address, since that is where the packets end up.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::Cidr;

/// The allow list plus the built-in refusals. Cheap to clone; immutable after start.
#[derive(Debug, Clone, Default)]
pub struct IpPolicy {
    allow: Vec<Cidr>,
}

/// IPv4 blocks that are not globally reachable (IANA special-purpose registry), as
/// (network, prefix length).
const REFUSED_V4: &[([u8; 4], u8)] = &[
    ([0, 0, 0, 0], 8),       // "this network", incl. the unspecified 0.0.0.0
    ([10, 0, 0, 0], 8),      // private (RFC 1918)
    ([100, 64, 0, 0], 10),   // carrier-grade NAT (RFC 6598)
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link-local (cloud metadata endpoints live here)
    ([172, 16, 0, 0], 12),   // private
    ([192, 0, 0, 0], 24),    // IETF protocol assignments (DS-Lite, NAT64 discovery, ...)
    ([192, 0, 2, 0], 24),    // documentation (TEST-NET-1)
    ([192, 88, 99, 0], 24),  // deprecated 6to4 relay anycast
    ([192, 168, 0, 0], 16),  // private
    ([198, 18, 0, 0], 15),   // benchmarking
    ([198, 51, 100, 0], 24), // documentation (TEST-NET-2)
    ([203, 0, 113, 0], 24),  // documentation (TEST-NET-3)
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, incl. the limited broadcast 255.255.255.255
];

/// IPv6 blocks that are not globally reachable and carry no IPv4 address to judge instead.
const REFUSED_V6: &[(u128, u8)] = &[
    (0, 128),                     // unspecified ::
    (1, 128),                     // loopback ::1
    (0x0064_ff9b_0001 << 80, 48), // local-use NAT64 (RFC 8215)
    (0x0100 << 112, 64),          // discard-only
    (0x2001 << 112, 32),          // Teredo: the real peer is obfuscated
    (0x2001_0002 << 96, 48),      // benchmarking
    (0x2001_0db8 << 96, 32),      // documentation
    (0x3fff << 112, 20),          // documentation (RFC 9637)
    (0xfc00 << 112, 7),           // unique local (ULA)
    (0xfe80 << 112, 10),          // link-local
    (0xfec0 << 112, 10),          // deprecated site-local
    (0xff00 << 112, 8),           // multicast
];

impl IpPolicy {
    /// A policy that allows, besides public addresses, the blocks in `allow`.
    pub fn new(allow: Vec<Cidr>) -> Self {
        IpPolicy { allow }
    }

    /// Whether the server may connect to `ip`. An address in the allow list is permitted
    /// (also when it reaches an IPv4 address through a mapped or NAT64 form that the list
    /// names); otherwise only globally reachable addresses are.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_v4(v6),
            IpAddr::V4(_) => None,
        };
        let listed = |ip: IpAddr| self.allow.iter().any(|c| c.contains(ip));
        if listed(ip) || embedded.is_some_and(|v4| listed(v4.into())) {
            return true;
        }
        match (ip, embedded) {
            (_, Some(v4)) => public_v4(v4),
            (IpAddr::V4(v4), None) => public_v4(v4),
            (IpAddr::V6(v6), None) => public_v6(v6),
        }
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let ip = u32::from(ip);
    !REFUSED_V4.iter().any(|&(net, prefix)| {
        let shift = 32 - u32::from(prefix);
        ip >> shift == u32::from_be_bytes(net) >> shift
    })
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let ip = u128::from(ip);
    !REFUSED_V6.iter().any(|&(net, prefix)| {
        let shift = 128 - u32::from(prefix);
        ip.checked_shr(shift).unwrap_or(0) == net.checked_shr(shift).unwrap_or(0)
    })
}

/// The IPv4 address an IPv6 address delivers to, if it is one of the forms that embed one:
/// IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d` (deprecated, but a stack may
/// still route it), NAT64 `64:ff9b::a.b.c.d`, and 6to4 `2002:aabb:ccdd::/48`. `::` and `::1`
/// are not IPv4-compatible addresses and are judged as IPv6.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from(bits as u32);
    match bits >> 32 {
        0xffff | 0x0064_ff9b_0000_0000_0000_0000 => Some(low32),
        0 if bits > 1 => Some(low32),
        _ if bits >> 112 == 0x2002 => Some(Ipv4Addr::from((bits >> 80) as u32)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permits(policy: &IpPolicy, ip: &str) -> bool {
        policy.permits(ip.parse().unwrap())
    }

    #[test]
    fn public_addresses_are_allowed() {
        let policy = IpPolicy::default();
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255", // just below CGNAT
            "100.128.0.0",    // just above CGNAT
            "172.15.255.255", // just below 172.16/12
            "172.32.0.0",     // just above
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "2001:4860::8888", // Google, in 2001::/16 but outside Teredo's 2001::/32
            "::ffff:8.8.8.8",
            "64:ff9b::808:808", // NAT64 of 8.8.8.8
            "2002:808:808::1",  // 6to4 of 8.8.8.8
        ] {
            assert!(permits(&policy, ip), "{ip} should be allowed");
        }
    }

    #[test]
    fn each_refused_class_is_refused() {
        let policy = IpPolicy::default();
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "64:ff9b:1::1",
            "100::1",
            "2001::1",
            "2001:2::1",
            "2001:db8::1",
            "3fff::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
        ] {
            assert!(!permits(&policy, ip), "{ip} should be refused");
        }
    }

    #[test]
    fn ipv6_forms_of_ipv4_are_judged_by_their_ipv4() {
        let policy = IpPolicy::default();
        for ip in [
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "::10.1.2.3",
            "64:ff9b::127.0.0.1",
            "64:ff9b::192.168.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",  // 6to4 of 127.0.0.1
            "2002:c0a8:101::", // 6to4 of 192.168.1.1
        ] {
            assert!(!permits(&policy, ip), "{ip} should be refused");
        }
    }

    #[test]
    fn the_allow_list_overrides_the_refusals() {
        let allow = ["127.0.0.0/8", "::1/128", "192.168.1.0/24", "fd00::/8"];
        let policy = IpPolicy::new(allow.iter().map(|c| c.parse().unwrap()).collect());
        for ip in [
            "127.0.0.1",
            "127.3.4.5",
            "::1",
            "192.168.1.77",
            "fd00::5",
            "::ffff:127.0.0.1",  // the mapped form reaches an allowed IPv4
            "64:ff9b::c0a8:10a", // NAT64 of 192.168.1.10
            "8.8.8.8",           // public addresses stay allowed
        ] {
            assert!(permits(&policy, ip), "{ip} should be allowed");
        }
        for ip in [
            "192.168.2.1",
            "10.0.0.1",
            "fe80::1",
            "fc00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!permits(&policy, ip), "{ip} should still be refused");
        }
    }
}
