//! The policy filters. Each owns one concern and its reason codes; the order they run in
//! is defined by the host that builds the pipeline (the gateway's `runtime::build_pipeline`).
//! No filter imports another.

pub mod authn;
pub mod authz;
pub mod cors;
pub mod csrf;
pub mod net;
pub mod policy;
pub mod rate;
pub mod route;
pub mod waf;
