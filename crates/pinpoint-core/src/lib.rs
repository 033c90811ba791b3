//! Pinpoint's domain, with no I/O: the verdict a policy layer returns, the one reason
//! catalogue every generated response draws from, decision traces, RFC 9457 problem
//! bodies, request ids, API-key hashing and the typed config.
#![forbid(unsafe_code)]

pub mod addr;
pub mod canonical;
pub mod config;
pub mod hex;
pub mod identity;
pub mod json;
pub mod keys;
pub mod problem;
pub mod reason;
pub mod request_id;
pub mod time;
pub mod verdict;

pub use reason::Reason;
pub use verdict::{CallerRecord, CredentialKind, Decision, Denial, LayerTrace, Mark, Mode, Outcome};
