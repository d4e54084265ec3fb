//! The network airlock: which addresses outbound connections may reach. Every address is
//! classified before any connection is made, IPv6 forms that carry an IPv4 address
//! (mapped, compatible, NAT64, 6to4, Teredo) by the address they carry as well; anything that
//! is not a public unicast address is refused unless the operator's host policy opens the
//! range it lies in. Names are resolved by the host through a [`Resolver`], and the checked
//! addresses are the only ones a caller may connect to, so a second lookup can never slip a
//! different answer in between the check and the connect. A capsule's manifest cannot open
//! anything here: open ranges come only from the operator's `policy.toml`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;

/// Most addresses one name may resolve to that are considered; a larger answer is cut.
pub const MAX_RESOLVED_ADDRESSES: usize = 32;

/// Why an address is not a public unicast destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressClass {
    /// `0.0.0.0`, `::`: no host at all (on many systems, "this host").
    Unspecified,
    /// `0.0.0.0/8` without `0.0.0.0`: "this network" (RFC 791), never a destination.
    ThisNetwork,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16` (RFC 1918), `fc00::/7` (unique
    /// local), `fec0::/10` (deprecated site-local).
    Private,
    /// `100.64.0.0/10`: carrier-grade NAT space shared by an ISP's customers (RFC 6598).
    SharedCgnat,
    /// `169.254.0.0/16`, `fe80::/10`: link-local, where cloud metadata services live.
    LinkLocal,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// `198.18.0.0/15`, `2001:2::/48` (RFC 2544, RFC 5180).
    Benchmarking,
    /// Special-purpose and reserved space: `192.0.0.0/24` (protocol assignments),
    /// `192.88.99.0/24` (6to4 relay anycast), `192.31.196.0/24` and `192.175.48.0/24`
    /// (AS112), `240.0.0.0/4`; for IPv6 everything outside `2000::/3` not named above, plus
    /// `2001::/23` (protocol assignments), `64:ff9b:1::/48` (local NAT64) and `5f00::/16`
    /// (SRv6).
    Reserved,
}

impl AddressClass {
    /// A short name for logs and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::ThisNetwork => "this-network",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::SharedCgnat => "shared-cgnat",
            Self::LinkLocal => "link-local",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Documentation => "documentation",
            Self::Benchmarking => "benchmarking",
            Self::Reserved => "reserved",
        }
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IPv6 form that carries an IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Embedding {
    /// `::ffff:a.b.c.d`: the IPv4 address itself, reached through a dual-stack socket.
    V4Mapped,
    /// `::a.b.c.d` (deprecated): also the IPv4 address itself on some stacks.
    V4Compatible,
    /// `64:ff9b::a.b.c.d`: translated to the IPv4 address by a NAT64 gateway.
    Nat64,
    /// `2002:AABB:CCDD::/48`: tunnelled to the IPv4 address by 6to4.
    SixToFour,
    /// `2001:0:SSSS:SSSS:…:CCCC:CCCC`: Teredo, carrying a server and an (inverted) client
    /// IPv4 address.
    Teredo,
}

impl Embedding {
    /// A short name for logs and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V4Mapped => "ipv4-mapped",
            Self::V4Compatible => "ipv4-compatible",
            Self::Nat64 => "nat64",
            Self::SixToFour => "6to4",
            Self::Teredo => "teredo",
        }
    }

    /// Whether traffic to the IPv6 form reaches the embedded IPv4 address directly, so that
    /// the two are the same destination.
    fn is_same_destination(self) -> bool {
        matches!(self, Self::V4Mapped | Self::V4Compatible)
    }
}

/// Why the airlock refused an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The address that was refused, as given.
    pub addr: IpAddr,
    /// The class of the address, or of the IPv4 address it carries.
    pub class: AddressClass,
    /// The form that carried the IPv4 address, when it is one.
    pub via: Option<Embedding>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.via {
            None => write!(f, "{} is a {} address", self.addr, self.class),
            Some(via) => write!(
                f,
                "{} carries a {} IPv4 address ({} form)",
                self.addr,
                self.class,
                via.as_str()
            ),
        }
    }
}

/// The class of an IPv4 address that is not public unicast, or `None` for a public one.
pub fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, c, _] = ip.octets();
    let class = match (a, b, c) {
        _ if ip.is_unspecified() => AddressClass::Unspecified,
        _ if ip.is_broadcast() => AddressClass::Broadcast,
        (0, _, _) => AddressClass::ThisNetwork,
        (127, _, _) => AddressClass::Loopback,
        (10, _, _) | (192, 168, _) => AddressClass::Private,
        (172, b, _) if (16..32).contains(&b) => AddressClass::Private,
        (100, b, _) if (64..128).contains(&b) => AddressClass::SharedCgnat,
        (169, 254, _) => AddressClass::LinkLocal,
        (224..=239, _, _) => AddressClass::Multicast,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => AddressClass::Documentation,
        (198, 18 | 19, _) => AddressClass::Benchmarking,
        (192, 0, 0) | (192, 88, 99) | (192, 31, 196) | (192, 175, 48) => AddressClass::Reserved,
        (240..=255, _, _) => AddressClass::Reserved,
        _ => return None,
    };
    Some(class)
}

/// The IPv4 addresses an IPv6 address carries, with the form that carries them (Teredo
/// carries two: its server and its client).
pub fn embedded_v4(ip: Ipv6Addr) -> Option<(Embedding, Vec<Ipv4Addr>)> {
    let s = ip.segments();
    let o = ip.octets();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if s[..5] == [0; 5] && s[5] == 0xffff {
        return Some((Embedding::V4Mapped, vec![last]));
    }
    // `::` and `::1` are IPv6's own unspecified and loopback addresses, not compatible forms.
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return Some((Embedding::V4Compatible, vec![last]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some((Embedding::Nat64, vec![last]));
    }
    if s[0] == 0x2002 {
        return Some((
            Embedding::SixToFour,
            vec![Ipv4Addr::new(o[2], o[3], o[4], o[5])],
        ));
    }
    if s[0] == 0x2001 && s[1] == 0 {
        let server = Ipv4Addr::new(o[4], o[5], o[6], o[7]);
        let client = Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]);
        return Some((Embedding::Teredo, vec![server, client]));
    }
    None
}

/// The class of an IPv6 address itself (not of any IPv4 address it carries), or `None` for a
/// global unicast one.
pub fn classify_v6_own(ip: Ipv6Addr) -> Option<AddressClass> {
    let s = ip.segments();
    let class = match s[0] {
        _ if ip.is_unspecified() => AddressClass::Unspecified,
        _ if ip.is_loopback() => AddressClass::Loopback,
        0xff00..=0xffff => AddressClass::Multicast,
        0xfe80..=0xfebf => AddressClass::LinkLocal,
        0xfc00..=0xfdff | 0xfec0..=0xfeff => AddressClass::Private,
        0x2001 if s[1] == 0x0db8 => AddressClass::Documentation,
        0x3fff if s[1] <= 0x0fff => AddressClass::Documentation,
        0x2001 if s[1] == 0x0002 && s[2] == 0 => AddressClass::Benchmarking,
        0x2001 if s[1] == 0 => return None, // Teredo: judged by what it carries.
        0x2001 if s[1] < 0x0200 => AddressClass::Reserved,
        0x0064 if s[1] == 0xff9b && s[2] == 0x0001 => AddressClass::Reserved,
        0x0064 if s[1] == 0xff9b && s[2..6] == [0; 4] => return None, // NAT64: by what it carries.
        0x5f00 => AddressClass::Reserved,
        0x2000..=0x3fff => return None,
        // IPv4-mapped and compatible forms: judged by what they carry.
        0 if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) => return None,
        _ => AddressClass::Reserved,
    };
    Some(class)
}

/// Why `ip` is refused by default, or `None` for a public unicast address. An IPv6 address
/// carrying IPv4 addresses is refused when it or any address it carries is.
pub fn classify(ip: IpAddr) -> Option<Refusal> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4).map(|class| Refusal {
            addr: ip,
            class,
            via: None,
        }),
        IpAddr::V6(v6) => {
            if let Some(class) = classify_v6_own(v6) {
                return Some(Refusal {
                    addr: ip,
                    class,
                    via: None,
                });
            }
            let (via, carried) = embedded_v4(v6)?;
            carried
                .into_iter()
                .find_map(classify_v4)
                .map(|class| Refusal {
                    addr: ip,
                    class,
                    via: Some(via),
                })
        }
    }
}

/// An address range in CIDR notation (`127.0.0.0/8`, `::1/128`; a bare address is a range
/// of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// The range of `prefix` leading bits of `network`; `None` if the prefix is longer than
    /// the address.
    pub fn new(network: IpAddr, prefix: u8) -> Option<Self> {
        let bits = if network.is_ipv4() { 32 } else { 128 };
        (prefix <= bits).then_some(Self { network, prefix })
    }

    /// Whether `ip` lies in this range (an IPv4 range never holds an IPv6 address, nor the
    /// reverse).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                prefix_eq(&n.octets(), &a.octets(), u32::from(self.prefix))
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                prefix_eq(&n.octets(), &a.octets(), u32::from(self.prefix))
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u32) -> bool {
    let full = (bits / 8) as usize;
    let rest = bits % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}`: `{addr}` is not an IP address"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("`{s}`: `{p}` is not a prefix length of 0 to {bits}"))?,
        };
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Why a name could not be turned into addresses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The name does not exist or has no addresses.
    #[error("`{0}` has no addresses")]
    NotFound(String),
    /// The lookup itself failed.
    #[error("looking up `{host}` failed: {reason}")]
    Failed {
        /// The name.
        host: String,
        /// Why.
        reason: String,
    },
}

/// Turns host names into addresses. The host resolves every name itself through one of
/// these; tests supply their own to play a hostile DNS server.
pub trait Resolver: Send + Sync + fmt::Debug {
    /// The addresses of `host` (a name, never an address literal). May block.
    fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError>;
}

/// The operating system's resolver (`getaddrinfo`).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let addrs = (host, 0u16)
            .to_socket_addrs()
            .map_err(|e| ResolveError::Failed {
                host: host.to_string(),
                reason: e.to_string(),
            })?;
        let ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
        if ips.is_empty() {
            return Err(ResolveError::NotFound(host.to_string()));
        }
        Ok(ips)
    }
}

/// A fixed table of names and their addresses; a name not in it does not exist. For tests
/// and for hosts that pin their destinations.
#[derive(Clone, Debug, Default)]
pub struct StaticResolver {
    entries: Vec<(String, Vec<IpAddr>)>,
}

impl StaticResolver {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the answer for `host` (case-insensitive).
    pub fn with(mut self, host: &str, addrs: &[IpAddr]) -> Self {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.entries.retain(|(h, _)| *h != host);
        self.entries.push((host, addrs.to_vec()));
        self
    }
}

impl Resolver for StaticResolver {
    fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.entries
            .iter()
            .find(|(h, _)| *h == host)
            .map(|(_, a)| a.clone())
            .filter(|a| !a.is_empty())
            .ok_or(ResolveError::NotFound(host))
    }
}

/// Why the airlock let nothing through.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AirlockError {
    /// The name could not be resolved.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// An address (given, or among the answers for the name) is refused. One refused answer
    /// refuses the whole name: a name that resolves into the operator's network as well as
    /// outside it is treated as the rebinding attack it looks like.
    #[error("`{host}` refused: {refusal}")]
    Refused {
        /// The host as the request named it.
        host: String,
        /// The first refused address.
        refusal: Refusal,
    },
}

/// The address checker, with the ranges the operator opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Airlock {
    open: Vec<IpRange>,
}

impl Airlock {
    /// An airlock that refuses every class and opens nothing.
    pub fn closed() -> Self {
        Self::default()
    }

    /// An airlock with `open` ranges opened by the operator.
    pub fn with_open(open: Vec<IpRange>) -> Self {
        Self { open }
    }

    /// The ranges the operator opened.
    pub fn open_ranges(&self) -> &[IpRange] {
        &self.open
    }

    /// The address to connect to for `ip`, or why not. A mapped or compatible form is
    /// answered with the IPv4 address it stands for (what a dual-stack socket would reach);
    /// an opened range opens the address itself, and, for those two forms, the IPv4 address.
    pub fn check(&self, ip: IpAddr) -> Result<IpAddr, Refusal> {
        let same = match ip {
            IpAddr::V6(v6) => match embedded_v4(v6) {
                Some((via, carried)) if via.is_same_destination() => {
                    carried.first().copied().map(IpAddr::V4)
                }
                _ => None,
            },
            IpAddr::V4(_) => None,
        };
        let opened = |a: IpAddr| self.open.iter().any(|r| r.contains(a));
        if let Some(refusal) = classify(ip)
            && !opened(ip)
            && !same.is_some_and(opened)
        {
            return Err(refusal);
        }
        Ok(same.unwrap_or(ip))
    }

    /// The checked socket addresses of `host:port`: an address literal (bracketed or not) is
    /// checked as it is; a name is resolved once through `resolver` and every answer is
    /// checked. Only what this returns may be connected to.
    pub fn admit(
        &self,
        host: &str,
        port: u16,
        resolver: &dyn Resolver,
    ) -> Result<Vec<SocketAddr>, AirlockError> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        let ips = match literal.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => {
                let mut ips = resolver.resolve(host)?;
                ips.truncate(MAX_RESOLVED_ADDRESSES);
                if ips.is_empty() {
                    return Err(ResolveError::NotFound(host.to_string()).into());
                }
                ips
            }
        };
        let mut out = Vec::with_capacity(ips.len());
        for ip in ips {
            let ok = self.check(ip).map_err(|refusal| AirlockError::Refused {
                host: host.to_string(),
                refusal,
            })?;
            let addr = SocketAddr::new(ok, port);
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
