//! Cloud-based authentication, the pure part: parsing and validating AWS identity proofs
//! (Datadog's wire format) and ARNs and mapping patterns. The exchange itself (calling STS,
//! issuing tokens and keys) lives in the gateway.
#![forbid(unsafe_code)]

pub mod arn;
pub mod proof;
pub mod sts;
