//! Who a request comes from, for the limits kept per client (`HOLD_RATE_LIMIT_PER_SECOND`,
//! `STREAM_MAX_PER_CLIENT`).
//!
//! A signed-in buyer (`BUYER_AUTH=jwt`) is its own client, wherever it connects from. Anyone else
//! is its address: the connection's peer, unless that peer is one of the reverse
//! proxies named in `TRUSTED_PROXIES`. Only then is `X-Forwarded-For` read, from the right (each
//! proxy appends the address it saw), and the client is the rightmost entry that is not itself a
//! trusted proxy. Anything further left was written by the client and proves nothing, so a bot
//! cannot become many clients by making the header up.

use std::{net::IpAddr, str::FromStr};

use entity::types::BuyerId;
use ipnet::IpNet;
use poem::{Request, http::HeaderMap};

use crate::buyers::Caller;

/// The header reverse proxies append the address of their own peer to.
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// What per-client limits count by: the buyer a token names (`BUYER_AUTH=jwt`), else the
/// client's network address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// A signed-in buyer, wherever it connects from (many buyers may share one address).
    Buyer(BuyerId),
    /// The client's network address (see the module's doc).
    Addr(IpAddr),
}

impl ClientKey {
    /// The key of the client that sent `req`: its buyer when a route established one (see
    /// `crate::buyers`), else its address; `None` when the request came through no TCP
    /// connection (in-process tests), and then no per-client limit applies.
    pub fn of(req: &Request, proxies: &TrustedProxies) -> Option<Self> {
        if let Some(buyer) = req.data::<Caller>().and_then(Caller::buyer) {
            return Some(Self::Buyer(buyer.clone()));
        }
        client_ip(req, proxies).map(Self::Addr)
    }
}

/// The client's address of `req` (see the module's doc).
pub fn client_ip(req: &Request, proxies: &TrustedProxies) -> Option<IpAddr> {
    let peer = req.remote_addr().as_socket_addr()?.ip();
    Some(proxies.client_ip(peer, req.headers()))
}

/// `TRUSTED_PROXIES`: the addresses and networks of the reverse proxies in front of the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

/// A `TRUSTED_PROXIES` entry that is neither an address nor a CIDR network.
#[derive(Debug, thiserror::Error)]
#[error("{entry:?} is not an IP address or a CIDR network (such as 10.0.0.0/8)")]
pub struct BadProxyEntry {
    entry: String,
}

impl FromStr for TrustedProxies {
    type Err = BadProxyEntry;

    /// Comma-separated addresses (`10.0.0.7`, `::1`) and networks (`10.0.0.0/8`); blank
    /// entries are skipped.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let nets = s
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let net = if entry.contains('/') {
                    entry.parse::<IpNet>().map(|n| n.trunc()).ok()
                } else {
                    entry
                        .parse::<IpAddr>()
                        .ok()
                        .map(|ip| IpNet::from(ip.to_canonical()))
                };
                net.ok_or_else(|| BadProxyEntry {
                    entry: entry.to_owned(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { nets })
    }
}

impl std::fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for net in &self.nets {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

impl TrustedProxies {
    /// Whether no proxy is trusted (then `X-Forwarded-For` is never read).
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client's address of a request that came from `peer` with `headers`. Several
    /// `X-Forwarded-For` lines are one list, in order. An entry that is not an address stops the
    /// walk: the client is then the nearest trusted hop, which is the most that can be vouched for.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if self.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let mut nearest = peer;
        for line in headers.get_all(X_FORWARDED_FOR).iter().rev() {
            // A line that is not text is an entry that is not an address.
            let Ok(line) = line.to_str() else {
                return nearest;
            };
            for entry in line.rsplit(',') {
                let Some(ip) = parse_entry(entry) else {
                    return nearest;
                };
                if !self.trusts(ip) {
                    return ip;
                }
                nearest = ip;
            }
        }
        nearest
    }
}

/// One `X-Forwarded-For` entry: an address, bare or with a port (`203.0.113.7:4711`,
/// `[2001:db8::1]:4711`, `[2001:db8::1]`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok());
        return port_ok
            .then(|| ip.parse::<std::net::Ipv6Addr>().ok())
            .flatten()
            .map(|ip| IpAddr::V6(ip).to_canonical());
    }
    entry
        .parse::<std::net::SocketAddrV4>()
        .ok()
        .map(|s| IpAddr::V4(*s.ip()))
}

#[cfg(test)]
mod tests {
    use poem::http::HeaderValue;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    fn headers(lines: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append(
                X_FORWARDED_FOR,
                HeaderValue::from_bytes(line).expect("a header value"),
            );
        }
        map
    }

    fn proxies(s: &str) -> TrustedProxies {
        s.parse().expect("a proxy list")
    }

    #[test]
    fn the_list_takes_addresses_and_networks_and_refuses_anything_else() {
        let p = proxies(" 10.0.0.0/8, 127.0.0.1,::1 , fd00::/8,");
        assert_eq!(p.to_string(), "10.0.0.0/8,127.0.0.1/32,::1/128,fd00::/8");
        assert!(p.trusts(ip("10.200.3.4")) && p.trusts(ip("fd12::1")));
        assert!(!p.trusts(ip("11.0.0.1")) && !p.trusts(ip("127.0.0.2")));
        // Host bits in a network are dropped, as the network means.
        assert_eq!(proxies("192.168.1.77/24").to_string(), "192.168.1.0/24");
        assert!(proxies("").is_empty());
        for bad in [
            "localhost",
            "10.0.0.0/33",
            "10.0.0.1:80",
            "1.2.3",
            "::1/129",
            "10.0.0.0/x",
        ] {
            let err = bad.parse::<TrustedProxies>().expect_err(bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let h = headers(&[b"198.51.100.1"]);
        assert_eq!(
            proxies("").client_ip(ip("203.0.113.9"), &h),
            ip("203.0.113.9")
        );
        assert_eq!(
            proxies("10.0.0.0/8").client_ip(ip("203.0.113.9"), &h),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn from_a_trusted_proxy_the_rightmost_untrusted_entry_is_the_client() {
        let p = proxies("10.0.0.0/8, 127.0.0.1");
        let peer = ip("127.0.0.1");
        // The client's own claim (left) is ignored; the proxies' hops (right) are skipped.
        let h = headers(&[b"1.1.1.1, 203.0.113.7, 10.0.0.5, 10.0.0.6"]);
        assert_eq!(p.client_ip(peer, &h), ip("203.0.113.7"));
        // Several header lines are one list, in order.
        let h = headers(&[b"1.1.1.1, 203.0.113.7", b"10.0.0.5", b"10.0.0.6"]);
        assert_eq!(p.client_ip(peer, &h), ip("203.0.113.7"));
        let h = headers(&[b"203.0.113.7", b"198.51.100.2"]);
        assert_eq!(p.client_ip(peer, &h), ip("198.51.100.2"));
        // No header: the proxy itself.
        assert_eq!(p.client_ip(peer, &HeaderMap::new()), peer);
        // Every entry a proxy: the farthest one.
        let h = headers(&[b"10.1.1.1, 10.0.0.6"]);
        assert_eq!(p.client_ip(peer, &h), ip("10.1.1.1"));
    }

    #[test]
    fn ipv6_and_ports_are_understood() {
        let p = proxies("2001:db8:ffff::/48, 127.0.0.1");
        let peer = ip("2001:db8:ffff::10");
        let h = headers(&[b"2001:db8::7, [2001:db8:ffff::11]:443"]);
        assert_eq!(p.client_ip(peer, &h), ip("2001:db8::7"));
        let h = headers(&[b"[2001:db8::8]:5000"]);
        assert_eq!(p.client_ip(peer, &h), ip("2001:db8::8"));
        let h = headers(&[b"[2001:db8::9]"]);
        assert_eq!(p.client_ip(peer, &h), ip("2001:db8::9"));
        let h = headers(&[b"203.0.113.7:8080"]);
        assert_eq!(p.client_ip(peer, &h), ip("203.0.113.7"));
        // An IPv4 peer seen through an IPv6 socket is the IPv4 address.
        assert_eq!(
            p.client_ip(ip("::ffff:127.0.0.1"), &headers(&[b"::ffff:203.0.113.5"])),
            ip("203.0.113.5")
        );
    }

    #[test]
    fn a_malformed_entry_stops_at_the_nearest_trusted_hop() {
        let p = proxies("10.0.0.0/8, 127.0.0.1");
        let peer = ip("127.0.0.1");
        for bad in [
            &b"203.0.113.7, garbage"[..],
            b"203.0.113.7, ",
            b"203.0.113.7, [::1",
            b"203.0.113.7, [::1]:http",
            b"203.0.113.7, 1.2.3.4:99999",
            b"203.0.113.7, unknown",
        ] {
            assert_eq!(p.client_ip(peer, &headers(&[bad])), peer, "{bad:?}");
        }
        let h = headers(&[b"203.0.113.7, nonsense, 10.0.0.9"]);
        assert_eq!(p.client_ip(peer, &h), ip("10.0.0.9"));
        // A line that is not text is not an address either.
        let h = headers(&[b"203.0.113.7", b"\xff\xfe"]);
        assert_eq!(p.client_ip(peer, &h), peer);
    }
}
