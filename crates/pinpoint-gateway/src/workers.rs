//! The proxy's workers, one thread per core (`[server] workers`): each runs a
//! current-thread tokio runtime with its own accept loop on its own `SO_REUSEPORT` listener
//! (the kernel spreads new connections over them) and its own upstream connection pools, so
//! a connection is served on one core from accept to upstream and back, and no request
//! wakes another thread. State is shared read-mostly (`Shared`: the revision behind an
//! atomic pointer, lock-free maps). The thread that called `run` is not a worker: it
//! serves the api listener and runs the background tasks (reloads, health checks,
//! housekeeping), so a worker busy with a large body never holds up `/healthz` or the API.
//!
//! `SO_REUSEPORT` lets any process of the same user bind the port too and take a share of
//! new connections; `serve` refuses to start when something already holds the address, but
//! a process that binds it later with `SO_REUSEPORT` is not noticed. Run Pinpoint as a user
//! of its own (deploy/pinpoint.service does).
//!
//! Measured (bench/README.md): on one core, tokio's multi-thread scheduler with its single
//! worker served 27,761 bare GETs a second where a current-thread runtime served 32,633
//! (+18%): the work-stealing scheduler's parking, wake-ups and queues cost that much.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

static COUNT: AtomicUsize = AtomicUsize::new(1);

/// This thread's worker number (`None` outside the workers: the api and background thread).
pub fn index() -> Option<usize> {
    INDEX.with(Cell::get)
}

/// How many workers the process runs (upstream pools keep one client each).
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed).max(1)
}

/// The number of workers `[server] workers = configured` asks for: itself, or with 0 one
/// per CPU this process may run on (its affinity mask, so `taskset -c 0` gives one).
pub fn resolve(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

pub(crate) fn set_count(workers: usize) {
    COUNT.store(workers.max(1), Ordering::Relaxed);
}

/// Binds a listener that further workers can bind beside (`SO_REUSEPORT`), for the
/// proxy. The binary binds the proxy listener with it.
pub fn bind_shared(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    listener.into_std()
}

/// A listener for one more worker: bound beside `first` with `SO_REUSEPORT` when `first`
/// allows it (the kernel then balances connections between them), else `first` itself,
/// shared (every worker accepts from it).
pub(crate) fn listener_beside(first: &tokio::net::TcpListener) -> std::io::Result<std::net::TcpListener> {
    let addr = first.local_addr()?;
    match bind_shared(addr) {
        Ok(listener) => Ok(listener),
        Err(_) => {
            // `first` was bound without SO_REUSEPORT: share its socket.
            let shared = socket_clone(first)?;
            Ok(shared)
        }
    }
}

fn socket_clone(listener: &tokio::net::TcpListener) -> std::io::Result<std::net::TcpListener> {
    use std::os::fd::AsFd;
    let fd = listener.as_fd().try_clone_to_owned()?;
    Ok(std::net::TcpListener::from(fd))
}

/// Starts worker `index` on a thread of its own: a current-thread runtime running
/// `serve(listener)` to its end. Returns when the thread is started.
pub(crate) fn spawn<F, Fut>(
    index: usize,
    listener: std::net::TcpListener,
    serve: F,
) -> std::io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    std::thread::Builder::new()
        .name(format!("pinpoint-w{index}"))
        .spawn(move || {
            INDEX.with(|i| i.set(Some(index)));
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(worker = index, error = %e, "cannot start a proxy worker's runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                if let Err(e) = listener.set_nonblocking(true) {
                    tracing::error!(worker = index, error = %e, "proxy worker cannot use its listener");
                    return;
                }
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener).await,
                    Err(e) => tracing::error!(worker = index, error = %e, "proxy worker cannot use its listener"),
                }
            });
        })
}
