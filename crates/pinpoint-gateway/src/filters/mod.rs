//! The policy filters. Each owns one concern and its reason codes; the order they run in
//! is defined in [`crate::runtime::build_pipeline`].

pub mod authn;
pub mod authz;
pub mod cors;
pub mod net;
pub mod policy;
pub mod rate;
pub mod route;
