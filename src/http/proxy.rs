//! The client's address behind reverse proxies. `X-Forwarded-For` and `Forwarded` (RFC 7239)
//! are believed only from a peer listed in `trusted_proxies`: anybody else could write any
//! address there and pick their own rate-limit bucket. The client is the right-most address
//! of the chain that is not itself a trusted proxy (each proxy appends the address it saw,
//! so everything left of that is what the client claimed).
//!
//! A proxy sets one of the two headers and passes the other through as the client sent it
//! (nginx and Caddy set `X-Forwarded-For` and forward a client's `Forwarded` untouched), so
//! neither header may be preferred blindly: whichever one the proxy does not write is the
//! client's to choose. When a request carries both and they name different clients, the
//! client is unknown and the request is charged to the proxy itself.

use std::net::IpAddr;

use http::HeaderMap;

use crate::config::Cidr;

pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    pub fn new(cidrs: Vec<Cidr>) -> Self {
        Self(cidrs)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|cidr| cidr.contains(ip))
    }

    /// The address requests from `peer` with `headers` are charged to and logged as.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let forwarded = headers
            .contains_key(http::header::FORWARDED)
            .then(|| self.walk(peer, &forwarded_chain(headers)));
        let x_forwarded_for = headers
            .contains_key("x-forwarded-for")
            .then(|| self.walk(peer, &x_forwarded_for_chain(headers)));
        match (forwarded, x_forwarded_for) {
            (Some(a), Some(b)) if a != b => {
                log::debug!("Forwarded ({a}) and X-Forwarded-For ({b}) disagree; using {peer}");
                peer
            }
            (Some(client), _) | (None, Some(client)) => client,
            (None, None) => peer,
        }
    }

    /// The client a forwarding `chain` names, as seen from the trusted `peer`.
    fn walk(&self, peer: IpAddr, chain: &[Option<IpAddr>]) -> IpAddr {
        let mut client = peer;
        for hop in chain.iter().rev() {
            match hop {
                // An address hidden (`unknown`, obfuscated) or garbled: the trusted hop that
                // reported it is the last one known.
                None => break,
                Some(ip) => {
                    client = ip.to_canonical();
                    if !self.trusts(client) {
                        break;
                    }
                }
            }
        }
        client
    }
}

/// The `for=` addresses of every `Forwarded` header, in order (`None` for one that is not an
/// IP address).
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all(http::header::FORWARDED)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("").split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_node(value.trim().trim_matches('"')))
            })
        })
        .collect()
}

/// The addresses of every `X-Forwarded-For` header, in order.
fn x_forwarded_for_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("").split(','))
        .map(|hop| parse_node(hop.trim()))
        .collect()
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1` or
/// `[2001:db8::1]:4711`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Ok(addr) = node.parse::<std::net::SocketAddr>() {
        return Some(addr.ip());
    }
    node.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(ip, _)| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|c| c.parse().unwrap()).collect())
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let p = proxies(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(p.client_ip(ip("192.0.2.9"), &h), ip("192.0.2.9"));
        assert_eq!(proxies(&[]).client_ip(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn right_most_untrusted_address_is_the_client() {
        let p = proxies(&["10.0.0.0/8", "::1/128"]);
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.1.1")]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("198.51.100.7"));
        // Several header lines form one list.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.7:5555"),
        ]);
        assert_eq!(p.client_ip(ip("::1"), &h), ip("198.51.100.7"));
        // Only trusted hops: the left-most is as far as can be known.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("10.9.9.9"));
        // A garbled hop stops the walk at the trusted proxy that wrote it.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, bogus, 10.1.1.1")]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("10.1.1.1"));
        // No header: the proxy itself.
        assert_eq!(
            p.client_ip(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn forwarded_header() {
        let p = proxies(&["127.0.0.1/32"]);
        let h = headers(&[(
            "forwarded",
            "for=6.6.6.6;proto=https, For=\"[2001:db8:cafe::17]:4711\";by=10.0.0.1",
        )]);
        assert_eq!(p.client_ip(ip("127.0.0.1"), &h), ip("2001:db8:cafe::17"));
        // Both headers: believed only when they agree, since a proxy sets one and passes the
        // other on from the client.
        let h = headers(&[
            ("forwarded", "for=192.0.2.43"),
            ("x-forwarded-for", "6.6.6.6"),
        ]);
        assert_eq!(p.client_ip(ip("127.0.0.1"), &h), ip("127.0.0.1"));
        let h = headers(&[
            ("forwarded", "for=192.0.2.43"),
            ("x-forwarded-for", "192.0.2.43"),
        ]);
        assert_eq!(p.client_ip(ip("127.0.0.1"), &h), ip("192.0.2.43"));
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(p.client_ip(ip("127.0.0.1"), &h), ip("127.0.0.1"));
        // An IPv4 peer seen through an IPv6 socket is still the trusted proxy.
        let h = headers(&[("forwarded", "for=192.0.2.43")]);
        assert_eq!(p.client_ip(ip("::ffff:127.0.0.1"), &h), ip("192.0.2.43"));
    }
}
