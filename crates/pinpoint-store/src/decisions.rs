//! The decision log: the proxy hands each [`Decision`] to [`DecisionLog::record`], which
//! never blocks. It counts the decision in the per-minute rollups (`rollups`), then keeps
//! its record when it must (a refusal, a report-mode would-deny, a 5xx) or when the
//! request is in the route's sample of allowed requests (drawn from the request id's random
//! part, so the API can tell which ids no sample would have kept), in a bounded queue; on overflow the
//! record is dropped, counted in `pinpoint_decision_log_dropped_total{reason}` and logged. A writer task drains the queue in
//! batches (up to `batch_size`, or what arrived within `flush_interval_ms`), one
//! transaction each, prunes old decisions, and on [`DecisionLogWriter::finish`]
//! writes everything still queued before it returns.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pinpoint_core::config::{DecisionLogConfig, SampleRate};
use pinpoint_core::{Decision, Mark};
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::rollups::Rollups;
use crate::{now_ms, Backend, Store, StoreError};

/// Metric counting records dropped, by reason: `queue_full`, `writer_stopped` (the
/// writer is gone: shutdown), `write_failed` (the store refused a batch).
pub const DROPPED_METRIC: &str = "pinpoint_decision_log_dropped_total";
/// Metric counting decisions written to the store.
pub const WRITTEN_METRIC: &str = "pinpoint_decision_log_written_total";

/// The producer side; cheap to clone.
#[derive(Clone)]
pub struct DecisionLog {
    tx: mpsc::Sender<Decision>,
    drops: Arc<DropCounts>,
    rollups: Arc<Rollups>,
}

/// Records that were to be kept and were not, by reason (as in [`DROPPED_METRIC`]).
#[derive(Debug, Default)]
pub struct DropCounts {
    queue_full: AtomicU64,
    writer_stopped: AtomicU64,
    write_failed: AtomicU64,
}

impl DropCounts {
    /// Each reason with its count so far.
    pub fn by_reason(&self) -> [(&'static str, u64); 3] {
        [
            ("queue_full", self.queue_full.load(Ordering::Relaxed)),
            ("writer_stopped", self.writer_stopped.load(Ordering::Relaxed)),
            ("write_failed", self.write_failed.load(Ordering::Relaxed)),
        ]
    }

    /// All of them.
    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n).sum()
    }
}

/// The writer; call [`DecisionLogWriter::finish`] on shutdown.
pub struct DecisionLogWriter {
    close: oneshot::Sender<()>,
    done: Option<oneshot::Receiver<()>>,
    task: Option<JoinHandle<()>>,
}

impl DecisionLog {
    /// Starts the writer on a thread of its own (`pinpoint-decisions`, with its own
    /// event loop): encoding a batch takes milliseconds, which on a proxy worker's event
    /// loop held up every request behind it (p99 at a fixed load: bench/README.md). If the
    /// thread cannot start, the writer runs as a task on the caller's runtime instead.
    pub fn spawn(store: Store, config: DecisionLogConfig) -> (DecisionLog, DecisionLogWriter) {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let (close, close_rx) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        let rollups = Arc::new(Rollups::default());
        let drops = Arc::new(DropCounts::default());
        let writer = std::sync::Arc::new(std::sync::Mutex::new(Some((
            Writer {
                store,
                config,
                rollups: rollups.clone(),
                drops: drops.clone(),
            },
            rx,
            close_rx,
            done_tx,
        ))));
        let for_thread = writer.clone();
        let started = std::thread::Builder::new()
            .name("pinpoint-decisions".into())
            .spawn(move || {
                let Some((writer, rx, close_rx, done_tx)) = for_thread.lock().unwrap_or_else(|p| p.into_inner()).take()
                else {
                    return;
                };
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime.block_on(write_loop(writer, rx, close_rx)),
                    Err(e) => tracing::error!(error = %e, "decision log writer cannot start; decisions are not stored"),
                }
                let _ = done_tx.send(());
            });
        let (done, task) = match started {
            Ok(_) => (Some(done), None),
            Err(e) => {
                tracing::warn!(error = %e, "no thread for the decision log writer; it runs on the proxy's");
                let task = writer
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .map(|(writer, rx, close_rx, _)| tokio::spawn(write_loop(writer, rx, close_rx)));
                (None, task)
            }
        };
        let log = DecisionLog { tx, drops, rollups };
        (log, DecisionLogWriter { close, done, task })
    }

    /// Counts a decision in the rollups and queues its record, without waiting, when it
    /// must be kept or `sample` draws it. Returns false when a record that was to be kept
    /// was dropped.
    pub fn record(&self, decision: Decision, sample: SampleRate) -> bool {
        self.rollups.count(&decision);
        if !must_keep(&decision) && !sample.keeps(draw(&decision.request_id)) {
            return true;
        }
        match self.tx.try_send(decision) {
            Ok(()) => true,
            Err(err) => {
                let (why, count) = match err {
                    mpsc::error::TrySendError::Full(_) => ("queue_full", &self.drops.queue_full),
                    mpsc::error::TrySendError::Closed(_) => ("writer_stopped", &self.drops.writer_stopped),
                };
                metrics::counter!(DROPPED_METRIC, "reason" => why).increment(1);
                count.fetch_add(1, Ordering::Relaxed);
                let total = self.drops.total();
                // Log the first drop and then every 1000th, so a flood cannot flood the log.
                if total == 1 || total % 1000 == 0 {
                    tracing::warn!(dropped_total = total, why, "decision log dropped a decision");
                }
                false
            }
        }
    }

    /// Records dropped so far by this log.
    pub fn dropped(&self) -> u64 {
        self.drops.total()
    }

    /// Records dropped so far, by reason (`/healthz` shows them).
    pub fn drops(&self) -> Arc<DropCounts> {
        self.drops.clone()
    }
}

impl DecisionLogWriter {
    /// Stops accepting decisions, writes everything still queued, and waits for it.
    pub async fn finish(self) {
        let _ = self.close.send(());
        if let Some(done) = self.done {
            // Err: the thread ended without saying so (it panicked); nothing more to wait for.
            let _ = done.await;
        }
        if let Some(task) = self.task {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "decision log writer failed");
            }
        }
    }
}

/// Whether a decision's record is kept whatever the sample: Pinpoint refused or failed
/// it, a report-mode layer would have refused it, or the upstream failed (5xx).
fn must_keep(decision: &Decision) -> bool {
    decision.reason.is_some() || decision.status >= 500 || decision.trace.iter().any(|t| t.mark == Mark::WouldDeny)
}

/// A request's draw for sampling, uniform in 0..1,000,000: from the last eight hex digits
/// of Pinpoint's request id (random bits), so the draw can be made again from the id alone
/// (the decisions API does, to say an allowed request was not sampled). An id of another
/// shape draws 0, which every sample keeps.
pub fn draw(request_id: &str) -> u32 {
    request_id
        .len()
        .checked_sub(8)
        .and_then(|start| request_id.get(start..))
        .and_then(|tail| u32::from_str_radix(tail, 16).ok())
        .map_or(0, |bits| ((u64::from(bits) * 1_000_000) >> 32) as u32)
}

/// What the writer task owns.
struct Writer {
    store: Store,
    config: DecisionLogConfig,
    rollups: Arc<Rollups>,
    drops: Arc<DropCounts>,
}

/// Where decisions wait while the store cannot take them: one record per line in
/// `decision-spool.jsonl` under the data directory, bounded by [`SPOOL_MAX_BYTES`] (what
/// does not fit is dropped and counted as `write_failed`). While it holds anything, new
/// batches join it (order is kept), and it is replayed into the store at most once a
/// [`SPOOL_RETRY_EVERY`]; a spool left at exit is replayed by the next start.
struct Spool {
    path: std::path::PathBuf,
    bytes: u64,
    last_try: Option<std::time::Instant>,
    /// The last replay failed (said once per streak).
    refused: bool,
}

/// The most the spool file holds (64 MiB, about 100,000 refusals).
const SPOOL_MAX_BYTES: u64 = 64 << 20;

/// How often a non-empty spool is offered to the store.
const SPOOL_RETRY_EVERY: Duration = Duration::from_secs(1);

/// File name of the spool in the data directory.
pub const SPOOL_FILE: &str = "decision-spool.jsonl";

impl Spool {
    fn open(store: &Store) -> Spool {
        let path = store.data_dir().join(SPOOL_FILE);
        let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        Spool {
            path,
            bytes,
            last_try: None,
            refused: false,
        }
    }

    fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Appends what fits; returns how many records did not.
    fn append(&mut self, batch: &[Decision]) -> u64 {
        use std::io::Write;
        let mut text = String::new();
        let mut kept = 0;
        for d in batch {
            let line = crate::record::encode(d);
            if self.bytes + (text.len() + line.len() + 1) as u64 > SPOOL_MAX_BYTES {
                break;
            }
            text.push_str(&line);
            text.push('\n');
            kept += 1;
        }
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            // Decisions name callers and paths: for the operator only, as the store is.
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let written = options
            .open(&self.path)
            .and_then(|mut file| file.write_all(text.as_bytes()));
        match written {
            Ok(()) => {
                self.bytes += text.len() as u64;
                (batch.len() - kept) as u64
            }
            Err(e) => {
                tracing::error!(error = %e, path = %self.path.display(), "cannot write the decision spool");
                batch.len() as u64
            }
        }
    }

    fn due(&self) -> bool {
        self.last_try.is_none_or(|at| at.elapsed() >= SPOOL_RETRY_EVERY)
    }

    /// Offers everything spooled to the store; emptied when it all went in.
    async fn replay(&mut self, store: &Store) {
        self.last_try = Some(std::time::Instant::now());
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(error = %e, path = %self.path.display(), "cannot read the decision spool");
                return;
            }
        };
        // A line that does not parse (a torn write at a crash) is skipped, not retried. A
        // line is the record as it was encoded: stored as it is.
        let spooled: Vec<(Decision, &str)> = text
            .lines()
            .filter_map(|line| Some((serde_json::from_str(line).ok()?, line)))
            .collect();
        let rows: Vec<DecisionRow> = spooled
            .iter()
            .map(|(decision, line)| DecisionRow {
                decision,
                record: std::borrow::Cow::Borrowed(line),
                org_id: decision.org_id(),
            })
            .collect();
        // All in one transaction: a failure part-way leaves nothing written, so nothing is
        // written twice when the next round offers the spool again.
        if let Err(e) = insert_rows(store, &rows).await {
            if !self.refused {
                tracing::warn!(error = %e, spooled = spooled.len(), "the store refuses the spooled decisions; offered again every second");
            }
            self.refused = true;
            return;
        }
        self.refused = false;
        // Replayed (a crash between the inserts and this truncation replays them again).
        if let Err(e) = std::fs::write(&self.path, b"") {
            tracing::error!(error = %e, path = %self.path.display(), "cannot empty the decision spool");
            return;
        }
        self.bytes = 0;
        metrics::counter!(WRITTEN_METRIC).increment(spooled.len() as u64);
        tracing::info!(count = spooled.len(), "the store is back: spooled decisions written");
    }
}

/// Adds the rollup counts gathered so far to the store; on failure they are kept for the
/// next round.
async fn flush_rollups(writer: &Writer) {
    let counts = writer.rollups.take();
    if let Err(e) = crate::rollups::add(&writer.store, &counts).await {
        tracing::warn!(error = %e, "could not store decision rollups; kept for the next round");
        writer.rollups.restore(counts);
    }
}

async fn write_loop(writer: Writer, mut rx: mpsc::Receiver<Decision>, mut close: oneshot::Receiver<()>) {
    let (store, config) = (&writer.store, writer.config);
    let mut rollup_tick = tokio::time::interval(crate::rollups::FLUSH_EVERY);
    rollup_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let batch_size = config.batch_size.max(1);
    let flush_interval = Duration::from_millis(config.flush_interval_ms);
    let mut batch = Vec::with_capacity(batch_size);
    let mut prune = tokio::time::interval(Duration::from_secs(600));
    let mut closing = false;
    let mut last_rollup_flush = std::time::Instant::now();
    let mut spool = Spool::open(store);
    // A ticker, not a sleep made anew each round: the other timers' rounds would restart it.
    let mut spool_tick = tokio::time::interval(SPOOL_RETRY_EVERY);
    spool_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !closing {
        // The timers before the queue: under a flood of kept records the queue is never
        // empty, and counts and pruning must still happen on time.
        tokio::select! {
            biased;
            _ = &mut close => break,
            _ = rollup_tick.tick() => {
                flush_rollups(&writer).await;
                continue;
            }
            _ = prune.tick() => {
                prune_old(store, config.retention_hours, config.max_store_mb).await;
                continue;
            }
            _ = spool_tick.tick(), if !spool.is_empty() => {
                if spool.due() {
                    spool.replay(store).await;
                }
                continue;
            }
            n = rx.recv_many(&mut batch, batch_size) => if n == 0 { break },
        }
        // Let more gather for `flush_interval`: fewer, larger transactions rewrite far fewer
        // pages, which is most of what storing a decision costs. The writer sleeps through
        // the interval instead of waiting on the queue, so the requests that fill it wake no
        // one (a wake-up per decision was a cross-thread futex call per request).
        if batch.len() < batch_size {
            tokio::select! {
                biased;
                _ = &mut close => closing = true,
                _ = tokio::time::sleep(flush_interval) => {}
            }
        }
        loop {
            while batch.len() < batch_size {
                match rx.try_recv() {
                    Ok(decision) => batch.push(decision),
                    Err(_) => break,
                }
            }
            let full = batch.len() == batch_size;
            let failed = write_batch(store, &mut spool, &mut batch).await;
            writer.drops.write_failed.fetch_add(failed, Ordering::Relaxed);
            if !full {
                break;
            }
            // Full batches back to back: a backlog. Counts still go every second.
            if last_rollup_flush.elapsed() >= crate::rollups::FLUSH_EVERY {
                flush_rollups(&writer).await;
                last_rollup_flush = std::time::Instant::now();
            }
        }
    }
    rx.close();
    while rx.recv_many(&mut batch, batch_size).await > 0 {
        let failed = write_batch(store, &mut spool, &mut batch).await;
        writer.drops.write_failed.fetch_add(failed, Ordering::Relaxed);
    }
    if !spool.is_empty() {
        // One last offer; what stays is replayed by the next start.
        spool.replay(store).await;
    }
    let counts = writer.rollups.take();
    if let Err(e) = crate::rollups::add(&writer.store, &counts).await {
        tracing::error!(error = %e, "could not store the last decision rollups; these minutes' counts are incomplete");
    }
}

/// Writes `batch` (to the spool when the store refuses it, or when the spool already holds
/// records, which keeps their order) and empties it; returns how many records were lost
/// (what the spool had no room for).
async fn write_batch(store: &Store, spool: &mut Spool, batch: &mut Vec<Decision>) -> u64 {
    let count = batch.len() as u64;
    let mut failed = 0;
    if spool.is_empty() {
        match insert_all(store, batch).await {
            Ok(()) => metrics::counter!(WRITTEN_METRIC).increment(count),
            Err(e) => {
                tracing::error!(error = %e, count, "decision log could not write a batch; spooling until the store is back");
                failed = spool.append(batch);
                spool.last_try = Some(std::time::Instant::now());
            }
        }
    } else {
        failed = spool.append(batch);
        if spool.due() {
            spool.replay(store).await;
        }
    }
    if failed > 0 {
        metrics::counter!(DROPPED_METRIC, "reason" => "write_failed").increment(failed);
    }
    batch.clear();
    failed
}

/// Where SQLite finds the organization of a row written before schema v10 (no `org_id`
/// column value): in its record, `caller.org_id`, or before callers were records, `org_id`.
/// A macro, so the queries that use it stay literals.
macro_rules! sqlite_record_org {
    () => {
        "COALESCE(json_extract(record, '$.caller.org_id'), json_extract(record, '$.org_id'))"
    };
}
pub(crate) use sqlite_record_org;

pub(crate) async fn insert_all(store: &Store, batch: &[Decision]) -> Result<(), StoreError> {
    let rows: Vec<DecisionRow> = batch
        .iter()
        .map(|d| DecisionRow {
            decision: d,
            record: std::borrow::Cow::Owned(crate::record::encode(d)),
            org_id: d.org_id(),
        })
        .collect();
    insert_rows(store, &rows).await
}

/// A decision as it is inserted: its record (encoded now, or as it was stored before: a
/// spool line, a migrated row), and the organization it is filed under.
pub(crate) struct DecisionRow<'a> {
    pub decision: &'a Decision,
    pub record: std::borrow::Cow<'a, str>,
    pub org_id: Option<&'a str>,
}

/// Inserts `rows` in one transaction (all or none).
pub(crate) async fn insert_rows(store: &Store, rows: &[DecisionRow<'_>]) -> Result<(), StoreError> {
    let inserted = insert_rows_once(store, rows).await;
    if inserted.is_err() && store.backend() == Backend::Postgres {
        crate::postgres::forget_partitions(store);
    }
    inserted
}

async fn insert_rows_once(store: &Store, rows: &[DecisionRow<'_>]) -> Result<(), StoreError> {
    // Multi-row INSERTs: far fewer round trips to SQLite's worker thread than one statement
    // per decision. 8 binds a row keeps every chunk well under SQLite's limit.
    let postgres = store.backend() == Backend::Postgres;
    if postgres {
        crate::postgres::ensure_day_partitions(store, rows.iter().map(|r| r.decision.at_ms)).await?;
    }
    let mut tx = store.write_tx().await?;
    let mut rest = rows;
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(chunk_len(rest.len()));
        rest = after;
        let mut insert = sqlx::query(insert_statement(chunk.len()));
        for row in chunk {
            let d = row.decision;
            let at_ms = if postgres {
                crate::postgres::filed_at(d.at_ms)
            } else {
                d.at_ms
            };
            insert = insert
                .bind(&d.request_id)
                .bind(d.client_request_id.as_deref())
                .bind(at_ms)
                .bind(i64::from(d.status))
                .bind(d.reason.map(|r| r.code()))
                .bind(d.route.as_deref())
                .bind(row.org_id)
                .bind(row.record.as_ref());
        }
        insert.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Rows per INSERT statement. A batch is cut into chunks of these sizes, largest first, so
/// only these few statements ever exist and each is parsed once and then reused from the
/// connection's statement cache; a statement of any other size would be parsed anew, which
/// costs about as much as inserting its rows.
const CHUNK_SIZES: [usize; 5] = [256, 64, 16, 4, 1];

/// The multi-row INSERT of `rows` decisions (one of [`CHUNK_SIZES`]), with `$N`
/// placeholders (both backends take them), built once per size.
fn insert_statement(rows: usize) -> &'static str {
    static STATEMENTS: std::sync::OnceLock<Vec<(usize, String)>> = std::sync::OnceLock::new();
    let statements = STATEMENTS.get_or_init(|| {
        CHUNK_SIZES
            .iter()
            .map(|&size| {
                let mut sql = String::from(
                    "INSERT INTO decisions (request_id, client_request_id, at_ms, status, reason, route, org_id, record) VALUES ",
                );
                for row in 0..size {
                    let first = row * 8;
                    let values: Vec<String> = (1..=8).map(|column| format!("${}", first + column)).collect();
                    if row > 0 {
                        sql.push_str(", ");
                    }
                    sql.push('(');
                    sql.push_str(&values.join(", "));
                    sql.push(')');
                }
                (size, sql)
            })
            .collect()
    });
    statements
        .iter()
        .find(|(size, _)| *size == rows)
        .or(statements.last())
        .map_or("", |(_, sql)| sql.as_str())
}

/// The size of the next chunk when `remaining` rows are left (at least 1).
fn chunk_len(remaining: usize) -> usize {
    CHUNK_SIZES.into_iter().find(|&size| size <= remaining).unwrap_or(1)
}

/// Metric counting decision records pruned, by reason: `age` (past `retention_hours`) or
/// `size` (the oldest, while the store holds more than `max_store_mb`).
pub const PRUNED_METRIC: &str = "pinpoint_decision_log_pruned_total";

/// What the decision records take in the store, estimated: their count times the size of
/// the newest thousand records plus what a row costs beside its record (columns and the
/// request-id index entry, about 160 bytes). Estimated, not measured page by page: the
/// other tables (the directory, the rollups) do not count against `max_store_mb`.
async fn decision_bytes(store: &Store) -> Result<u64, StoreError> {
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM decisions),
                (SELECT CAST(COALESCE(AVG(length(record)), 0.0) AS DOUBLE PRECISION)
                 FROM (SELECT record FROM decisions ORDER BY seq DESC LIMIT 1000) AS newest)",
    )
    .fetch_one(store.pool())
    .await?;
    let (rows, average): (i64, f64) = (row.try_get(0)?, row.try_get(1)?);
    Ok((rows.max(0) as f64 * (average + ROW_OVERHEAD_BYTES)) as u64)
}

/// What a decision row costs beside its record.
const ROW_OVERHEAD_BYTES: f64 = 160.0;

/// Decision records size pruning never goes below: the newest always stay.
const KEPT_WHATEVER_THE_SIZE: i64 = 1000;

/// Deletes the oldest decision records, a tenth of them (at least 1,000) a round, while
/// they take more than `max_bytes`, keeping the newest [`KEPT_WHATEVER_THE_SIZE`]. Returns
/// how many went.
async fn prune_to_size(store: &Store, max_bytes: u64) -> Result<u64, StoreError> {
    let mut pruned = 0;
    while decision_bytes(store).await? > max_bytes {
        let done = sqlx::query(
            "DELETE FROM decisions WHERE seq < MIN(
                (SELECT MIN(seq) + MAX(1000, COUNT(*) / 10) FROM decisions),
                (SELECT seq FROM decisions ORDER BY seq DESC LIMIT 1 OFFSET $1))",
        )
        .bind(KEPT_WHATEVER_THE_SIZE - 1)
        .execute(store.pool())
        .await?;
        if done.rows_affected() == 0 {
            break;
        }
        pruned += done.rows_affected();
    }
    Ok(pruned)
}

async fn prune_old(store: &Store, retention_hours: u64, max_store_mb: u64) {
    let horizon = now_ms().saturating_sub((retention_hours as i64).saturating_mul(3_600_000));
    if store.backend() == Backend::Postgres {
        // Whole days: partitions are dropped, rows are never deleted one by one.
        let max_bytes = (max_store_mb > 0).then(|| max_store_mb.saturating_mul(1 << 20));
        match crate::postgres::drop_old_partitions(store, horizon, max_bytes).await {
            Ok(0) => {}
            Ok(days) => tracing::info!(days, "dropped old decision partitions"),
            Err(e) => tracing::warn!(error = %e, "could not drop old decision partitions"),
        }
        return;
    }
    // Rows are appended in time order, so everything before the first row inside the
    // retention window is older: found by walking `seq` from the start, which touches only
    // the rows about to go (no index on `at_ms` to keep up on every insert).
    match sqlx::query(
        "DELETE FROM decisions WHERE seq < COALESCE(
            (SELECT seq FROM decisions WHERE at_ms >= $1 ORDER BY seq LIMIT 1),
            (SELECT MAX(seq) + 1 FROM decisions))",
    )
    .bind(horizon)
    .execute(store.pool())
    .await
    {
        Ok(done) if done.rows_affected() > 0 => {
            metrics::counter!(PRUNED_METRIC, "reason" => "age").increment(done.rows_affected());
            tracing::info!(pruned = done.rows_affected(), "pruned old decisions")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not prune old decisions"),
    }
    if max_store_mb > 0 {
        match prune_to_size(store, max_store_mb.saturating_mul(1 << 20)).await {
            Ok(0) => {}
            Ok(pruned) => {
                metrics::counter!(PRUNED_METRIC, "reason" => "size").increment(pruned);
                tracing::info!(
                    pruned,
                    max_store_mb,
                    "pruned the oldest decisions to keep the store within its size"
                );
            }
            Err(e) => tracing::warn!(error = %e, "could not prune decisions by size"),
        }
    }
    // Counts are small and baselines look a week back: kept at least eight days.
    let rollup_horizon = now_ms().saturating_sub((retention_hours.max(8 * 24) as i64).saturating_mul(3_600_000));
    if let Err(e) = crate::rollups::prune(store, rollup_horizon).await {
        tracing::warn!(error = %e, "could not prune old decision rollups");
    }
    if let Err(e) = crate::revisions::prune(store, rollup_horizon).await {
        tracing::warn!(error = %e, "could not prune old config loads");
    }
}

/// Stored decisions, found by request id (the writer appends them in batches).
pub trait DecisionStore {
    /// The decisions recorded under `id`, as Pinpoint's request id or as the client's own,
    /// newest first, at most `limit`; only those of organization `org` when given (so
    /// other tenants' requests under the same client id cannot crowd them out).
    fn decisions_by_id(
        &self,
        id: &str,
        org: Option<&str>,
        limit: u32,
    ) -> impl std::future::Future<Output = Result<Vec<Decision>, StoreError>> + Send;

    /// The most recent decision recorded under `id` (Pinpoint's request id or the client's).
    fn decision(&self, id: &str) -> impl std::future::Future<Output = Result<Option<Decision>, StoreError>> + Send;

    /// The decisions whose record holds `text` anywhere, newest first, at most `limit`
    /// (an operator's scan of the whole log, such as `config check` looking for the WAF
    /// exclusions traces name; not for the hot path).
    fn decisions_containing(
        &self,
        text: &str,
        limit: u32,
    ) -> impl std::future::Future<Output = Result<Vec<Decision>, StoreError>> + Send;

    /// The most recent stored decisions that pass `filter`, newest first.
    fn recent_decisions(
        &self,
        filter: &DecisionFilter,
    ) -> impl std::future::Future<Output = Result<Vec<Decision>, StoreError>> + Send;
}

/// Which stored decisions [`DecisionStore::recent_decisions`] lists.
#[derive(Debug, Clone, Default)]
pub struct DecisionFilter {
    /// Only this organization's (its callers' requests).
    pub org: Option<String>,
    pub route: Option<String>,
    /// A reason code; `Some("-")`: only decisions without one (allowed requests).
    pub reason: Option<String>,
    /// The first part of the reason code (`authz`).
    pub layer: Option<String>,
    pub status: Option<u16>,
    /// Only decisions at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// At most this many.
    pub limit: u32,
}

impl DecisionStore for Store {
    async fn decisions_by_id(&self, id: &str, org: Option<&str>, limit: u32) -> Result<Vec<Decision>, StoreError> {
        // Rows written before schema v10 have no `org_id` column value: their record says
        // (in `caller`, or at its top level before records named callers by id only).
        let sql = match self.backend() {
            Backend::Sqlite => concat!(
                "SELECT record FROM decisions WHERE (request_id = $1 OR client_request_id = $1) ",
                "AND ($2 IS NULL OR org_id = $2 OR (org_id IS NULL AND ",
                sqlite_record_org!(),
                " = $2)) ORDER BY seq DESC LIMIT $3"
            ),
            // A PostgreSQL store began after v10: every row has its organization column.
            Backend::Postgres => {
                "SELECT record FROM decisions WHERE (request_id = $1 OR client_request_id = $1) \
                 AND ($2 IS NULL OR org_id = $2) ORDER BY seq DESC LIMIT $3"
            }
        };
        let rows = sqlx::query(sql)
            .bind(id)
            .bind(org)
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        records(rows)
    }

    async fn decision(&self, id: &str) -> Result<Option<Decision>, StoreError> {
        Ok(self.decisions_by_id(id, None, 1).await?.into_iter().next())
    }

    async fn recent_decisions(&self, filter: &DecisionFilter) -> Result<Vec<Decision>, StoreError> {
        // Newest first along `seq`: the scan stops after `limit` matches.
        let rows = sqlx::query(
            "SELECT record FROM decisions WHERE ($1 IS NULL OR org_id = $1) AND ($2 IS NULL OR route = $2) \
             AND ($3 IS NULL OR ($3 = '-' AND reason IS NULL) OR reason = $3) \
             AND ($4 IS NULL OR substr(reason, 1, length($4) + 1) = $4 || '.') \
             AND ($5 IS NULL OR status = $5) AND ($6 IS NULL OR at_ms >= $6) \
             ORDER BY seq DESC LIMIT $7",
        )
        .bind(filter.org.as_deref())
        .bind(filter.route.as_deref())
        .bind(filter.reason.as_deref())
        .bind(filter.layer.as_deref())
        .bind(filter.status.map(i64::from))
        .bind(filter.since_ms)
        .bind(i64::from(filter.limit))
        .fetch_all(self.pool())
        .await?;
        records(rows)
    }

    async fn decisions_containing(&self, text: &str, limit: u32) -> Result<Vec<Decision>, StoreError> {
        let sql = match self.backend() {
            Backend::Sqlite => "SELECT record FROM decisions WHERE instr(record, $1) > 0 ORDER BY seq DESC LIMIT $2",
            Backend::Postgres => "SELECT record FROM decisions WHERE strpos(record, $1) > 0 ORDER BY seq DESC LIMIT $2",
        };
        let rows = sqlx::query(sql)
            .bind(text)
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        records(rows)
    }
}

/// The decisions in rows of a `record` column.
fn records(rows: Vec<sqlx::any::AnyRow>) -> Result<Vec<Decision>, StoreError> {
    rows.iter()
        .map(|row| {
            let record: String = row.try_get("record")?;
            Ok(serde_json::from_str(&record)?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinpoint_core::{LayerTrace, Mark, Mode, Reason};

    pub(super) fn decision(id: &str) -> Decision {
        Decision {
            request_id: id.into(),
            client_request_id: Some(format!("client-{id}")),
            at_ms: now_ms(),
            trace_id: None,
            client_cert: None,
            method: "POST".into(),
            path: "/admin/x".into(),
            raw_path: Some("/admin//x".into()),
            host: None,
            client_addr: "127.0.0.1:1".into(),
            route: Some("admin".into()),
            principal: None,
            caller: Some(pinpoint_core::CallerRecord {
                principal_id: Some("u-1".into()),
                org_id: "o-1".into(),
                credential: pinpoint_core::CredentialKind::ApiKey,
                key_id: Some("k-1".into()),
                token_id: None,
            }),
            status: 403,
            reason: Some(Reason::PolicyExplicitDeny),
            upstream_target: None,
            config_revision: "r000000000000".into(),
            duration_micros: 10,
            trace: vec![LayerTrace {
                layer: "policy".into(),
                mark: Mark::Deny,
                mode: Mode::Enforce,
                reason: Some(Reason::PolicyExplicitDeny),
                rule_id: Some("r1".into()),
                detail: None,
                note: None,
                platform_note: None,
                micros: 3,
            }],
        }
    }

    #[test]
    fn a_sample_keeps_its_share_of_request_ids_and_odd_ids_are_kept() {
        let rate = SampleRate::try_from(0.25).unwrap();
        let kept = (0..20_000u64)
            .map(|i| {
                pinpoint_core::request_id::format(
                    1_796_000_000_000 + i,
                    u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835),
                )
            })
            .filter(|id| rate.keeps(draw(id)))
            .count();
        assert!((4_600..=5_400).contains(&kept), "{kept} of 20000 at 25%");
        for odd in ["", "short", "not-hex-at-all!!", "client-id"] {
            assert!(SampleRate::from_ppm(1).keeps(draw(odd)), "{odd:?}");
        }
        assert!(!SampleRate::from_ppm(0).keeps(draw("01a2493d8d34dc5320fc291b978c2af5")));
        assert!(SampleRate::ALL.keeps(draw("01a2493d8d34dc5320fc291bffffffff")));
    }

    #[test]
    fn refusals_would_denies_and_server_errors_are_always_kept() {
        let allowed = || {
            let mut d = decision("a");
            d.status = 200;
            d.reason = None;
            d.trace.retain(|t| t.mark != Mark::WouldDeny);
            d
        };
        assert!(!must_keep(&allowed()));
        let refused = decision("r");
        let mut failed = allowed();
        failed.status = 503;
        let mut would = allowed();
        would.trace.push(pinpoint_core::LayerTrace::new(
            "waf",
            Mark::WouldDeny,
            pinpoint_core::Mode::Report,
        ));
        for kept in [refused, failed, would] {
            assert!(must_keep(&kept), "{}", kept.request_id);
        }
    }

    #[tokio::test]
    async fn finish_writes_everything_queued() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let (log, writer) = DecisionLog::spawn(store.clone(), DecisionLogConfig::default());
        for i in 0..1500 {
            assert!(log.record(decision(&format!("id-{i}")), SampleRate::ALL));
        }
        writer.finish().await;
        for i in [0, 777, 1499] {
            let d = store.decision(&format!("id-{i}")).await.unwrap().unwrap();
            assert_eq!(d, decision(&format!("id-{i}")).with_at(d.at_ms));
        }
        // After finish, records are refused and counted, never blocking.
        assert!(!log.record(decision("late"), SampleRate::ALL));
        assert_eq!(log.dropped(), 1);
    }

    #[tokio::test]
    async fn overflow_drops_and_counts_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let config = DecisionLogConfig {
            queue_capacity: 4,
            ..Default::default()
        };
        let (log, writer) = DecisionLog::spawn(store.clone(), config);
        // The writer takes at most one decision off the queue before it sleeps through its
        // interval, so of ten recorded at once four or five fit, and the rest are dropped
        // and counted at once.
        let accepted: Vec<bool> = (0..10)
            .map(|i| log.record(decision(&format!("o-{i}")), SampleRate::ALL))
            .collect();
        let count = accepted.iter().filter(|a| **a).count();
        assert!((4..=5).contains(&count), "{accepted:?}");
        assert_eq!(log.dropped(), 10 - count as u64);
        writer.finish().await;
        for (i, accepted) in accepted.iter().enumerate() {
            assert_eq!(
                store.decision(&format!("o-{i}")).await.unwrap().is_some(),
                *accepted,
                "o-{i}"
            );
        }
    }

    #[tokio::test]
    async fn a_version_4_store_is_migrated_and_its_old_records_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        // Make it look like schema 4: the at_ms index back, and a record written then
        // (on one connection of the pool).
        let mut conn = store.pool().acquire().await.unwrap();
        for statement in [
            "DROP TABLE decisions",
            "CREATE TABLE decisions (seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL,
                at_ms INTEGER NOT NULL, status INTEGER NOT NULL, reason TEXT, route TEXT, record TEXT NOT NULL)",
            "CREATE INDEX decisions_request_id ON decisions(request_id)",
            "CREATE INDEX decisions_at ON decisions(at_ms)",
            "PRAGMA user_version = 4",
        ] {
            sqlx::query(statement).execute(&mut *conn).await.unwrap();
        }
        drop(conn);
        let old = decision("old");
        sqlx::query("INSERT INTO decisions (request_id, at_ms, status, record) VALUES ('old', $1, 403, $2)")
            .bind(old.at_ms)
            .bind(serde_json::to_string(&old).unwrap())
            .execute(store.pool())
            .await
            .unwrap();
        store.close().await;

        let store = Store::open(dir.path()).await.unwrap();
        assert_eq!(store.decision("old").await.unwrap().unwrap(), old);
        let mut batch = vec![decision("new")];
        write_batch(&store, &mut Spool::open(&store), &mut batch).await;
        let new = store.decision("new").await.unwrap().unwrap();
        assert_eq!(new, decision("new").with_at(new.at_ms));
        let indexes: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'decisions'")
                .fetch_all(store.pool())
                .await
                .unwrap();
        assert_eq!(
            indexes,
            [
                "decisions_request_id",
                "decisions_client_request_id",
                "decisions_client_request_org"
            ]
        );
        // An old row has no organization column value: its record says whose it is.
        assert_eq!(store.decisions_by_id("old", Some("o-1"), 5).await.unwrap().len(), 1);
        assert!(store.decisions_by_id("old", Some("o-2"), 5).await.unwrap().is_empty());
        // Found by either id.
        let by_client = store.decisions_by_id("client-new", None, 5).await.unwrap();
        assert_eq!(by_client.len(), 1);
        assert_eq!(by_client[0].request_id, "new");
    }

    #[tokio::test]
    async fn pruning_by_size_drops_the_oldest_until_the_store_fits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let mut batch: Vec<Decision> = (0..6000).map(|i| decision(&format!("d-{i:05}"))).collect();
        write_batch(&store, &mut Spool::open(&store), &mut batch).await;
        let before = decision_bytes(&store).await.unwrap();
        assert!(before > 2 << 20, "the test needs records over 2 MiB: {before}");
        prune_old(&store, 24 * 365, 2).await;
        assert!(decision_bytes(&store).await.unwrap() <= 2 << 20);
        assert!(store.decision("d-00000").await.unwrap().is_none(), "the oldest go");
        assert!(store.decision("d-05999").await.unwrap().is_some(), "the newest stay");
        // However small the limit, the newest thousand stay.
        prune_old(&store, 24 * 365, 0).await;
        prune_to_size(&store, 1).await.unwrap();
        for (id, kept) in [("d-04999", false), ("d-05000", true), ("d-05999", true)] {
            assert_eq!(store.decision(id).await.unwrap().is_some(), kept, "{id}");
        }
    }

    #[tokio::test]
    async fn pruning_removes_what_is_past_retention_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let hours_ago = |h: i64| now_ms() - h * 3_600_000;
        let at = |id: &str, at_ms: i64| decision(id).with_at(at_ms);
        let mut batch = vec![at("old-1", hours_ago(5)), at("old-2", hours_ago(3))];
        batch.extend([at("new-1", hours_ago(0) - 1000), at("new-2", hours_ago(0) - 1000)]);
        write_batch(&store, &mut Spool::open(&store), &mut batch).await;
        prune_old(&store, 2, 0).await;
        for (id, kept) in [("old-1", false), ("old-2", false), ("new-1", true), ("new-2", true)] {
            assert_eq!(store.decision(id).await.unwrap().is_some(), kept, "{id}");
        }
        // Nothing inside the window: everything goes.
        prune_old(&store, 0, 0).await;
        assert!(store.decision("new-2").await.unwrap().is_none());
    }

    #[test]
    fn batches_are_cut_into_the_few_cached_statement_sizes() {
        for total in [1usize, 3, 5, 255, 256, 300, 1000, 1500] {
            let mut left = total;
            let mut sizes = Vec::new();
            while left > 0 {
                let n = chunk_len(left);
                assert!(CHUNK_SIZES.contains(&n) && n <= left);
                sizes.push(n);
                left -= n;
            }
            assert_eq!(sizes.iter().sum::<usize>(), total);
            // Largest first, and never more than 3 chunks of a size below the largest.
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]));
            for size in &CHUNK_SIZES[1..] {
                assert!(sizes.iter().filter(|&&s| s == *size).count() <= 3);
            }
        }
    }

    pub(super) trait WithAt {
        fn with_at(self, at: i64) -> Self;
    }
    impl WithAt for Decision {
        fn with_at(mut self, at: i64) -> Self {
            self.at_ms = at;
            self
        }
    }
}

/// One suite for both backends: every aggregate written and read back through the traits,
/// on the embedded SQLite store and on a PostgreSQL database of the test's own (the server
/// on this machine, 127.0.0.1:5432, trust auth).
#[cfg(test)]
mod both_backends {
    use super::tests::{decision, WithAt};
    use super::*;
    use crate::prelude::*;
    use crate::{ChangeKind, NewKey};
    use pinpoint_core::identity::{KeyKind, PrincipalKind};
    use sqlx::Connection;

    const SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

    /// A database of the test's own, dropped by [`OwnDatabase::drop_now`].
    struct OwnDatabase(String);

    impl OwnDatabase {
        async fn create(test: &str) -> OwnDatabase {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let name = format!("pinpoint_unit_{test}_{}_{nanos}", std::process::id());
            let mut conn = sqlx::PgConnection::connect(SERVER).await.unwrap();
            // Those a failed test of an earlier run left (its process is gone) go first.
            let stale: Vec<String> =
                sqlx::query_scalar("SELECT datname::TEXT FROM pg_database WHERE datname LIKE 'pinpoint_unit_%'")
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
            for old in stale {
                let pid = old.rsplit('_').nth(1).unwrap_or_default();
                if !std::path::Path::new("/proc").join(pid).exists() {
                    let drop = format!("DROP DATABASE IF EXISTS {old} WITH (FORCE)");
                    let _ = sqlx::Executor::execute(&mut conn, drop.as_str()).await;
                }
            }
            sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
                .await
                .unwrap();
            OwnDatabase(name)
        }

        fn url(&self) -> String {
            format!("postgres://postgres@127.0.0.1:5432/{}", self.0)
        }

        async fn drop_now(self) {
            let mut conn = sqlx::PgConnection::connect(SERVER).await.unwrap();
            sqlx::Executor::execute(&mut conn, format!("DROP DATABASE {} WITH (FORCE)", self.0).as_str())
                .await
                .unwrap();
        }
    }

    async fn every_aggregate_round_trips(store: &Store) {
        // Identities, and the change feed their triggers fill.
        let head = store.directory_change_head().await.unwrap();
        let org = store.create_org("acme").await.unwrap();
        assert!(matches!(store.create_org("acme").await, Err(StoreError::Conflict(_))));
        let user = store
            .create_principal(&org.id, PrincipalKind::User, "ann", Some("ann@example.com"))
            .await
            .unwrap();
        let role = store
            .create_role(&org.id, "reader", &["orders:read".into()])
            .await
            .unwrap();
        store.assign_role(&user.id, &role.id).await.unwrap();
        store.assign_role(&user.id, &role.id).await.unwrap();
        assert_eq!(store.roles_of(&user.id).await.unwrap()[0].permissions, ["orders:read"]);
        assert!(store.assign_role("nobody", &role.id).await.is_err());

        // Keys: issued, looked up, last use only moving forward, revoked.
        let issued = store
            .create_key(NewKey {
                name: "ci".into(),
                kind: KeyKind::Application,
                org_id: org.id.clone(),
                principal_id: Some(user.id.clone()),
                scopes: Some(vec!["orders:read".into()]),
                expires_at_ms: None,
            })
            .await
            .unwrap();
        let id = issued.info.id.clone();
        store.touch_keys(&[(id.clone(), 5000)]).await.unwrap();
        store.touch_keys(&[(id.clone(), 3000)]).await.unwrap();
        let stored = store.stored_key(&id).await.unwrap().unwrap();
        assert_eq!(stored.info.last_used_at_ms, Some(5000));
        assert_eq!(stored.info.scopes.as_deref(), Some(&["orders:read".to_owned()][..]));
        store.revoke_key(&id).await.unwrap();
        assert!(store.stored_key(&id).await.unwrap().unwrap().info.revoked);
        let changes = store.directory_changes_after(head, 100).await.unwrap();
        for kind in [ChangeKind::Org, ChangeKind::Principal, ChangeKind::Key] {
            assert!(changes.iter().any(|c| c.kind == kind), "{kind:?} in {changes:?}");
        }
        assert!(changes.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(
            store.directory_change_head().await.unwrap(),
            changes.last().unwrap().seq
        );

        // Quotas never go down; a proof burns once.
        let counter = |used| vec![("daily".to_owned(), org.id.clone(), 0, used)];
        store.save_quota_usage(&counter(5), -1).await.unwrap();
        store.save_quota_usage(&counter(3), -1).await.unwrap();
        assert_eq!(store.quota_usage(0).await.unwrap(), counter(5));
        assert!(store.burn_proof("sig-1", 2_000_000_000, 1).await.unwrap());
        assert!(!store.burn_proof("sig-1", 2_000_000_000, 1).await.unwrap());

        // Decisions: batched in, found by either id, by filter and by content; a record of
        // three days ago is gone after a day's retention, today's stays.
        let mut old = decision("old");
        old.at_ms -= 3 * 86_400_000;
        // (Appended in time order, as the writer does: SQLite's pruning walks that order.)
        let mut batch = vec![old];
        batch.extend((0..300).map(|i| decision(&format!("d-{i}"))));
        write_batch(store, &mut Spool::open(store), &mut batch).await;
        let found = store.decision("client-d-7").await.unwrap().unwrap();
        assert_eq!(found, decision("d-7").with_at(found.at_ms));
        assert_eq!(store.decisions_by_id("d-7", Some("o-2"), 5).await.unwrap().len(), 0);
        let filter = DecisionFilter {
            layer: Some("policy".into()),
            status: Some(403),
            limit: 1000,
            ..DecisionFilter::default()
        };
        assert_eq!(store.recent_decisions(&filter).await.unwrap().len(), 301);
        assert_eq!(store.decisions_containing("\"d-12\"", 10).await.unwrap().len(), 1);
        prune_old(store, 24, 0).await;
        assert!(store.decision("old").await.unwrap().is_none());
        assert_eq!(store.recent_decisions(&filter).await.unwrap().len(), 300);

        // Rollups add up; the config revision loaded is found again.
        let rollups = crate::rollups::Rollups::default();
        for _ in 0..3 {
            rollups.count(&decision("r"));
        }
        crate::rollups::add(store, &rollups.take()).await.unwrap();
        crate::rollups::add(store, &{
            rollups.count(&decision("r"));
            rollups.take()
        })
        .await
        .unwrap();
        let rows = crate::rollups::read(store, 0, i64::MAX).await.unwrap();
        assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), 4);
        let filter = crate::rollups::RefusalFilter {
            mode: pinpoint_core::Mode::Enforce,
            reason: None,
            layer: Some("policy"),
            route: None,
            org: Some("o-1"),
        };
        assert_eq!(
            crate::rollups::refusal_total(store, 0, i64::MAX, filter).await.unwrap(),
            4
        );
        assert_eq!(
            crate::rollups::refusals(store, 0, i64::MAX, filter).await.unwrap()[0].count,
            4
        );
        let load = crate::revisions::ConfigLoad {
            at_ms: 1000,
            revision: "r1".into(),
            previous: None,
            trigger: "start".into(),
        };
        crate::revisions::record(store, &load).await.unwrap();
        assert_eq!(
            crate::revisions::latest(store, 0, 2000)
                .await
                .unwrap()
                .map(|l| l.revision),
            Some("r1".into())
        );
    }

    /// Table name to its column names, sorted.
    type Shape = std::collections::BTreeMap<String, Vec<String>>;

    async fn sqlite_shape(store: &Store) -> Shape {
        let rows = sqlx::query(
            "SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        shape(rows)
    }

    async fn postgres_shape(store: &Store) -> Shape {
        let rows = sqlx::query(
            "SELECT CAST(c.table_name AS TEXT), CAST(c.column_name AS TEXT) FROM information_schema.columns c
             JOIN information_schema.tables t ON t.table_name = c.table_name AND t.table_schema = c.table_schema
             WHERE c.table_schema = current_schema() AND t.table_name NOT LIKE 'decisions_day_%'
             AND t.table_name NOT IN ('store_meta', 'schema_version')",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        shape(rows)
    }

    fn shape(rows: Vec<sqlx::any::AnyRow>) -> Shape {
        let mut shape = Shape::new();
        for row in rows {
            shape
                .entry(row.get::<String, _>(0))
                .or_default()
                .push(row.get::<String, _>(1));
        }
        shape.values_mut().for_each(|columns| columns.sort());
        shape
    }

    #[tokio::test]
    async fn both_schemas_have_the_same_tables_and_columns() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Store::open(&dir.path().join("sqlite")).await.unwrap();
        let db = OwnDatabase::create("shape").await;
        let postgres = Store::connect(&db.url(), &dir.path().join("pepper"), &dir.path().join("pg"))
            .await
            .unwrap();
        assert_eq!(sqlite_shape(&sqlite).await, postgres_shape(&postgres).await);
        postgres.close().await;
        db.drop_now().await;
    }

    #[tokio::test]
    async fn postgres_spool_replays_once_into_partitions_made_again() {
        let db = OwnDatabase::create("spool").await;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&db.url(), &dir.path().join("pepper"), dir.path())
            .await
            .unwrap();
        let mut spool = Spool::open(&store);
        // Today's partition, made and remembered; then dropped behind this process's back
        // (another replica's retention): the next batch fails once and is spooled.
        write_batch(&store, &mut spool, &mut vec![decision("first")]).await;
        let today = crate::now_ms() / 86_400_000;
        sqlx::query(&format!("DROP TABLE decisions_day_{today}"))
            .execute(store.pool())
            .await
            .unwrap();
        let mut batch: Vec<Decision> = (0..1500).map(|i| decision(&format!("s-{i}"))).collect();
        // Times no partition could hold as they are: filed at the nearer end.
        batch[0].at_ms = i64::MAX;
        batch[1].at_ms = -5;
        assert_eq!(
            write_batch(&store, &mut spool, &mut batch).await,
            0,
            "spooled, not dropped"
        );
        assert!(!spool.is_empty());
        spool.replay(&store).await;
        assert!(spool.is_empty());
        spool.replay(&store).await;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM decisions WHERE request_id LIKE 's-%'")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(count, 1500);
        assert_eq!(
            store.decision("s-0").await.unwrap().unwrap().at_ms,
            i64::MAX,
            "the record keeps its time"
        );
        store.close().await;
        db.drop_now().await;
    }

    #[tokio::test]
    async fn postgres_directory_writers_wait_for_each_other_instead_of_deadlocking() {
        let db = OwnDatabase::create("deadlock").await;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&db.url(), &dir.path().join("pepper"), dir.path())
            .await
            .unwrap();
        let org = store.create_org("acme").await.unwrap();
        let user = store
            .create_principal(&org.id, PrincipalKind::User, "ann", None)
            .await
            .unwrap();
        let role = store.create_role(&org.id, "reader", &[]).await.unwrap();
        // A role deleted in two statements while another writer assigns it: one waits for
        // the other, and the assignment fails on the missing role (no deadlock).
        let mut deleting = store.pool().begin().await.unwrap();
        sqlx::query("DELETE FROM role_assignments WHERE role_id = $1")
            .bind(&role.id)
            .execute(&mut *deleting)
            .await
            .unwrap();
        let assigning = {
            let (store, user, role) = (store.clone(), user.id.clone(), role.id.clone());
            tokio::spawn(async move { store.assign_role(&user, &role).await })
        };
        // Until the assignment waits on a lock (polled, at most 5 s).
        for _ in 0..500 {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(store.pool())
            .await
            .unwrap();
            if waiting > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        sqlx::query("DELETE FROM roles WHERE id = $1")
            .bind(&role.id)
            .execute(&mut *deleting)
            .await
            .unwrap();
        deleting.commit().await.unwrap();
        assert!(matches!(assigning.await.unwrap(), Err(StoreError::Conflict(_))));
        store.close().await;
        db.drop_now().await;
    }

    #[tokio::test]
    async fn postgres_replicas_writing_last_use_and_rollups_at_once_do_not_deadlock() {
        let db = OwnDatabase::create("batches").await;
        let dir = tempfile::tempdir().unwrap();
        let pepper = dir.path().join("pepper");
        let a = Store::connect(&db.url(), &pepper, &dir.path().join("a")).await.unwrap();
        let b = Store::connect(&db.url(), &pepper, &dir.path().join("b")).await.unwrap();
        let org = a.create_org("acme").await.unwrap();
        let mut ids = Vec::new();
        for i in 0..40 {
            let issued = a
                .create_key(NewKey {
                    name: format!("k{i}"),
                    kind: KeyKind::Api,
                    org_id: org.id.clone(),
                    principal_id: None,
                    scopes: Some(vec![]),
                    expires_at_ms: None,
                })
                .await
                .unwrap();
            ids.push(issued.info.id);
        }
        // Two replicas' batches over the same rows, in opposite arrival orders, at once.
        for round in 0..20i64 {
            let forward: Vec<(String, i64)> = ids.iter().map(|id| (id.clone(), round)).collect();
            let backward: Vec<(String, i64)> = forward.iter().rev().cloned().collect();
            let rollups = |reverse: bool| {
                let counts = crate::rollups::Rollups::default();
                let mut decisions: Vec<Decision> = (0..40)
                    .map(|i| {
                        let mut d = decision("r");
                        d.route = Some(format!("route-{i}"));
                        d
                    })
                    .collect();
                if reverse {
                    decisions.reverse();
                }
                decisions.iter().for_each(|d| counts.count(d));
                counts.take()
            };
            let (first, second) = (rollups(false), rollups(true));
            let (touched_a, touched_b, added_a, added_b) = tokio::join!(
                a.touch_keys(&forward),
                b.touch_keys(&backward),
                crate::rollups::add(&a, &first),
                crate::rollups::add(&b, &second)
            );
            for result in [touched_a, touched_b, added_a, added_b] {
                result.unwrap();
            }
        }
        a.close().await;
        b.close().await;
        db.drop_now().await;
    }

    #[tokio::test]
    async fn on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        every_aggregate_round_trips(&store).await;
    }

    #[tokio::test]
    async fn on_postgres_with_a_pepper_every_replica_must_share() {
        let db = OwnDatabase::create("aggregates").await;
        let dir = tempfile::tempdir().unwrap();
        let pepper = dir.path().join("pepper");
        let store = Store::connect(&db.url(), &pepper, &dir.path().join("a")).await.unwrap();
        assert_eq!(store.backend(), crate::Backend::Postgres);
        every_aggregate_round_trips(&store).await;
        // A second replica with the same pepper file opens the same store (the schema is
        // there already); one with another pepper, or none, is refused.
        let again = Store::connect(&db.url(), &pepper, &dir.path().join("b")).await.unwrap();
        assert!(again.org_by_name("acme").await.unwrap().is_some());
        let other = dir.path().join("other-pepper");
        std::fs::write(&other, [7u8; 32]).unwrap();
        let refused = Store::connect(&db.url(), &other, &dir.path().join("c")).await;
        assert!(matches!(refused, Err(StoreError::Invalid { .. })), "another pepper");
        let refused = Store::connect(&db.url(), &dir.path().join("missing"), &dir.path().join("d")).await;
        assert!(matches!(refused, Err(StoreError::Invalid { .. })), "no pepper");
        store.close().await;
        again.close().await;
        db.drop_now().await;
    }
}
