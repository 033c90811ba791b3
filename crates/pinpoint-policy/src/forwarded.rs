//! What proxies in front of Pinpoint report about a request, believed only from the
//! proxies `[net] trusted_proxies` names: the client's address (`X-Forwarded-For`,
//! `Forwarded: for=`) and the origin the client used (`X-Forwarded-Proto`/`-Host`,
//! `Forwarded: proto=`/`host=`). Shared by the net and CSRF filters and the proxy.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// The first of `list` that holds `ip` (IPv4-mapped IPv6 addresses match as IPv4).
pub fn listed(list: &[IpNet], ip: IpAddr) -> Option<&IpNet> {
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

/// The origin the client addressed (`scheme://host[:port]`, lower-case, default ports
/// left out), and how Pinpoint knows it: from a trusted proxy's `X-Forwarded-Proto`/`-Host`
/// or `Forwarded`, else this connection (plain HTTP) and its `Host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestOrigin {
    pub origin: String,
    pub source: &'static str,
}

/// The request's own origin, as a browser on the client's side would write it in `Origin`.
pub fn request_origin(
    peer: IpAddr,
    headers: &HeaderMap,
    host: Option<&str>,
    trusted: &[IpNet],
) -> Option<RequestOrigin> {
    let from_proxy = !trusted.is_empty() && listed(trusted, peer).is_some();
    // An empty value says nothing: the connection's own scheme and `Host` stand.
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let forwarded_pair = |key: &str| {
        headers
            .get_all(http::header::FORWARDED)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').next().into_iter().flat_map(|e| e.split(';')))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.trim_matches('"'))
            .filter(|v| !v.is_empty())
    };
    let first = |v: &str| v.split(',').next().unwrap_or("").trim().to_ascii_lowercase();
    let (scheme, scheme_source) = match (from_proxy, header("x-forwarded-proto"), forwarded_pair("proto")) {
        (true, Some(proto), _) => (first(proto), "X-Forwarded-Proto of a trusted proxy"),
        (true, None, Some(proto)) => (first(proto), "Forwarded proto of a trusted proxy"),
        _ => (String::from("http"), "this connection"),
    };
    let forwarded_host = header("x-forwarded-host").or_else(|| forwarded_pair("host"));
    let (host, host_source) = match (from_proxy, forwarded_host) {
        (true, Some(h)) => (first(h), "forwarded host of a trusted proxy"),
        _ => (host?.to_ascii_lowercase(), "Host"),
    };
    if !matches!(scheme.as_str(), "http" | "https") || host.is_empty() {
        return None;
    }
    Some(RequestOrigin {
        origin: normalise_origin(&format!("{scheme}://{host}"))?,
        source: if scheme_source == "this connection" && host_source == "Host" {
            "this connection and its Host"
        } else if host_source == "Host" {
            scheme_source
        } else {
            "the forwarded scheme and host of a trusted proxy"
        },
    })
}

/// An origin in one spelling: lower-case, without a default port (`:80` for http,
/// `:443` for https); `None` for anything that is not `http(s)://host[:port]`.
pub fn normalise_origin(origin: &str) -> Option<String> {
    let origin = origin.trim().to_ascii_lowercase();
    let (scheme, rest) = origin.split_once("://")?;
    if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let default_port = if scheme == "http" { ":80" } else { ":443" };
    let host = rest.strip_suffix(default_port).unwrap_or(rest);
    Some(format!("{scheme}://{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn the_request_origin_comes_from_trusted_proxies_only() {
        let trusted = nets(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        h.insert("x-forwarded-host", "Shop.Example:443".parse().unwrap());
        let origin = |peer: &str| {
            request_origin(peer.parse().unwrap(), &h, Some("internal:8080"), &trusted)
                .unwrap()
                .origin
        };
        assert_eq!(origin("10.0.0.2"), "https://shop.example");
        assert_eq!(
            origin("192.0.2.1"),
            "http://internal:8080",
            "an untrusted peer's headers are ignored"
        );
        assert_eq!(
            normalise_origin("HTTP://A.example:80").as_deref(),
            Some("http://a.example")
        );
        assert_eq!(normalise_origin("https://a.example/"), None);
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
