//! The network layer: global and per-route CIDR lists (deny before allow), checked
//! against the client address after trusted-proxy resolution ([`client_ip`]).
//! Codes: `net.ip_denied`, `net.ip_not_allowed` (403); the caller is told the address
//! Pinpoint saw.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;
use pinpoint_core::config::NetConfig;
use pinpoint_core::{Denial, Outcome, Reason};

use crate::pipeline::{Check, Filter, RequestCtx};

pub struct NetFilter {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl NetFilter {
    pub fn new(config: &NetConfig) -> Self {
        NetFilter {
            allow: config.allow.clone(),
            deny: config.deny.clone(),
        }
    }
}

fn listed(list: &[IpNet], ip: IpAddr) -> Option<&IpNet> {
    let ip = canonical(ip);
    list.iter().find(|net| net.contains(&ip))
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are matched as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl Filter for NetFilter {
    fn name(&self) -> &'static str {
        "net"
    }

    fn check<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Check<'a> {
        let ip = ctx.client_ip;
        let (route_allow, route_deny) = match &ctx.access {
            Some(a) => (&a.ip_allow[..], &a.ip_deny[..]),
            None => (&[][..], &[][..]),
        };
        if self.allow.is_empty() && self.deny.is_empty() && route_allow.is_empty() && route_deny.is_empty() {
            return Check::Ready(Outcome::NotApplicable);
        }
        let outcome = if let Some(net) = listed(&self.deny, ip).or_else(|| listed(route_deny, ip)) {
            Outcome::Deny(
                Denial::new(Reason::NetIpDenied, format!("Requests from {ip} are refused."))
                    .rule(format!("deny {net}")),
            )
        } else if !self.allow.is_empty() && listed(&self.allow, ip).is_none() {
            Outcome::Deny(
                Denial::new(
                    Reason::NetIpNotAllowed,
                    format!("{ip} is not on the gateway's allow list."),
                )
                .rule("global allow list"),
            )
        } else if !route_allow.is_empty() && listed(route_allow, ip).is_none() {
            Outcome::Deny(
                Denial::new(
                    Reason::NetIpNotAllowed,
                    format!("{ip} is not on this route's allow list."),
                )
                .rule("route allow list"),
            )
        } else {
            Outcome::allow()
        };
        Check::Ready(outcome)
    }
}

/// Whether `peer` is one of the proxies trusted to report client addresses.
pub fn is_trusted_proxy(peer: IpAddr, trusted: &[IpNet]) -> bool {
    listed(trusted, peer).is_some()
}

/// The client address: the TCP peer, unless the peer is a trusted proxy, in which case
/// the right-most address in `X-Forwarded-For` (or `Forwarded: for=`) that is not itself
/// a trusted proxy. Malformed entries end the walk (the last trusted hop is used).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if trusted.is_empty() || listed(trusted, peer).is_none() {
        return peer;
    }
    let hops = forwarded_hops(headers);
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else { break };
        client = ip;
        if listed(trusted, ip).is_none() {
            break;
        }
    }
    client
}

/// The client address chain a trusted proxy reports, oldest first: every `X-Forwarded-For`
/// line joined in order, or else the `for=` of every `Forwarded` element. The decision
/// reads this chain and the upstream is sent the same one (restated as `X-Forwarded-For`).
pub fn forwarded_hops(headers: &HeaderMap) -> Vec<&str> {
    let mut hops: Vec<&str> = Vec::new();
    for value in headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        hops.extend(value.split(',').map(str::trim));
    }
    if hops.is_empty() {
        for value in headers
            .get_all(http::header::FORWARDED)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            for element in value.split(',') {
                for pair in element.split(';') {
                    if let Some((k, v)) = pair.trim().split_once('=') {
                        if k.eq_ignore_ascii_case("for") {
                            hops.push(v.trim_matches('"'));
                        }
                    }
                }
            }
        }
    }
    hops
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    // `[v6]:port`, `[v6]` or `v4:port`.
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    hop.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn forwarded_for_is_honoured_only_from_trusted_proxies() {
        let trusted = nets(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.1.1.1".parse().unwrap());
        assert_eq!(
            client_ip("10.0.0.2".parse().unwrap(), &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("192.0.2.1".parse().unwrap(), &h, &trusted),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        let mut f = HeaderMap::new();
        f.insert("forwarded", "for=\"[2001:db8::1]:443\";proto=https".parse().unwrap());
        assert_eq!(
            client_ip("10.0.0.2".parse().unwrap(), &f, &trusted),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        let mut junk = HeaderMap::new();
        junk.insert("x-forwarded-for", "not-an-ip".parse().unwrap());
        assert_eq!(
            client_ip("10.0.0.2".parse().unwrap(), &junk, &trusted),
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
    }

    proptest::proptest! {
        #[test]
        fn v4_cidr_membership_matches_arithmetic(addr: u32, base: u32, len in 0u8..=32) {
            let net = IpNet::V4(ipnet::Ipv4Net::new(base.into(), len).unwrap().trunc());
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            let expected = (addr & mask) == (base & mask);
            proptest::prop_assert_eq!(listed(&[net], IpAddr::V4(addr.into())).is_some(), expected);
            // The IPv4-mapped IPv6 form matches the same way.
            let mapped = IpAddr::V6(std::net::Ipv4Addr::from(addr).to_ipv6_mapped());
            proptest::prop_assert_eq!(listed(&[net], mapped).is_some(), expected);
        }

        #[test]
        fn v6_cidr_membership_matches_arithmetic(addr: u128, base: u128, len in 0u8..=128) {
            let net = IpNet::V6(ipnet::Ipv6Net::new(base.into(), len).unwrap().trunc());
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            let expected = (addr & mask) == (base & mask);
            let ip = IpAddr::V6(addr.into());
            // Mapped v4 addresses are compared as v4, so only check non-mapped ones.
            proptest::prop_assume!(std::net::Ipv6Addr::from(addr).to_ipv4_mapped().is_none());
            proptest::prop_assert_eq!(listed(&[net], ip).is_some(), expected);
        }
    }
}
