//! Runs the stages together with bounded memory: a reader thread streams input rows, the
//! dispatcher turns each into an output row (at once for malformed URLs and URL duplicates, else
//! through a fetch task that holds one of `max_in_flight` permits until its row reaches the
//! writer), image work runs on as many blocking threads as there are cores, and a writer thread
//! streams rows into per-shard Parquet files, committing each shard as its last row arrives.
//! Shards whose stats file exists are skipped, so a killed run resumes where it stopped.
use crate::canon::canonical;
use crate::caption::{pre_caption, MAX_WORDS};
use crate::dedup::{DedupIndex, DupKind};
use crate::fetch::{FetchConfig, Fetcher};
use crate::resizer::{self, ImageConfig, StepTimes};
use crate::shard::{self, Row, ShardWriter, Status};
use crate::source::{self, InputSpec};
use crate::stats::{Stats, StepSeconds};
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};

#[derive(Clone, Debug)]
pub struct IngestConfig {
    pub input: InputSpec,
    pub output: PathBuf,
    pub shard_size: u64,
    /// This worker takes the shards with `shard % num_workers == worker_index`.
    pub worker_index: u64,
    pub num_workers: u64,
    /// Instead: take the shards claimed through the registry (see [`ShardClaims`]).
    pub claims: Option<ShardClaims>,
    pub fetch: FetchConfig,
    pub image: ImageConfig,
    /// URL, sha256 and pHash dedupe (off: every row is fetched and kept).
    pub dedupe: bool,
    /// Largest Hamming distance between pHashes of near duplicates; `None`: exact only.
    pub phash_distance: Option<u32>,
    /// Rows being fetched or processed at once, over all hosts.
    pub max_in_flight: usize,
    /// Threads decoding and resizing images.
    pub image_threads: usize,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            input: InputSpec::default(),
            output: PathBuf::new(),
            shard_size: 10_000,
            worker_index: 0,
            num_workers: 1,
            claims: None,
            fetch: FetchConfig::default(),
            image: ImageConfig::default(),
            dedupe: true,
            phash_distance: Some(crate::DEFAULT_PHASH_DISTANCE),
            max_in_flight: 512,
            image_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            progress: true,
        }
    }
}

/// Shards shared by any number of workers through the registry's work leases: a worker claims a
/// shard when its reader reaches the shard's first row and it is neither complete nor held by a
/// live lease, renews the claims it holds every third of `lease`, and completes a claim once the
/// shard is committed. A worker that dies loses its claims when their leases run out, and
/// another worker takes those shards over ([`crate::catalog::ingest`] repeats its pass until
/// every shard is complete).
#[derive(Clone, Debug)]
pub struct ShardClaims {
    pub reg: albef_registry::Registry,
    /// The `work_leases` scope: one per dataset version.
    pub scope: String,
    /// Names this worker in the leases.
    pub owner: String,
    pub lease: Duration,
}

/// Shards a claiming worker holds at once: the one being finished and the next. A worker
/// claims its next shard only when it has room, so that the shards spread over the workers.
const CLAIMS_AT_ONCE: usize = 2;

/// Renews the claims in `held` while the run goes on, completes those whose shard has been
/// committed, and, when a renewal finds a claim lost, stops the run and says so. Ends, after a
/// last completion pass, when `ending` is set.
async fn keep_claims(
    c: ShardClaims,
    output: PathBuf,
    held: Arc<Mutex<HashSet<u64>>>,
    stop: Arc<AtomicBool>,
    ending: Arc<AtomicBool>,
) -> Result<()> {
    let renew_every = c.lease / 3;
    let mut renewed = Instant::now();
    loop {
        let last = ending.load(Ordering::Relaxed);
        let mine: Vec<u64> = held.lock().expect("claims lock").iter().copied().collect();
        for s in mine {
            let unit = s.to_string();
            if shard::stats_path(&output, s).exists() {
                c.reg.complete_unit(&c.scope, &unit, &c.owner).await?;
                held.lock().expect("claims lock").remove(&s);
            } else if !last
                && renewed.elapsed() >= renew_every
                && !c.reg.renew(&c.scope, &unit, &c.owner, c.lease).await?
            {
                held.lock().expect("claims lock").remove(&s);
                tracing::error!(
                    shard = s,
                    "lost the claim of shard {s} (its lease ran out); stopping"
                );
                stop.store(true, Ordering::Relaxed);
            }
        }
        if renewed.elapsed() >= renew_every {
            renewed = Instant::now();
        }
        if last {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200).min(renew_every)).await;
    }
}

/// Where earlier versions' dedupe index lives and how this version's keys are named in it.
#[derive(Clone, Debug, Default)]
pub struct Lineage {
    /// `dedup.index` of the parent version, if any.
    pub parent_index: Option<PathBuf>,
    /// Prefix of this version's keys when a later version reports them (e.g. `name@2/`).
    pub key_prefix: String,
}

/// What a run did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub input_rows: u64,
    /// Rows written by this run (rows of shards completed earlier are not counted).
    pub rows_written: u64,
    pub shards_written: Vec<u64>,
    pub shards_skipped: u64,
    /// Shards this worker left unfinished (interrupted).
    pub shards_incomplete: u64,
    pub interrupted: bool,
    pub elapsed_s: f64,
    pub rows_per_s: f64,
    pub success_per_s: f64,
    /// Mean milliseconds per row that reached each step.
    pub ms_per_image: StepSeconds,
    pub stats: Stats,
}

impl Summary {
    /// Sets the rates and per-image times from the stats and the elapsed time.
    fn rates(&mut self) {
        let per = |secs: f64, n: u64| {
            if n == 0 {
                0.0
            } else {
                1000.0 * secs / n as f64
            }
        };
        let (st, elapsed) = (&self.stats, self.elapsed_s.max(1e-9));
        self.rows_per_s = st.rows as f64 / elapsed;
        self.success_per_s = st.status(Status::Success) as f64 / elapsed;
        self.ms_per_image = StepSeconds {
            fetch: per(st.seconds.fetch, st.fetched),
            decode: per(st.seconds.decode, st.decoded),
            resize: per(st.seconds.resize, st.decoded),
            encode: per(st.seconds.encode, st.decoded),
            hash: per(st.seconds.hash, st.decoded),
            write: per(st.seconds.write, st.rows),
        };
    }

    /// Adds a later pass over the same list (shard claiming repeats passes), whose skip and
    /// completion counts replace this one's.
    pub fn absorb(&mut self, later: Summary) {
        self.rows_written += later.rows_written;
        self.shards_written.extend(later.shards_written);
        self.shards_skipped = later.shards_skipped;
        self.shards_incomplete = later.shards_incomplete;
        self.interrupted = later.interrupted;
        self.elapsed_s += later.elapsed_s;
        self.stats.add(&later.stats);
        self.rates();
    }
}

/// Extra facts about one row for the stats.
#[derive(Default)]
struct RowMeta {
    error_kind: Option<&'static str>,
    dup: Option<DupKind>,
    bytes_downloaded: u64,
    retries: u64,
    fetch: Duration,
    steps: StepTimes,
    fetched: bool,
    decoded: bool,
}

struct Done {
    shard: u64,
    row: Row,
    meta: RowMeta,
}

/// Digits of the row part of a key: img2dataset's `ceil(log10(shard_size))`.
fn row_digits(shard_size: u64) -> u32 {
    (shard_size.max(2) - 1).ilog10() + 1
}

/// The stable key of input row `index`: shard number then row in shard, zero-padded.
pub fn key_of(index: u64, shard_size: u64) -> String {
    let d = row_digits(shard_size);
    let (shard, row) = (index / shard_size, index % shard_size);
    format!("{:0w$}", shard * 10u64.pow(d) + row, w = 5 + d as usize)
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Loads the parent's index and the rows of this folder's complete shards `done`.
pub(crate) fn load_index(
    cfg: &IngestConfig,
    lineage: &Lineage,
    done: &[u64],
) -> Result<DedupIndex> {
    let mut index = match &lineage.parent_index {
        Some(p) if p.exists() => DedupIndex::load(p)?,
        _ => DedupIndex::new(),
    };
    let cols = [
        shard::KEY,
        shard::URL,
        shard::TEXT,
        shard::STATUS,
        shard::SHA256,
        shard::PHASH,
    ];
    for &s in done {
        let path = shard::parquet_path(&cfg.output, s);
        for batch in shard::read_batches(&path, None, Some(&cols))? {
            for row in shard::batch_rows(&batch?)? {
                let canon = canonical(&row.url).ok();
                let content = match (row.status, &row.sha256, row.phash) {
                    (Some(Status::Success), Some(sha), Some(ph)) => Some((sha.as_str(), ph)),
                    _ => None,
                };
                index.add_existing(
                    &row.key,
                    canon.as_ref().map(|u| u.as_str()),
                    &row.text,
                    content,
                );
            }
        }
    }
    Ok(index)
}

/// The `error_message` of a row whose content repeats the row `first`.
pub(crate) fn content_dup_message(first: &str, kind: DupKind) -> String {
    match kind {
        DupKind::Near(d) => format!("near duplicate of {first} (pHash distance {d})"),
        _ => format!("same bytes as {first}"),
    }
}

/// Fetches, processes and dedupes one row.
async fn fetch_row(
    mut row: Row,
    url: url::Url,
    fetcher: Arc<Fetcher>,
    image_slots: Arc<Semaphore>,
    image_cfg: Arc<ImageConfig>,
    index: Option<Arc<Mutex<DedupIndex>>>,
    phash_distance: Option<u32>,
) -> (Row, RowMeta) {
    let mut meta = RowMeta::default();
    let t = Instant::now();
    let fetched = fetcher.fetch(&url).await;
    meta.fetch = t.elapsed();
    meta.fetched = true;
    row.fetched_at = Some(now_micros());
    let fetched = match fetched {
        Ok(f) => f,
        Err(e) => {
            row.status = Some(if e.opted_out {
                Status::OptedOut
            } else {
                Status::FailedToDownload
            });
            row.error_message = Some(e.message);
            row.http_status = e.http_status.map(i32::from);
            meta.error_kind = Some(e.kind);
            return (row, meta);
        }
    };
    row.http_status = Some(i32::from(fetched.http_status));
    meta.bytes_downloaded = fetched.bytes.len() as u64;
    meta.retries = u64::from(fetched.attempts - 1);
    let _slot = image_slots
        .acquire_owned()
        .await
        .expect("image semaphore never closes");
    let work = tokio::task::spawn_blocking(move || {
        let mut steps = StepTimes::default();
        let t = Instant::now();
        let sha: [u8; 32] = Sha256::digest(&fetched.bytes).into();
        steps.hash += t.elapsed();
        let out = resizer::process(&fetched.bytes, &image_cfg, &mut steps);
        (sha, out, steps)
    })
    .await;
    let (sha, out, steps) = match work {
        Ok(w) => w,
        Err(e) => {
            row.status = Some(Status::FailedToDecode);
            row.error_message = Some(format!("image processing panicked: {e}"));
            meta.error_kind = Some("panic");
            return (row, meta);
        }
    };
    meta.steps = steps;
    meta.decoded = true;
    row.sha256 = Some(hex(&sha));
    match out {
        Err(rej) => {
            row.status = Some(if rej.filtered {
                Status::FilteredOut
            } else {
                Status::FailedToDecode
            });
            row.error_message = Some(rej.message);
            if let Some((w, h)) = rej.original {
                row.original_width = Some(w as i32);
                row.original_height = Some(h as i32);
            }
            meta.error_kind = Some(if rej.filtered { "filtered" } else { "decode" });
        }
        Ok(p) => {
            row.width = Some(p.width as i32);
            row.height = Some(p.height as i32);
            row.original_width = Some(p.original_width as i32);
            row.original_height = Some(p.original_height as i32);
            row.phash = Some(p.phash);
            let dup = index.and_then(|idx| {
                idx.lock().expect("dedupe index lock").check_content(
                    &sha,
                    p.phash,
                    p.phash_mirror,
                    phash_distance,
                    &row.key,
                )
            });
            match dup {
                Some((first, kind)) => {
                    row.status = Some(Status::Duplicate);
                    row.error_message = Some(content_dup_message(&first, kind));
                    row.dup_of = Some(first);
                    meta.dup = Some(kind);
                }
                None => {
                    row.status = Some(Status::Success);
                    row.jpg = Some(p.jpg);
                }
            }
        }
    }
    (row, meta)
}

struct OpenShard {
    writer: ShardWriter,
    expected: u64,
    stats: Stats,
}

/// The writer thread: streams rows into their shard files and commits full shards.
fn write_shards(
    dir: PathBuf,
    extra: Vec<String>,
    shard_size: u64,
    total: u64,
    mut rx: mpsc::Receiver<Done>,
    bar: indicatif::ProgressBar,
) -> Result<(Vec<u64>, Stats, u64)> {
    let mut open: HashMap<u64, OpenShard> = HashMap::new();
    let mut written = Vec::new();
    let mut all = Stats::default();
    let mut live = Stats::default();
    while let Some(Done { shard, row, meta }) = rx.blocking_recv() {
        let t = Instant::now();
        let s = match open.entry(shard) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(OpenShard {
                writer: ShardWriter::create(&dir, shard, &extra)?,
                expected: shard_size.min(total - shard * shard_size),
                stats: Stats::default(),
            }),
        };
        let status = row.status.unwrap_or(Status::FailedToDownload);
        let mut one = Stats::default();
        one.count(status);
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
        s.writer.push(row)?;
        one.seconds.write = t.elapsed().as_secs_f64();
        s.stats.add(&one);
        live.add(&one);
        bar.inc(1);
        if live.rows % 64 == 0 {
            let ok = 100.0 * live.status(Status::Success) as f64 / live.rows.max(1) as f64;
            let top = live
                .top_error()
                .map(|(k, n)| format!(", top error {k} ({n})"))
                .unwrap_or_default();
            bar.set_message(format!("{ok:.1}% ok{top}"));
        }
        if s.writer.rows() == s.expected {
            let s = open.remove(&shard).expect("present");
            let t = Instant::now();
            let mut stats = s.stats;
            // The size is known only after closing; the stats file is written after that.
            let record = s.writer.record(stats.clone());
            s.writer.finish(record)?;
            stats.seconds.write += t.elapsed().as_secs_f64();
            all.add(&stats);
            written.push(shard);
        }
    }
    let incomplete = open.len() as u64;
    Ok((written, all, incomplete))
}

/// Runs the ingest into `cfg.output`. Set `stop` to finish the shards already fed and return.
pub async fn run(cfg: &IngestConfig, lineage: &Lineage, stop: Arc<AtomicBool>) -> Result<Summary> {
    let started = Instant::now();
    std::fs::create_dir_all(&cfg.output)
        .with_context(|| format!("cannot create output folder {}", cfg.output.display()))?;
    anyhow::ensure!(cfg.shard_size > 0, "--shard-size must be at least 1");
    anyhow::ensure!(
        cfg.num_workers > 0 && cfg.worker_index < cfg.num_workers,
        "--worker-index {} must be below --num-workers {}",
        cfg.worker_index,
        cfg.num_workers
    );
    let spec = cfg.input.clone();
    let total = tokio::task::spawn_blocking(move || source::count_rows(&spec)).await??;
    let done: HashSet<u64> = shard::complete_shards(&cfg.output)?.into_iter().collect();
    let index = if cfg.dedupe {
        let done: Vec<u64> = done.iter().copied().collect();
        let (c, l) = (cfg.clone(), lineage.clone());
        Some(Arc::new(Mutex::new(
            tokio::task::spawn_blocking(move || load_index(&c, &l, &done)).await??,
        )))
    } else {
        None
    };
    // With claims, the shards are decided as the reader reaches them; the bar counts all that
    // are not complete.
    let mine = |s: u64| {
        !done.contains(&s) && (cfg.claims.is_some() || s % cfg.num_workers == cfg.worker_index)
    };
    let shards_total = total.div_ceil(cfg.shard_size);
    let todo_rows: u64 = (0..shards_total)
        .filter(|&s| mine(s))
        .map(|s| cfg.shard_size.min(total - s * cfg.shard_size))
        .sum();
    let bar = if cfg.progress {
        let bar = indicatif::ProgressBar::new(todo_rows);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };

    let (row_tx, mut row_rx) = mpsc::channel::<Result<source::InputRow>>(1024);
    let spec = cfg.input.clone();
    let reader_stop = stop.clone();
    let reader = std::thread::spawn(move || -> Result<()> {
        for row in source::read_rows(&spec)? {
            if reader_stop.load(Ordering::Relaxed) || row_tx.blocking_send(row).is_err() {
                break;
            }
        }
        Ok(())
    });

    let (done_tx, done_rx) = mpsc::channel::<Done>(256);
    let writer = {
        let (dir, extra, size, bar) = (
            cfg.output.clone(),
            cfg.input.keep_cols.clone(),
            cfg.shard_size,
            bar.clone(),
        );
        std::thread::spawn(move || write_shards(dir, extra, size, total, done_rx, bar))
    };

    let fetcher = Arc::new(Fetcher::new(cfg.fetch.clone())?);
    let image_slots = Arc::new(Semaphore::new(cfg.image_threads.max(1)));
    let in_flight = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
    let image_cfg = Arc::new(cfg.image.clone());
    let held = Arc::new(Mutex::new(HashSet::new()));
    let ending = Arc::new(AtomicBool::new(false));
    let keeper = cfg.claims.clone().map(|c| {
        tokio::spawn(keep_claims(
            c,
            cfg.output.clone(),
            held.clone(),
            stop.clone(),
            ending.clone(),
        ))
    });
    // The shard the reader is in and whether this worker takes it.
    let mut current: Option<(u64, bool)> = None;
    let mut claim_error = None;
    let mut tasks = tokio::task::JoinSet::new();
    let mut skipped_shards = HashSet::new();
    let mut i = 0u64;
    let mut interrupted = false;
    let mut read_error = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        let next = tokio::select! {
            r = row_rx.recv() => r,
            _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
        };
        let Some(input) = next else { break };
        let input = match input {
            Ok(r) => r,
            Err(e) => {
                read_error = Some(e);
                break;
            }
        };
        let index_no = i;
        i += 1;
        let shard_no = index_no / cfg.shard_size;
        let take = match (current, &cfg.claims) {
            (Some((s, take)), _) if s == shard_no => take,
            (_, Some(c)) if mine(shard_no) => {
                // Claim with room only, so that the other workers get the shards ahead.
                while held.lock().expect("claims lock").len() >= CLAIMS_AT_ONCE
                    && !stop.load(Ordering::Relaxed)
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if stop.load(Ordering::Relaxed) {
                    interrupted = true;
                    break;
                }
                match c
                    .reg
                    .try_claim_unit(&c.scope, &shard_no.to_string(), &c.owner, c.lease)
                    .await
                {
                    Ok(true) => {
                        held.lock().expect("claims lock").insert(shard_no);
                        true
                    }
                    Ok(false) => false,
                    Err(e) => {
                        claim_error = Some(e);
                        break;
                    }
                }
            }
            _ => mine(shard_no),
        };
        current = Some((shard_no, take));
        if !take {
            skipped_shards.insert(shard_no);
            continue;
        }
        let caption = input.caption;
        let text = pre_caption(caption.as_deref().unwrap_or(""), MAX_WORDS);
        let mut row = Row {
            key: key_of(index_no, cfg.shard_size),
            url: input.url,
            text,
            caption,
            extra: input.extra,
            ..Row::default()
        };
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let immediate = match canonical(&row.url) {
            Err(e) => {
                row.status = Some(Status::FailedToDownload);
                row.error_message = Some(format!("{e:#}"));
                Some((
                    row,
                    RowMeta {
                        error_kind: Some("malformed_url"),
                        ..RowMeta::default()
                    },
                ))
            }
            Ok(url) => {
                let dup = index.as_ref().and_then(|idx| {
                    idx.lock().expect("dedupe index lock").check_url(
                        url.as_str(),
                        &row.text,
                        &row.key,
                    )
                });
                match dup {
                    Some((first, kind)) => {
                        row.status = Some(Status::Duplicate);
                        row.error_message = Some(match kind {
                            DupKind::UrlAndText => format!("same URL and text as {first}"),
                            _ => format!("same URL as {first}"),
                        });
                        row.dup_of = Some(first);
                        Some((
                            row,
                            RowMeta {
                                dup: Some(kind),
                                ..RowMeta::default()
                            },
                        ))
                    }
                    None => {
                        let (f, s, c, idx, tx) = (
                            fetcher.clone(),
                            image_slots.clone(),
                            image_cfg.clone(),
                            index.clone(),
                            done_tx.clone(),
                        );
                        let dist = cfg.phash_distance;
                        tasks.spawn(async move {
                            let (row, meta) = fetch_row(row, url, f, s, c, idx, dist).await;
                            let _ = tx
                                .send(Done {
                                    shard: shard_no,
                                    row,
                                    meta,
                                })
                                .await;
                            drop(permit);
                        });
                        None
                    }
                }
            }
        };
        if let Some((row, meta)) = immediate {
            if done_tx
                .send(Done {
                    shard: shard_no,
                    row,
                    meta,
                })
                .await
                .is_err()
            {
                break;
            }
        }
        // Reap finished tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    drop(row_rx);
    while tasks.join_next().await.is_some() {}
    drop(done_tx);
    let (written, stats, incomplete) =
        tokio::task::spawn_blocking(move || writer.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the shard writer panicked"))??;
    bar.finish_and_clear();
    if let Some(keeper) = keeper {
        ending.store(true, Ordering::Relaxed);
        keeper.await?.context("keeping the shard claims")?;
    }
    if let Some(e) = claim_error {
        return Err(e.context("claiming a shard"));
    }
    if let Some(e) = read_error {
        return Err(e.context("reading the input list"));
    }
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("the input reader panicked"))??;
    let mut summary = Summary {
        input_rows: total,
        rows_written: stats.rows,
        shards_written: written,
        shards_skipped: skipped_shards.len() as u64,
        shards_incomplete: incomplete,
        interrupted,
        elapsed_s: started.elapsed().as_secs_f64(),
        rows_per_s: 0.0,
        success_per_s: 0.0,
        ms_per_image: StepSeconds::default(),
        stats,
    };
    summary.rates();
    Ok(summary)
}
