//! `net` host grants: `host`, `*.host`, each with an optional `http://`/`https://` scheme and an
//! optional `:port` (`https://api.example.com:8443`). A bare `host` covers the host and every
//! subdomain, `*.host` only the subdomains; no scheme means either, no port means any, and a
//! scheme without a port means that scheme's default port. A grant that names a single label
//! (`com`, `*.com`, `localhost`: a top-level domain or something that acts as one) is refused,
//! since it would open a whole namespace. Matching is lexical on the URL's normalised host.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::grants::{ends_in_number, valid_host};

/// An outbound HTTP allowlist entry (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostGrant {
    scheme: Option<String>,
    host: String,
    /// `*.host`: subdomains only.
    wildcard: bool,
    /// The port, or any.
    port: Option<u16>,
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

impl HostGrant {
    /// Parses `[scheme://][*.]host[:port]` (host names case-insensitive; IPv6 addresses in
    /// brackets). Refused: other schemes, paths, credentials, a zero port, a single-label
    /// name, and anything ending in a number that is not a dotted-quad IPv4 address (URL
    /// parsers read such a host as an address).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (scheme, rest) = match s.split_once("://") {
            Some((scheme, rest)) => {
                let scheme = scheme.to_ascii_lowercase();
                if scheme != "http" && scheme != "https" {
                    return Err(format!("`{s}`: only `http://` and `https://` can be named"));
                }
                (Some(scheme), rest)
            }
            None => (None, s),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '@', '?', '#']) {
            return Err(format!(
                "`{s}` is not a host grant (no path, query or credentials)"
            ));
        }
        let (host, port) = split_port(rest).map_err(|e| format!("`{s}`: {e}"))?;
        let port = port.or_else(|| scheme.as_deref().map(default_port));
        let (wildcard, host) = match host.strip_prefix("*.") {
            Some(h) => (true, h),
            None => (false, host),
        };
        let host = normalise_host(host).map_err(|e| format!("`{s}`: {e}"))?;
        if wildcard && host.parse::<IpAddr>().is_ok() {
            return Err(format!("`{s}`: an address has no subdomains"));
        }
        Ok(Self {
            scheme,
            host,
            wildcard,
            port,
        })
    }

    /// The normalised host (an IPv6 address without brackets).
    pub fn as_str(&self) -> &str {
        &self.host
    }

    fn is_address(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }

    fn host_matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let sub = !self.is_address()
            && host
                .strip_suffix(&self.host)
                .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.'));
        if self.wildcard {
            sub
        } else {
            sub || host == self.host
        }
    }

    /// Whether `host` (any scheme, any port) is this host or one it covers.
    pub fn allows(&self, host: &str) -> bool {
        self.host_matches(host)
    }

    /// Whether a request to `scheme://host:port` is covered.
    pub fn allows_url(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.scheme.as_deref().is_none_or(|s| s == scheme)
            && self.port.is_none_or(|p| p == port)
            && self.host_matches(host)
    }

    /// Whether every request `other` allows is also allowed by `self`.
    pub fn covers(&self, other: &HostGrant) -> bool {
        let scheme = match (&self.scheme, &other.scheme) {
            (None, _) => true,
            (Some(a), Some(b)) => a == b,
            (Some(_), None) => false,
        };
        let port = match (self.port, other.port) {
            (None, _) => true,
            (Some(a), Some(b)) => a == b,
            (Some(_), None) => false,
        };
        let host = if other.wildcard {
            // `*.x` is covered by `x`, `*.x`, or a grant that covers `x` itself.
            self.host == other.host || self.host_matches(&other.host)
        } else {
            self.host_matches(&other.host)
        };
        scheme && port && host
    }
}

/// Splits `host[:port]` / `[v6][:port]`.
fn split_port(s: &str) -> Result<(&str, Option<u16>), String> {
    let port = |p: &str| -> Result<Option<u16>, String> {
        match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("`{p}` is not a port")),
            Ok(n) => Ok(Some(n)),
        }
    };
    if let Some(after) = s.strip_prefix('[') {
        let (v6, tail) = after
            .split_once(']')
            .ok_or_else(|| "an unclosed `[`".to_string())?;
        return match tail {
            "" => Ok((v6, None)),
            t => match t.strip_prefix(':') {
                Some(p) => Ok((v6, port(p)?)),
                None => Err(format!("`{t}` after the address")),
            },
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((h, port(p)?)),
        Some(_) => Err("an IPv6 address must be in brackets".into()),
        None => Ok((s, None)),
    }
}

fn normalise_host(h: &str) -> Result<String, String> {
    if let Ok(v6) = h.parse::<Ipv6Addr>() {
        return Ok(v6.to_string());
    }
    let h = h.trim_end_matches('.').to_ascii_lowercase();
    if h.parse::<Ipv4Addr>().is_ok() {
        return Ok(h);
    }
    if !valid_host(&h) {
        return Err(format!("`{h}` is not a host name"));
    }
    if ends_in_number(&h) {
        return Err(format!(
            "`{h}` is neither a host name nor a dotted-quad IPv4 address"
        ));
    }
    if !h.contains('.') {
        return Err(format!(
            "`{h}` is a single label, which acts as a top-level domain; name a host under it"
        ));
    }
    Ok(h)
}

impl fmt::Display for HostGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.scheme {
            write!(f, "{s}://")?;
        }
        if self.wildcard {
            f.write_str("*.")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        match (self.port, &self.scheme) {
            (Some(p), Some(s)) if p == default_port(s) => Ok(()),
            (Some(p), _) => write!(f, ":{p}"),
            (None, _) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> HostGrant {
        HostGrant::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn scheme_and_port_narrow_a_grant() {
        let api = g("https://api.example.com:8443");
        assert!(api.allows_url("https", "api.example.com", 8443));
        assert!(api.allows_url("https", "v2.api.example.com", 8443));
        assert!(!api.allows_url("http", "api.example.com", 8443));
        assert!(!api.allows_url("https", "api.example.com", 443));
        let https = g("https://example.com");
        assert!(https.allows_url("https", "example.com", 443));
        assert!(!https.allows_url("https", "example.com", 8443));
        let port = g("example.com:8080");
        assert!(port.allows_url("http", "example.com", 8080));
        assert!(port.allows_url("https", "example.com", 8080));
        assert!(!port.allows_url("http", "example.com", 80));
        let any = g("Example.com");
        assert!(any.allows_url("http", "example.com", 1));
    }

    #[test]
    fn a_wildcard_covers_subdomains_only() {
        let w = g("*.example.com");
        assert!(w.allows("a.example.com"));
        assert!(w.allows("a.b.example.com"));
        assert!(!w.allows("example.com"));
        assert!(!w.allows("badexample.com"));
        assert!(!w.allows(".example.com"));
        assert!(g("example.com").covers(&w));
        assert!(!w.covers(&g("example.com")));
        assert!(w.covers(&g("a.example.com")));
        assert!(w.covers(&g("*.a.example.com")));
        assert!(!g("https://example.com").covers(&g("example.com")));
        assert!(g("example.com").covers(&g("https://example.com:8443")));
        assert!(!g("example.com:8443").covers(&g("example.com")));
    }

    #[test]
    fn single_labels_and_malformed_grants_are_refused() {
        for bad in [
            "com",
            "*.com",
            "localhost",
            "https://com",
            "*.*.example.com",
            "ftp://example.com",
            "example.com/path",
            "user@example.com",
            "example.com:0",
            "example.com:99999",
            "*.10.0.0.1",
            "::1",
            "[::1",
            "0x7f.1",
        ] {
            assert!(HostGrant::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let v6 = g("[::1]:8080");
        assert!(v6.allows_url("http", "::1", 8080));
        assert_eq!(v6.to_string(), "[::1]:8080");
        assert_eq!(
            g("HTTPS://Api.Example.com:443").to_string(),
            "https://api.example.com"
        );
        assert_eq!(g("*.example.com").to_string(), "*.example.com");
    }
}
