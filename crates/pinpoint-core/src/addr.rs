//! IP and socket addresses as text, exactly as `Display` writes them, without the
//! formatting machinery for IPv4 (IPv6 goes through `Display`). Every proxied request
//! writes its client's address twice (the decision's `client_addr`, `X-Forwarded-For`);
//! through `Display` that was about 4,000 instructions a request (`bench/instructions.sh`,
//! 2026-12-06), this way a few hundred.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// `ip` as `Display` writes it.
pub fn ip(ip: IpAddr) -> String {
    let mut out = String::with_capacity(15);
    push_ip(&mut out, ip);
    out
}

/// `addr` as `Display` writes it (`203.0.113.9:443`, `[2001:db8::1]:443`).
pub fn socket(addr: SocketAddr) -> String {
    let mut out = String::with_capacity(21);
    push_socket(&mut out, addr);
    out
}

/// Appends `ip` as `Display` writes it.
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => push_v4(out, v4),
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends `addr` as `Display` writes it.
pub fn push_socket(out: &mut String, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => push_v4(out, *v4.ip()),
        SocketAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
            return;
        }
    }
    out.push(':');
    out.push_str(itoa::Buffer::new().format(addr.port()));
}

fn push_v4(out: &mut String, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(itoa::Buffer::new().format(octet));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_as_display_writes_them() {
        let addrs = [
            "0.0.0.0:0",
            "127.0.0.1:53666",
            "255.255.255.255:65535",
            "10.0.100.9:80",
            "[::1]:8080",
            "[2001:db8::1%3]:443",
            "[::ffff:192.0.2.1]:1",
        ];
        for text in addrs {
            let addr: SocketAddr = text.parse().unwrap();
            assert_eq!(socket(addr), addr.to_string());
            assert_eq!(ip(addr.ip()), addr.ip().to_string());
        }
    }
}
