//! Who is on the other end of a request: the TCP peer, or, when the peer is one of
//! `TRUSTED_PROXIES`, the address the proxy forwarded. Also the keys per-address
//! limits count under: an IPv4 address, or an IPv6 address's /64 (one host or
//! home network usually holds a whole /64, so rotating inside it changes nothing),
//! and beside it the /56 and the /48 that hold it (an ISP customer commonly has a
//! /56, 256 /64s, and a site a /48: limited per /64 alone, they would be 256 or
//! 65,536 times weaker for them).

use std::net::{IpAddr, SocketAddr};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderMap, request::Parts},
};

use crate::{
    config::{Cidr, mask},
    state::AppState,
};

/// The client's address; `None` when the listener gave no peer address.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub Option<IpAddr>);

impl ClientIp {
    /// The key per-address limits are counted under.
    pub fn limit_key(&self) -> String {
        self.0.map(limit_key).unwrap_or_else(|| "unknown".into())
    }

    /// The keys of every network the sign-in limits count this client under.
    pub fn limit_keys(&self) -> LimitKeys {
        match self.0 {
            Some(ip) => limit_keys(ip),
            None => LimitKeys { address: "unknown".into(), net56: None, net48: None },
        }
    }

    /// The address as logged and audited.
    pub fn to_log(&self) -> String {
        self.0.map(|ip| ip.to_string()).unwrap_or_else(|| "unknown".into())
    }
}

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        Ok(ClientIp(peer.map(|p| resolve(p, &parts.headers, &state.config.trusted_proxies))))
    }
}

/// The client behind `peer`. A forwarded address is believed only from a trusted
/// peer: walking the chain from the right (the hop nearest us), the first address
/// outside the trusted ranges is the client, since everything left of it was written
/// by the client itself. `X-Forwarded-For` is read when present, else `Forwarded`
/// (RFC 7239). An entry that is not an address (`unknown`, an obfuscated name)
/// stops the walk at the last trusted hop.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let chain = forwarded_chain(headers);
    let mut client = peer;
    for hop in chain.iter().rev() {
        let Some(ip) = hop else { break };
        client = ip.to_canonical();
        if !is_trusted(client) {
            break;
        }
    }
    client
}

/// The forwarded addresses, left (farthest) to right (nearest); `None` for an entry
/// that is not an address.
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let values = |name: &str| -> Vec<String> {
        headers.get_all(name).iter().map(|v| v.to_str().map(str::to_string).unwrap_or_default()).collect()
    };
    let xff = values("x-forwarded-for");
    if !xff.is_empty() {
        return xff.iter().flat_map(|v| v.split(',')).map(|e| parse_node(e.trim())).collect();
    }
    values("forwarded")
        .iter()
        .flat_map(|v| v.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then(|| parse_node(v.trim().trim_matches('"')))
            })
        })
        .collect()
}

/// `192.0.2.1`, `192.0.2.1:8080`, `2001:db8::1` or `[2001:db8::1]:8080`.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    text.parse::<SocketAddr>().ok().map(|s| s.ip())
}

/// The network one client holds: the IPv4 address itself (IPv4-mapped IPv6
/// included), or the /64 of an IPv6 address (one home or host network holds a whole
/// /64, so rotating inside it changes nothing). What per-client limits count by.
pub fn client_network(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        v4 @ IpAddr::V4(_) => v4,
        v6 => mask(v6, 64),
    }
}

/// The key an address's sign-in failures count under: [`client_network`], written
/// with `/64` for IPv6.
pub fn limit_key(ip: IpAddr) -> String {
    match client_network(ip) {
        v4 @ IpAddr::V4(_) => v4.to_string(),
        v6 => format!("{v6}/64"),
    }
}

/// The wider IPv6 networks limited beside the /64, with how many times the /64's
/// allowance each gets: a /56 (an ISP customer's usual share) 4 times, a /48 (a
/// site's) 8 times. IPv4 has none: an address is one client there.
pub const WIDER_V6: [(u8, usize); 2] = [(56, 4), (48, 8)];

/// Every network per-client limits count `ip` under, narrowest first, each with its
/// prefix length: the IPv4 address (`/32`), or the IPv6 /64 and the networks of
/// [`WIDER_V6`].
pub fn client_networks(ip: IpAddr) -> Vec<(IpAddr, u8)> {
    match client_network(ip) {
        v4 @ IpAddr::V4(_) => vec![(v4, 32)],
        v6 => std::iter::once((v6, 64)).chain(WIDER_V6.iter().map(|&(bits, _)| (mask(v6, bits), bits))).collect(),
    }
}

/// The keys a sign-in attempt counts under: [`limit_key`], and for IPv6 the /56
/// and /48 that hold it, written like `2001:db8:1:200::/56`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitKeys {
    pub address: String,
    pub net56: Option<String>,
    pub net48: Option<String>,
}

/// The [`LimitKeys`] of `ip`.
pub fn limit_keys(ip: IpAddr) -> LimitKeys {
    let wider = |bits: u8| match ip.to_canonical() {
        IpAddr::V4(_) => None,
        v6 => Some(format!("{}/{bits}", mask(v6, bits))),
    };
    LimitKeys { address: limit_key(ip), net56: wider(56), net48: wider(48) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn trusted(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| Cidr::parse(c).unwrap()).collect()
    }

    #[test]
    fn ipv6_is_keyed_by_its_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(limit_key(ip("203.0.113.9")), "203.0.113.9");
        assert_eq!(limit_key(ip("::ffff:203.0.113.9")), "203.0.113.9");
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")), "2001:db8:1:2::/64");
        assert_eq!(limit_key(ip("2001:db8:1:2::1")), limit_key(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(limit_key(ip("2001:db8:1:2::1")), limit_key(ip("2001:db8:1:3::1")));
        assert_eq!(ClientIp(None).limit_key(), "unknown");
        let keys = limit_keys(ip("2001:db8:1:2ff:aaaa::1"));
        assert_eq!(keys.address, "2001:db8:1:2ff::/64");
        assert_eq!(keys.net56.as_deref(), Some("2001:db8:1:200::/56"));
        assert_eq!(keys.net48.as_deref(), Some("2001:db8:1::/48"));
        assert_eq!(limit_keys(ip("::ffff:203.0.113.9")).net56, None);
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_peers() {
        let proxies = trusted(&["10.0.0.0/8", "::1"]);
        let h = headers(&[("x-forwarded-for", "198.51.100.7")]);
        // An untrusted peer: its header is ignored.
        assert_eq!(resolve(ip("203.0.113.5"), &h, &proxies), ip("203.0.113.5"));
        assert_eq!(resolve(ip("203.0.113.5"), &h, &[]), ip("203.0.113.5"));
        // A trusted peer: the forwarded client.
        assert_eq!(resolve(ip("10.1.1.1"), &h, &proxies), ip("198.51.100.7"));
        assert_eq!(resolve(ip("::1"), &h, &proxies), ip("198.51.100.7"));
        assert_eq!(resolve(ip("::ffff:10.1.1.1"), &h, &proxies), ip("198.51.100.7"), "mapped IPv4 peer");
        // No header from a trusted peer: the peer.
        assert_eq!(resolve(ip("10.1.1.1"), &HeaderMap::new(), &proxies), ip("10.1.1.1"));
    }

    #[test]
    fn the_right_most_untrusted_address_is_the_client() {
        let proxies = trusted(&["10.0.0.0/8"]);
        // The client wrote a fake left part; the proxies appended the real one.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.0.0.2")]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &proxies), ip("198.51.100.7"));
        // Several header lines are one list, in order.
        let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-for", "198.51.100.8:5555")]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &proxies), ip("198.51.100.8"));
        // All trusted: the left-most.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.2")]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &proxies), ip("10.9.9.9"));
        // Garbage stops the walk at the last trusted hop.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, unknown, 10.0.0.2")]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &proxies), ip("10.0.0.2"));
        let h = headers(&[("x-forwarded-for", "")]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &proxies), ip("10.0.0.1"));
    }

    #[test]
    fn the_forwarded_header_is_read_when_there_is_no_x_forwarded_for() {
        let proxies = trusted(&["10.0.0.0/8"]);
        let h = headers(&[("forwarded", r#"for=1.2.3.4, for="[2001:db8:cafe::17]:4711";proto=https;by=10.0.0.9"#)]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &proxies), ip("2001:db8:cafe::17"));
        let h = headers(&[("forwarded", "proto=http;For=198.51.100.9:80")]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &proxies), ip("198.51.100.9"));
        let h = headers(&[("forwarded", "for=_hidden, for=10.0.0.3")]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &proxies), ip("10.0.0.3"));
        // X-Forwarded-For wins when both are present.
        let h = headers(&[("forwarded", "for=1.1.1.1"), ("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &proxies), ip("198.51.100.7"));
    }
}
