//! Batches for the trainer, made ahead of time by worker threads so that the model does not wait.
//!
//! The order of an epoch is fixed by (seed, epoch) alone: the shards are shuffled, taken in
//! groups of `shuffle_window`, and the rows of each group are shuffled together, so batches mix
//! shards while only one or two groups are held in memory. Rank `r` of `w` takes the positions
//! `p` with `p % w == r`. Each sample's augmentation is drawn from (seed, epoch, p), so the
//! batches are the same whichever worker makes them and however the threads are timed. A
//! coordinator thread reads the groups and hands out batch jobs through a bounded queue; the
//! workers send finished batches through a bounded channel and `Epoch` puts them back in order.
use super::augment::{augment, decode_jpeg, normalise_into, resize_full, AugmentConfig, Rgb};
use super::tokenize::TextEncoder;
use super::version::{read_rows, DatasetIndex, Rows, Sample};
use super::weight::LossWeight;
use crate::config::Config;
use albef_dataset::seed::rng;
use anyhow::{bail, Context, Result};
use fast_image_resize::Resizer;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tch::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Shuffled, augmented, incomplete last batch dropped.
    Train,
    /// File order, resized only, every row once.
    Eval,
}

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    /// The BERT `tokenizer.json`.
    pub tokenizer: PathBuf,
    pub image_res: usize,
    pub batch_size: usize,
    /// Tokens per caption at most, [CLS] and [SEP] included.
    pub max_tokens: usize,
    /// Words kept by pre_caption.
    pub max_words: usize,
    /// Random horizontal flips (off for captions that name left and right).
    pub hflip: bool,
    pub randaugment: bool,
    /// RandomResizedCrop's range of the crop's share of the picture.
    pub crop_scale: (f64, f64),
    pub workers: usize,
    /// Finished batches waiting for the trainer, at most.
    pub prefetch: usize,
    pub seed: u64,
    pub rank: usize,
    pub world_size: usize,
    /// Shards shuffled together (and held in memory together).
    pub shuffle_window: usize,
    pub mode: Mode,
    /// Score-weighted training with this weight floor: every row the filter scored (kept and
    /// `filtered_out`) is used and each batch carries its pairs' [`LossWeight`]s. None: the
    /// `success` rows, unweighted.
    pub score_weights: Option<f32>,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            tokenizer: PathBuf::from("assets/tokenizer.json"),
            image_res: 256,
            batch_size: 64,
            max_tokens: 30,
            max_words: 30,
            hflip: true,
            randaugment: true,
            crop_scale: (0.2, 1.0),
            workers: 2,
            prefetch: 4,
            seed: 0,
            rank: 0,
            world_size: 1,
            shuffle_window: 16,
            mode: Mode::Train,
            score_weights: None,
        }
    }
}

/// The loader settings of a run's config (`model.vision.image_res` and `train.*`) for data read
/// in `mode`, by `workers` threads (at least one).
pub fn loader_config(
    config: &Config,
    tokenizer: &Path,
    workers: usize,
    mode: Mode,
) -> LoaderConfig {
    let t = &config.train;
    LoaderConfig {
        tokenizer: tokenizer.to_path_buf(),
        image_res: config.model.vision.image_res as usize,
        batch_size: t.batch_size as usize,
        max_tokens: t.max_tokens as usize,
        hflip: t.flip,
        randaugment: t.randaugment_n > 0,
        crop_scale: (t.crop_scale[0], t.crop_scale[1]),
        workers: workers.max(1),
        seed: t.seed,
        mode,
        // Evaluation data is never weighted.
        score_weights: (t.score_weights && mode == Mode::Train)
            .then_some(t.score_weight_floor as f32),
        ..LoaderConfig::default()
    }
}

/// One batch, as the model takes it.
pub struct Batch {
    pub epoch: u64,
    /// Position of the batch in its epoch (for this rank).
    pub index: usize,
    /// f32 [B, 3, res, res], CLIP-normalised.
    pub image: Tensor,
    /// i64 [B, L], L the longest caption of the batch.
    pub input_ids: Tensor,
    /// i64 [B, L], 1 on tokens, 0 on padding.
    pub attention_mask: Tensor,
    /// i64 [B]: equal for rows showing the same picture.
    pub idx: Tensor,
    /// f32 [B]: each pair's loss weight (score-weighted training only).
    pub weight: Option<Tensor>,
    pub keys: Vec<String>,
    pub captions: Vec<String>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// bool [B, B]: true where rows i and j show the same picture (the diagonal included), i.e.
    /// where a pair must not serve as an ITC/ITM negative.
    pub fn same_image(&self) -> Tensor {
        crate::model::losses::same_image(&self.idx)
    }
}

/// A sample's place in an epoch: which group of shards, which row of it, and its position in the
/// epoch order (the key of its randomness).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Item {
    pub group: usize,
    pub row: usize,
    pub position: u64,
}

/// The shards of one group, in the order their rows are numbered.
type Groups = Vec<Vec<usize>>;

struct Shared {
    cfg: LoaderConfig,
    text: TextEncoder,
    /// Score-weighted training: the map from a row's score to its loss weight.
    weight: Option<LossWeight>,
    /// Keys of rows whose JPEG did not decode.
    corrupt: Mutex<HashSet<String>>,
}

pub struct Loader {
    index: DatasetIndex,
    shared: Arc<Shared>,
}

impl Loader {
    pub fn open(dir: &Path, cfg: LoaderConfig) -> Result<Self> {
        if cfg.batch_size == 0 || cfg.workers == 0 || cfg.prefetch == 0 {
            bail!("batch_size, workers and prefetch must be positive");
        }
        if cfg.world_size == 0 || cfg.rank >= cfg.world_size {
            bail!("rank {} is not in a world of {}", cfg.rank, cfg.world_size);
        }
        if cfg.image_res < 16 || cfg.shuffle_window == 0 {
            bail!("image_res must be at least 16 and shuffle_window positive");
        }
        let rows = match cfg.score_weights {
            Some(_) => Rows::Scored,
            None => Rows::Success,
        };
        let index = DatasetIndex::open(dir, rows)?;
        let weight = match cfg.score_weights {
            Some(floor) => Some(LossWeight::fit(&index.scores, floor).with_context(|| {
                format!("fitting score weights to the scores of {}", dir.display())
            })?),
            None => None,
        };
        let text = TextEncoder::load(&cfg.tokenizer, cfg.max_tokens, cfg.max_words)?;
        Ok(Self {
            index,
            shared: Arc::new(Shared {
                cfg,
                text,
                weight,
                corrupt: Mutex::new(HashSet::new()),
            }),
        })
    }

    pub fn index(&self) -> &DatasetIndex {
        &self.index
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.shared.cfg
    }

    /// The score-to-weight map of score-weighted training.
    pub fn loss_weight(&self) -> Option<LossWeight> {
        self.shared.weight
    }

    /// Samples this rank sees per epoch.
    pub fn len(&self) -> usize {
        let total = self.index.total();
        let world = self.shared.cfg.world_size;
        match self.shared.cfg.mode {
            // Every rank the same count, so that ranks step together.
            Mode::Train => total / world,
            Mode::Eval => total / world + usize::from(self.shared.cfg.rank < total % world),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn batches_per_epoch(&self) -> usize {
        let b = self.shared.cfg.batch_size;
        match self.shared.cfg.mode {
            Mode::Train => self.len() / b,
            Mode::Eval => self.len().div_ceil(b),
        }
    }

    /// Rows skipped so far because their JPEG did not decode.
    pub fn corrupt_rows(&self) -> usize {
        self.shared.corrupt.lock().expect("corrupt-row set").len()
    }

    fn groups(&self, epoch: u64) -> Groups {
        let cfg = &self.shared.cfg;
        let mut shards: Vec<usize> = (0..self.index.shards.len()).collect();
        match cfg.mode {
            Mode::Train => {
                rng(&[cfg.seed, epoch, 0x5ad5]).shuffle(&mut shards);
                shards
                    .chunks(cfg.shuffle_window)
                    .map(<[usize]>::to_vec)
                    .collect()
            }
            Mode::Eval => shards.into_iter().map(|s| vec![s]).collect(),
        }
    }

    /// This rank's samples of `epoch`, in order.
    pub fn epoch_items(&self, epoch: u64) -> Vec<Item> {
        let cfg = &self.shared.cfg;
        let mut all = Vec::with_capacity(self.index.total());
        for (g, shards) in self.groups(epoch).iter().enumerate() {
            let rows: usize = shards
                .iter()
                .map(|&s| self.index.shards[s].usable_rows)
                .sum();
            let mut order: Vec<usize> = (0..rows).collect();
            if cfg.mode == Mode::Train {
                rng(&[cfg.seed, epoch, 0x920b, g as u64]).shuffle(&mut order);
            }
            all.extend(order.into_iter().map(|row| (g, row)));
        }
        let kept = match cfg.mode {
            Mode::Train => all.len() / cfg.world_size * cfg.world_size,
            Mode::Eval => all.len(),
        };
        all.into_iter()
            .take(kept)
            .enumerate()
            .filter(|(p, _)| p % cfg.world_size == cfg.rank)
            .map(|(p, (group, row))| Item {
                group,
                row,
                position: p as u64,
            })
            .collect()
    }

    /// The batches of `epoch` from batch `start_batch` on (to resume mid-epoch), made ahead by
    /// the worker threads.
    pub fn epoch(&self, epoch: u64, start_batch: usize) -> Epoch {
        let cfg = &self.shared.cfg;
        let items = self.epoch_items(epoch);
        let batches: Vec<Vec<Item>> = items
            .chunks(cfg.batch_size)
            .take(self.batches_per_epoch())
            .map(<[Item]>::to_vec)
            .collect();
        let end = batches.len();
        let groups = self.groups(epoch);
        let rows = self.index.rows;
        let paths: Vec<Vec<PathBuf>> = groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|&s| self.index.shards[s].path.clone())
                    .collect()
            })
            .collect();

        let stop = Arc::new(AtomicBool::new(false));
        let (job_tx, job_rx) = sync_channel::<Job>(cfg.workers);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = sync_channel::<(usize, Result<Batch>)>(cfg.prefetch);
        let mut threads = Vec::new();
        {
            let done_tx = done_tx.clone();
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                coordinate(batches, start_batch, paths, rows, job_tx, done_tx, stop)
            }));
        }
        for _ in 0..cfg.workers {
            let (jobs, done_tx, shared) = (job_rx.clone(), done_tx.clone(), self.shared.clone());
            threads.push(std::thread::spawn(move || {
                work(epoch, jobs, done_tx, shared)
            }));
        }
        Epoch {
            next: start_batch,
            end,
            pending: BTreeMap::new(),
            done: Some(done_rx),
            stop,
            threads,
            waited: Duration::ZERO,
        }
    }
}

/// A batch to make: its index and its samples with the group that holds each.
struct Job {
    index: usize,
    samples: Vec<(Arc<Vec<Sample>>, Item)>,
}

/// Reads the groups of shards as the batches reach them and hands out the jobs in order.
fn coordinate(
    batches: Vec<Vec<Item>>,
    start: usize,
    paths: Vec<Vec<PathBuf>>,
    rows: Rows,
    jobs: SyncSender<Job>,
    done: SyncSender<(usize, Result<Batch>)>,
    stop: Arc<AtomicBool>,
) {
    let mut loaded: Vec<(usize, Arc<Vec<Sample>>)> = Vec::new();
    for (index, items) in batches.into_iter().enumerate().skip(start) {
        let mut samples = Vec::with_capacity(items.len());
        for item in items {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let group = match loaded.iter().find(|(g, _)| *g == item.group) {
                Some((_, rows)) => rows.clone(),
                None => match read_group(&paths[item.group], rows) {
                    Ok(rows) => {
                        let rows = Arc::new(rows);
                        // Keep the group being finished and the new one: batches straddle them.
                        loaded.retain(|(g, _)| *g + 1 >= item.group);
                        loaded.push((item.group, rows.clone()));
                        rows
                    }
                    Err(e) => {
                        let _ = done.send((index, Err(e)));
                        return;
                    }
                },
            };
            samples.push((group, item));
        }
        if jobs.send(Job { index, samples }).is_err() {
            return;
        }
    }
}

fn read_group(paths: &[PathBuf], rows: Rows) -> Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for path in paths {
        samples.extend(read_rows(path, rows)?);
    }
    Ok(samples)
}

fn work(
    epoch: u64,
    jobs: Arc<Mutex<Receiver<Job>>>,
    done: SyncSender<(usize, Result<Batch>)>,
    shared: Arc<Shared>,
) {
    let mut resizer = Resizer::new();
    loop {
        let job = match jobs.lock().expect("job queue").recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let batch = make_batch(epoch, &job, &shared, &mut resizer)
            .with_context(|| format!("making batch {} of epoch {epoch}", job.index));
        if done.send((job.index, batch)).is_err() {
            return;
        }
    }
}

fn make_batch(epoch: u64, job: &Job, shared: &Shared, resizer: &mut Resizer) -> Result<Batch> {
    let cfg = &shared.cfg;
    let res = cfg.image_res;
    let plane = 3 * res * res;
    let n = job.samples.len();
    let mut pixels = vec![0f32; n * plane];
    let (mut keys, mut captions, mut ids, mut weights) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let aug = AugmentConfig {
        res,
        scale: cfg.crop_scale,
        hflip: cfg.hflip,
        randaugment: cfg.randaugment,
    };
    for (k, (group, item)) in job.samples.iter().enumerate() {
        let (sample, image) = decode_or_next(group, item.row, shared)?;
        let image = match cfg.mode {
            Mode::Train => {
                let mut r = rng(&[cfg.seed, epoch, item.position]);
                augment(&image, &aug, &mut r, resizer)?
            }
            Mode::Eval => resize_full(&image, res, resizer)?,
        };
        normalise_into(&image, &mut pixels[k * plane..(k + 1) * plane]);
        keys.push(sample.key.clone());
        captions.push(sample.text.clone());
        ids.push(sample.image_id);
        if let Some(w) = &shared.weight {
            weights.push(w.weight(sample.score));
        }
    }
    let tokens = shared.text.encode(&captions)?;
    let (rows, len) = (tokens.rows as i64, tokens.len as i64);
    Ok(Batch {
        epoch,
        index: job.index,
        image: Tensor::from_slice(&pixels).view([n as i64, 3, res as i64, res as i64]),
        input_ids: Tensor::from_slice(&tokens.ids).view([rows, len]),
        attention_mask: Tensor::from_slice(&tokens.mask).view([rows, len]),
        idx: Tensor::from_slice(&ids),
        weight: shared.weight.map(|_| Tensor::from_slice(&weights)),
        keys,
        captions,
    })
}

/// Decodes row `row` of the group; a row whose JPEG does not decode is counted, logged once and
/// replaced by the next decodable row of the group (a choice fixed by the data, so batches stay
/// deterministic).
fn decode_or_next<'a>(
    group: &'a [Sample],
    row: usize,
    shared: &Shared,
) -> Result<(&'a Sample, Rgb)> {
    for step in 0..group.len() {
        let sample = &group[(row + step) % group.len()];
        match decode_jpeg(&sample.jpg) {
            Ok(image) => return Ok((sample, image)),
            Err(e) => {
                if shared
                    .corrupt
                    .lock()
                    .expect("corrupt-row set")
                    .insert(sample.key.clone())
                {
                    tracing::warn!(key = %sample.key, error = %e, "skipping a row whose JPEG does not decode");
                }
            }
        }
    }
    bail!(
        "none of the {} rows of a shard group decodes as JPEG",
        group.len()
    )
}

/// The batches of one epoch, in order. Dropping it stops the threads.
pub struct Epoch {
    next: usize,
    end: usize,
    pending: BTreeMap<usize, Result<Batch>>,
    done: Option<Receiver<(usize, Result<Batch>)>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    waited: Duration,
}

impl Epoch {
    /// Time the consumer spent waiting for batches: the data-wait of the training loop.
    pub fn data_wait(&self) -> Duration {
        self.waited
    }

    /// Batches left in this epoch.
    pub fn remaining(&self) -> usize {
        self.end - self.next
    }
}

impl Iterator for Epoch {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.end {
            return None;
        }
        let started = Instant::now();
        let found = loop {
            if let Some(batch) = self.pending.remove(&self.next) {
                break Some(batch);
            }
            match self.done.as_ref()?.recv() {
                Ok((index, batch)) => {
                    // A failure ends the epoch where it happened, even ahead of order.
                    if batch.is_err() {
                        break Some(batch);
                    }
                    self.pending.insert(index, batch);
                }
                Err(_) => break None,
            }
        };
        self.waited += started.elapsed();
        match found {
            Some(Ok(batch)) => {
                self.next += 1;
                Some(Ok(batch))
            }
            Some(Err(e)) => {
                self.next = self.end;
                Some(Err(e))
            }
            None => {
                let missing = self.next;
                self.next = self.end;
                Some(Err(anyhow::anyhow!(
                    "the loader's threads ended before batch {missing}"
                )))
            }
        }
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Closing the channel makes the workers' sends fail, which ends them, which ends the
        // coordinator's sends.
        self.done = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
