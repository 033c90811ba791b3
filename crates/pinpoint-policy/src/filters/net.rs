//! The network layer: global and per-route CIDR lists (deny before allow), checked
//! against the client address after trusted-proxy resolution (`forwarded::client_ip`).
//! Codes: `net.ip_denied`, `net.ip_not_allowed` (403); the caller is told the address
//! Pinpoint saw.

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

use crate::forwarded::listed;

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
