//! Where a webhook may go. An org admin chooses the URL, so the server must not
//! become their way into the network it runs in (SSRF): loopback, private,
//! link-local (cloud metadata), shared, multicast and reserved addresses are
//! refused unless `WEBHOOK_ALLOW_PRIVATE` is set. The check is made on the URL when
//! it is saved, and again on every address its host resolves to at each delivery,
//! by the resolver the HTTP client connects through, so a name that later points
//! inside (DNS rebinding) is refused too.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether `ip` is a public unicast address a webhook may go to.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address that counts.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public_v4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32));
            }
            // Local-use NAT64 (64:ff9b:1::/48) and IPv4-translated (::ffff:0:a.b.c.d)
            // addresses lead wherever their network sends them: never public here.
            if s[..3] == [0x64, 0xff9b, 1] || s[..6] == [0, 0, 0, 0, 0xffff, 0] {
                return false;
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local, fd00:ec2::254 (metadata) included
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x2002) // 6to4: carries an IPv4 address of any kind
                || (s[0] == 0x2001 && s[1] == 0) // Teredo
                || s[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || a == 0 // "this network"
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254.169.254, the cloud metadata service, included
        || (a == 100 && (64..128).contains(&b)) // shared address space (carrier NAT)
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || ip.is_documentation()
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || ip.is_multicast()
        || a >= 240) // reserved, broadcast included
}

/// Checks an endpoint URL as it is saved: http or https, a host, no user name or
/// password in it, at most 2,000 characters; an IP address for a host must be
/// public (unless `allow_private`), and so must `localhost`. Returns the URL as it
/// will be stored, or what is wrong with it.
pub fn check_url(raw: &str, allow_private: bool) -> Result<String, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("Enter the URL that should receive the events.".into());
    }
    if raw.len() > MAX_URL {
        return Err("The URL is longer than 2,000 characters.".into());
    }
    let url = reqwest::Url::parse(raw).map_err(|e| format!("That is not a URL ({e})."))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("The URL must start with https:// (or http://).".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("The URL must not hold a user name or password; the signature proves who sends.".into());
    }
    let Some(host) = url.host() else { return Err("The URL has no host.".into()) };
    if !allow_private {
        let ip = match host {
            url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            url::Host::Domain(name) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if name == "localhost" || name.ends_with(".localhost") {
                    return Err("The URL points at this machine; webhooks go to public addresses only.".into());
                }
                None
            }
        };
        if let Some(ip) = ip.filter(|ip| !is_public(*ip)) {
            return Err(format!("{ip} is not a public address; webhooks go to public addresses only."));
        }
    }
    let url = url.to_string();
    if url.len() > MAX_URL {
        return Err("The URL is longer than 2,000 characters once encoded.".into());
    }
    Ok(url)
}

/// The longest URL an endpoint may have (the table's check says the same).
const MAX_URL: usize = 2000;

/// The URL as it may be written where more people read than its org's admins (the
/// audit log, which is in the org's export file, the server's log, mails): the
/// scheme, host and port only. A path or query can hold a token (a chat service's
/// incoming-webhook URL is its own credential).
pub fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}/…", u.scheme()),
            (Some(host), None) => format!("{}://{host}/…", u.scheme()),
            _ => "(a URL)".into(),
        },
        Err(_) => "(a URL)".into(),
    }
}

/// The HTTP client's resolver: the system's answers, less every address that is
/// not public (unless `allow_private`). A name with none left fails to resolve with
/// a message that says why.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            // A name that does not resolve reads as one that resolves inside: which
            // internal names exist is not for the attempt log to tell.
            let all: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await.map(Iterator::collect).unwrap_or_default();
            let allowed: Vec<SocketAddr> = all.iter().copied().filter(|a| allow_private || is_public(a.ip())).collect();
            if allowed.is_empty() {
                // The same words whether the name resolved inside or not at all, and
                // no address: the attempt log is read by the org's admins, and must
                // not map the network the server sits in.
                let e: Box<dyn std::error::Error + Send + Sync> =
                    format!("refused: {host} does not resolve to a public address").into();
                return Err(e);
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// The address of a URL whose host is an IP literal (the client does not resolve
/// those, so the resolver never sees them).
pub fn literal_ip(url: &reqwest::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.0.170",
            "198.18.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2001:db8::1",
            "2002:7f00:1::",
            "::127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private} must be refused");
        }
        for local in ["64:ff9b:1::a00:1", "::ffff:0:a00:1"] {
            assert!(!is_public(local.parse().unwrap()), "{local} must be refused");
        }
        assert_eq!(redacted("https://hooks.slack.com/services/T0/B0/secret?x=1"), "https://hooks.slack.com/…");
        assert_eq!(redacted("http://127.0.0.1:9000/hook"), "http://127.0.0.1:9000/…");
        for public in ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"] {
            assert!(is_public(public.parse().unwrap()), "{public} must pass");
        }
    }

    #[test]
    fn urls_are_checked_as_they_are_saved() {
        assert_eq!(check_url(" https://hooks.example.com/x?y=1 ", false).unwrap(), "https://hooks.example.com/x?y=1");
        for (bad, says) in [
            ("", "Enter the URL"),
            ("ftp://example.com/", "must start with https://"),
            ("not a url", "not a URL"),
            ("https://user:pw@example.com/", "user name or password"),
            ("http://127.0.0.1:8080/", "not a public address"),
            ("http://[::1]/", "not a public address"),
            ("http://169.254.169.254/latest/meta-data/", "not a public address"),
            ("http://0x7f000001/", "not a public address"),
            ("http://localhost:9000/", "this machine"),
            ("http://api.localhost./", "this machine"),
        ] {
            let e = check_url(bad, false).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(check_url(&format!("https://example.com/{}", "a".repeat(2000)), false).is_err());
        // Short as typed, too long once percent-encoded.
        let e = check_url(&format!("https://example.com/{}", "€".repeat(600)), false).unwrap_err();
        assert!(e.contains("once encoded"), "{e}");
        assert!(check_url("http://127.0.0.1:8080/hook", true).is_ok(), "allowed for development and tests");
    }
}
