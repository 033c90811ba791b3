//! The log sink: where tracing's formatted lines (the access log above all) go. A request
//! appends its line to one in-memory buffer under a short lock and never waits on I/O or
//! wakes a thread; a writer thread takes the whole buffer every [`FLUSH_EVERY`] and writes
//! it in one call. Like nginx's `access_log ... buffer= flush=`, this trades up to one
//! interval of delay for no per-line syscall or thread wake-up, which on a busy proxy were
//! a tenth of its CPU. If the output stalls and [`MAX_BUFFERED`] bytes are waiting, further
//! lines are dropped and counted (the proxy must never block on a slow log reader), and the
//! count is reported once the output drains. Dropping the [`FlushGuard`] writes what is left.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How often the writer thread writes what has gathered.
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Bytes allowed to wait; lines beyond this are dropped and counted.
pub const MAX_BUFFERED: usize = 16 << 20;

struct Shared {
    buffer: Mutex<Buffer>,
    dropped_lines: AtomicU64,
    /// Asks the writer thread for its last round.
    closing: AtomicBool,
}

/// The waiting lines, and whether the writer has taken them for the last time (checked
/// under the same lock, so no line can slip in after the last round and be lost).
struct Buffer {
    bytes: Vec<u8>,
    closed: bool,
}

/// The `MakeWriter` handed to tracing-subscriber; cheap to clone.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

/// Stops the writer thread and writes everything still buffered when dropped.
pub struct FlushGuard {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl LogSink {
    /// A sink whose writer thread writes to `output`.
    pub fn spawn(output: Box<dyn Write + Send>) -> (LogSink, FlushGuard) {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer {
                bytes: Vec::with_capacity(64 << 10),
                closed: false,
            }),
            dropped_lines: AtomicU64::new(0),
            closing: AtomicBool::new(false),
        });
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("pinpoint-log".into())
                .spawn(move || write_loop(&shared, output))
                .ok()
        };
        if writer.is_none() {
            // No writer thread: lines go straight to stderr instead of into the void.
            eprintln!("pinpoint: could not start the log writer thread; logging unbuffered to stderr");
            shared.buffer.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        }
        (LogSink { shared: shared.clone() }, FlushGuard { shared, writer })
    }

    fn append(&self, line: &[u8]) {
        let mut buffer = self.shared.buffer.lock().unwrap_or_else(|p| p.into_inner());
        if buffer.closed {
            // Nothing will write the buffer again: straight to stderr instead.
            drop(buffer);
            let _ = std::io::stderr().write_all(line);
            return;
        }
        if buffer.bytes.len() + line.len() > MAX_BUFFERED {
            drop(buffer);
            self.shared.dropped_lines.fetch_add(1, Ordering::Relaxed);
            return;
        }
        buffer.bytes.extend_from_slice(line);
    }
}

fn write_loop(shared: &Shared, mut output: Box<dyn Write + Send>) {
    // Two buffers trade places, so steady state allocates nothing.
    let mut spare = Vec::with_capacity(64 << 10);
    loop {
        let closing = shared.closing.load(Ordering::Acquire);
        {
            let mut buffer = shared.buffer.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut buffer.bytes, &mut spare);
            buffer.closed = closing;
        }
        if !spare.is_empty() {
            // A failed write (closed stdout) has nowhere to be reported; the lines are lost.
            let _ = output.write_all(&spare).and_then(|()| output.flush());
            spare.clear();
        }
        let dropped = shared.dropped_lines.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let _ = writeln!(
                output,
                "pinpoint: the log output fell {MAX_BUFFERED} bytes behind; {dropped} lines were dropped"
            );
        }
        if closing {
            return;
        }
        std::thread::park_timeout(FLUSH_EVERY);
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        if let Some(writer) = self.writer.take() {
            writer.thread().unpark();
            let _ = writer.join();
        }
    }
}

/// One event's line: tracing-subscriber formats an event completely and then writes it with
/// one `write_all`, so each line reaches the buffer whole.
pub struct LineWriter<'a> {
    sink: &'a LogSink,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.sink.append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { sink: self }
    }
}

/// An output tests can read back: the sink's, or tracing's writer.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Captured(pub(crate) Arc<Mutex<Vec<u8>>>);

#[cfg(test)]
impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_arrive_whole_and_in_order_and_the_guard_writes_the_rest() {
        let captured = Captured::default();
        let (sink, guard) = LogSink::spawn(Box::new(captured.clone()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        sink.make_writer()
                            .write_all(format!("thread {t} line {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        // After the last round, the buffer is closed: later lines go to stderr, none is
        // left in a buffer nobody writes.
        assert!(sink.shared.buffer.lock().unwrap().closed);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2000);
        for t in 0..4 {
            let mine: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let expected: Vec<String> = (0..500).map(|i| format!("thread {t} line {i}")).collect();
            assert_eq!(mine, expected);
        }
    }

    #[test]
    fn lines_are_written_without_a_flush_from_the_caller() {
        let captured = Captured::default();
        let (sink, _guard) = LogSink::spawn(Box::new(captured.clone()));
        sink.make_writer().write_all(b"hello\n").unwrap();
        // Poll for the writer thread's periodic flush (no fixed sleep).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while captured.0.lock().unwrap().as_slice() != b"hello\n" {
            assert!(std::time::Instant::now() < deadline, "the line was never written");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// An output that blocks until released, like a log reader that stopped reading.
    struct Stalled(Arc<(Mutex<bool>, std::sync::Condvar)>, Captured);
    impl Write for Stalled {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let (released, cv) = &*self.0;
            let mut r = released.lock().unwrap();
            while !*r {
                r = cv.wait(r).unwrap();
            }
            self.1.write(bytes)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_output_drops_and_counts_lines_instead_of_blocking() {
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let captured = Captured::default();
        let (sink, guard) = LogSink::spawn(Box::new(Stalled(gate.clone(), captured.clone())));
        let line = vec![b'x'; 1023].into_iter().chain([b'\n']).collect::<Vec<u8>>();
        // Twice the cap: the writer holds at most one buffer, so lines must be dropped, and
        // every append returns at once.
        for _ in 0..(2 * MAX_BUFFERED / line.len() + 10) {
            sink.make_writer().write_all(&line).unwrap();
        }
        assert!(sink.shared.dropped_lines.load(Ordering::Relaxed) > 0);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drop(guard);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("lines were dropped"), "the drop is reported");
    }
}
