//! Pinpoint's policy engine: what decides about a request, and nothing that touches the
//! world. [`pipeline`] holds the request context, the [`pipeline::Filter`] trait and the
//! interpreter that turns filters' answers into a verdict and a trace; [`filters`] the
//! filters themselves; [`identity`] the caller; [`routes`] route matching; [`rate_state`]
//! the in-memory limiter and quota state. The engine reaches identities, rate state,
//! clocks, replay caches and decision sinks only through the traits in [`world`], so a
//! host (the gateway) supplies live ones and an evaluation supplies side-effect-free ones.
//!
//! Invariants: no I/O here (no hyper, no sqlx, no tokio networking); no filter imports
//! another filter. No unsafe code but in one place: the WAF's JSON reader
//! (`filters::waf::json`) classifies blocks with SSE2 or, where the CPU has it, AVX2; Rust
//! counts calling those functions and their unaligned loads as unsafe.
#![deny(unsafe_code)]

pub mod credential_text;
pub mod filters;
pub mod forwarded;
pub mod identity;
pub mod overrides;
pub mod pipeline;
pub mod rate_state;
pub mod routes;
pub mod world;

/// Drives a future that never waits on I/O (every filter's is ready or computes) to its
/// end on this thread. For tests and evaluations outside any runtime.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::yield_now();
    }
}
