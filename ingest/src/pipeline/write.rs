//! The writer and logger: a thread that streams output rows into their per-shard Parquet files,
//! counts each row in its shard's stats and on the progress bar, and commits a shard (Parquet
//! file, then its stats file) as its last row arrives. Rows are written in input order, so one
//! list always gives the same rows in the same order whatever order the fetches finish in: a
//! row that arrives before those above it waits in memory (at most a shard's rows, behind a
//! slow one) while the fetching goes on.
use super::dispatch::Done;
use super::process::RowMeta;
use super::IngestConfig;
use albef_dataset::store::Folder;
use albef_dataset::Stats;
use albef_dataset::{Row, ShardWriter, Status};
use anyhow::Result;
use indicatif::ProgressBar;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;
use tokio::sync::mpsc;

/// What the writer did.
pub(super) struct Written {
    /// Shards committed, in the order they were.
    pub(super) shards: Vec<u64>,
    /// Stats of the committed shards.
    pub(super) stats: Stats,
    /// Shards left open (the run was interrupted).
    pub(super) incomplete: u64,
}

/// Starts the writer thread for a list of `total` rows; it ends when the sender is dropped.
pub(super) fn spawn(
    cfg: &IngestConfig,
    total: u64,
    bar: ProgressBar,
) -> (std::thread::JoinHandle<Result<Written>>, mpsc::Sender<Done>) {
    let (done_tx, done_rx) = mpsc::channel::<Done>(256);
    let writer = Writer {
        dir: cfg.output.clone(),
        remote: cfg.remote.clone(),
        extra: cfg.input.keep_cols.clone(),
        shard_size: cfg.shard_size,
        total,
        bar,
        open: HashMap::new(),
        written: Vec::new(),
        all: Stats::default(),
        live: Stats::default(),
    };
    (std::thread::spawn(move || writer.run(done_rx)), done_tx)
}

struct OpenShard {
    writer: ShardWriter,
    expected: u64,
    stats: Stats,
    /// Rows that arrived before the next one in input order, by their place in the shard.
    waiting: BTreeMap<u64, Row>,
}

struct Writer {
    dir: PathBuf,
    /// The store folder that committed shards are uploaded to.
    remote: Option<Folder>,
    extra: Vec<String>,
    shard_size: u64,
    total: u64,
    bar: ProgressBar,
    open: HashMap<u64, OpenShard>,
    written: Vec<u64>,
    /// Stats of the committed shards.
    all: Stats,
    /// Stats of every row written, for the progress bar.
    live: Stats,
}

impl Writer {
    /// Streams rows into their shard files and commits full shards.
    fn run(mut self, mut rx: mpsc::Receiver<Done>) -> Result<Written> {
        while let Some(Done { index, row, meta }) = rx.blocking_recv() {
            let t = Instant::now();
            let (shard, place) = (index / self.shard_size, index % self.shard_size);
            let s = self.shard(shard)?;
            let mut one = row_stats(&row, &meta);
            s.waiting.insert(place, row);
            while let Some(row) = s.waiting.remove(&s.writer.rows()) {
                s.writer.push(row)?;
            }
            one.seconds.write = t.elapsed().as_secs_f64();
            s.stats.add(&one);
            let full = s.writer.rows() == s.expected;
            self.log(&one);
            if full {
                self.commit(shard)?;
            }
        }
        Ok(Written {
            shards: self.written,
            stats: self.all,
            incomplete: self.open.len() as u64,
        })
    }

    /// The open file of `shard`, created at its first row.
    fn shard(&mut self, shard: u64) -> Result<&mut OpenShard> {
        Ok(match self.open.entry(shard) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(OpenShard {
                writer: ShardWriter::create(&self.dir, shard, &self.extra)?,
                expected: self.shard_size.min(self.total - shard * self.shard_size),
                stats: Stats::default(),
                waiting: BTreeMap::new(),
            }),
        })
    }

    /// Counts a written row on the progress bar, with the success rate and the top error.
    fn log(&mut self, one: &Stats) {
        self.live.add(one);
        self.bar.inc(1);
        let live = &self.live;
        if live.rows.is_multiple_of(64) {
            let ok = 100.0 * live.status(Status::Success) as f64 / live.rows.max(1) as f64;
            let top = live
                .top_error()
                .map(|(k, n)| format!(", top error {k} ({n})"))
                .unwrap_or_default();
            self.bar.set_message(format!("{ok:.1}% ok{top}"));
        }
    }

    /// Closes `shard`'s Parquet file and writes its stats file (and uploads both, Parquet
    /// first, when the version lives in an object store).
    fn commit(&mut self, shard: u64) -> Result<()> {
        let s = self.open.remove(&shard).expect("present");
        let t = Instant::now();
        let mut stats = s.stats;
        // The size is known only after closing; the stats file is written after that.
        let record = s.writer.record(stats.clone());
        s.writer.finish(record)?;
        if let Some(remote) = &self.remote {
            remote.push_shard(shard)?;
        }
        stats.seconds.write += t.elapsed().as_secs_f64();
        self.all.add(&stats);
        self.written.push(shard);
        Ok(())
    }
}

/// The stats of one row (all but the time spent writing it).
fn row_stats(row: &Row, meta: &RowMeta) -> Stats {
    let mut one = Stats::default();
    one.count(row.status.unwrap_or(Status::FailedToDownload));
    if let Some(code) = row.http_status {
        *one.by_http_status.entry(code.to_string()).or_default() += 1;
    }
    if let Some(kind) = meta.error_kind {
        *one.by_error_kind.entry(kind.into()).or_default() += 1;
    }
    if let Some(d) = meta.dup {
        *one.dedupe.entry(d.label().into()).or_default() += 1;
    }
    one.bytes_downloaded = meta.bytes_downloaded;
    one.bytes_kept = row.jpg.as_ref().map_or(0, |j| j.len() as u64);
    one.retries = meta.retries;
    one.fetched = u64::from(meta.fetched);
    one.decoded = u64::from(meta.decoded);
    one.seconds.fetch = meta.fetch.as_secs_f64();
    one.seconds.decode = meta.steps.decode.as_secs_f64();
    one.seconds.resize = meta.steps.resize.as_secs_f64();
    one.seconds.encode = meta.steps.encode.as_secs_f64();
    one.seconds.hash = meta.steps.hash.as_secs_f64();
    one
}
