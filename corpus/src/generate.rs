//! `albef corpus generate`: writes a synthetic web corpus to a folder, deterministically for a
//! seed: `images/*.jpg`, `pairs.tsv` (the ground truth: which caption is true, which rows are
//! duplicates, which split), and the URL lists that ingest reads (`urls.tsv` for training,
//! `heldout.tsv` for evaluation). Noise (captions swapped between pairs) and exact and near
//! duplicates (the same picture under another URL, or a resized re-encoded copy) are injected on
//! request, so that the dedupe and filter stages have something real to find.
use super::render::{encode_jpeg, render};
use super::scene::{Scene, PAIR_SHARE, TEMPLATES};
use albef_dataset::seed::rng;
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Distinct pictures, held-out ones included.
    pub n: usize,
    pub seed: u64,
    /// Fraction of training rows whose captions are swapped among themselves.
    pub noise: f64,
    /// Extra training rows, as a fraction of the training pictures, that repeat a picture (half
    /// exact copies, half resized and re-encoded).
    pub dup_frac: f64,
    /// Side of the square pictures, in pixels.
    pub image_size: usize,
    /// Share of pictures with two objects in a relation; the rest show a lone object in one of
    /// nine places (1,728 possible scenes, an easier corpus with 0).
    pub pair_share: f64,
    /// Multiplies the objects' sizes (1: radii of 7-16% of the side; larger objects cover more
    /// ViT patches and are learnt sooner).
    pub object_scale: f64,
    /// Pictures kept apart for evaluation (clean, no duplicates, distinct captions).
    pub heldout: usize,
    /// Written into the URL lists; `albef corpus serve` rewrites them with its own address.
    pub base_url: String,
    pub threads: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            n: 1000,
            seed: 0,
            noise: 0.0,
            dup_frac: 0.0,
            image_size: 160,
            pair_share: PAIR_SHARE,
            object_scale: 1.0,
            heldout: 0,
            base_url: "http://127.0.0.1:8000".into(),
            threads: 2,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Heldout,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Heldout => "heldout",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DupKind {
    Exact,
    Near,
}

/// One row of `pairs.tsv`.
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    /// The picture's path under the corpus folder, which is also its URL path.
    pub path: String,
    /// The caption as published (possibly another pair's, when noise was injected).
    pub caption: String,
    /// The caption that describes the picture.
    pub true_caption: String,
    pub split: Split,
    /// For a duplicate: the path of the picture it copies, and how.
    pub dup_of: Option<(String, DupKind)>,
}

impl Pair {
    pub fn clean(&self) -> bool {
        self.caption == self.true_caption
    }
}

#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub dir: PathBuf,
    pub train_rows: usize,
    pub heldout_rows: usize,
    pub exact_duplicates: usize,
    pub near_duplicates: usize,
    pub noisy_rows: usize,
    pub seconds: f64,
    pub images_per_second: f64,
}

pub const PAIRS_FILE: &str = "pairs.tsv";
const PAIRS_HEADER: &str = "path\tcaption\ttrue_caption\tclean\tsplit\tdup_of\tdup_kind";

/// What to draw for one output file. Rendering and encoding are deterministic, so drawing a
/// scene twice gives byte-identical files: that is how exact duplicates are made.
enum Job<'a> {
    Full(&'a Scene),
    /// A smaller, more compressed copy: a near duplicate.
    Near(&'a Scene),
}

/// Generates the corpus described by `opts` into `dir`: pictures, `pairs.tsv` and the URL lists.
pub fn generate(dir: &Path, opts: &GenerateOptions) -> Result<Summary> {
    let started = Instant::now();
    validate(opts)?;
    let images = dir.join("images");
    fs::create_dir_all(&images).with_context(|| format!("creating {}", images.display()))?;
    let train_count = opts.n - opts.heldout;
    let (scenes, templates) = sample_scenes(opts, train_count)?;
    let mut pairs: Vec<Pair> = (0..opts.n)
        .map(|i| {
            let caption = scenes[i].caption(templates[i]);
            Pair {
                path: path_of(i),
                caption: caption.clone(),
                true_caption: caption,
                split: if i < train_count {
                    Split::Train
                } else {
                    Split::Heldout
                },
                dup_of: None,
            }
        })
        .collect();
    let mut jobs: Vec<Job> = scenes.iter().map(Job::Full).collect();
    add_duplicates(
        opts,
        train_count,
        &scenes,
        &templates,
        &mut pairs,
        &mut jobs,
    );
    swap_captions(opts, &mut pairs);
    write_images(dir, opts, &pairs, &jobs)?;

    // Publish the rows in a shuffled order, so that duplicates are not next to their originals.
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    rng(&[opts.seed, 3]).shuffle(&mut order);
    let ordered: Vec<Pair> = order.into_iter().map(|i| pairs[i].clone()).collect();
    write_pairs(dir, &ordered)?;
    write_url_lists(dir, &opts.base_url)?;

    let seconds = started.elapsed().as_secs_f64();
    let count = |f: &dyn Fn(&Pair) -> bool| pairs.iter().filter(|p| f(p)).count();
    Ok(Summary {
        dir: dir.to_path_buf(),
        train_rows: count(&|p| p.split == Split::Train),
        heldout_rows: count(&|p| p.split == Split::Heldout),
        exact_duplicates: count(&|p| matches!(p.dup_of, Some((_, DupKind::Exact)))),
        near_duplicates: count(&|p| matches!(p.dup_of, Some((_, DupKind::Near)))),
        noisy_rows: count(&|p| !p.clean()),
        seconds,
        images_per_second: pairs.len() as f64 / seconds.max(1e-9),
    })
}

/// The picture file of row `i`.
fn path_of(i: usize) -> String {
    format!("images/{i:08}.jpg")
}

/// Refuses options outside their ranges, naming the flag.
fn validate(opts: &GenerateOptions) -> Result<()> {
    if opts.n == 0 || opts.heldout >= opts.n {
        bail!(
            "--n {} must be positive and larger than the held-out count {}",
            opts.n,
            opts.heldout
        );
    }
    for (flag, value) in [
        ("--noise", opts.noise),
        ("--dup-frac", opts.dup_frac),
        ("--pair-share", opts.pair_share),
    ] {
        if !(0.0..=1.0).contains(&value) {
            bail!("{flag} {value} must lie in [0, 1]");
        }
    }
    if !(0.25..=2.0).contains(&opts.object_scale) {
        bail!("--object-scale {} must lie in [0.25, 2]", opts.object_scale);
    }
    if !(32..=1024).contains(&opts.image_size) {
        bail!("--image-size {} must lie in 32..=1024", opts.image_size);
    }
    Ok(())
}

/// One scene and caption template per row (cheap, sequential: held-out scenes must be distinct
/// from each other, in any phrasing, so that no held-out caption fits two held-out pictures).
fn sample_scenes(opts: &GenerateOptions, train_count: usize) -> Result<(Vec<Scene>, Vec<usize>)> {
    let mut scenes = Vec::with_capacity(opts.n);
    let mut templates = Vec::with_capacity(opts.n);
    let mut heldout_scenes = HashSet::new();
    for i in 0..opts.n {
        let mut r = rng(&[opts.seed, 0, i as u64]);
        let mut tries = 0;
        loop {
            let scene = Scene::sample(&mut r, opts.pair_share, opts.object_scale as f32);
            let template = r.usize(..TEMPLATES);
            if i >= train_count && !heldout_scenes.insert(scene.caption(0)) {
                tries += 1;
                if tries == 10_000 {
                    bail!(
                        "--heldout {} asks for more distinct scenes than --pair-share {} \
                         offers (found {})",
                        opts.heldout,
                        opts.pair_share,
                        heldout_scenes.len()
                    );
                }
                continue;
            }
            scenes.push(scene);
            templates.push(template);
            break;
        }
    }
    Ok((scenes, templates))
}

/// Duplicates of training pictures (alternately exact and near), said in another phrasing.
fn add_duplicates<'a>(
    opts: &GenerateOptions,
    train_count: usize,
    scenes: &'a [Scene],
    templates: &[usize],
    pairs: &mut Vec<Pair>,
    jobs: &mut Vec<Job<'a>>,
) {
    let dups = (opts.dup_frac * train_count as f64).round() as usize;
    let mut originals: Vec<usize> = (0..train_count).collect();
    rng(&[opts.seed, 1]).shuffle(&mut originals);
    for (j, &of) in originals.iter().cycle().take(dups).enumerate() {
        let kind = if j % 2 == 0 {
            DupKind::Exact
        } else {
            DupKind::Near
        };
        let caption = scenes[of].caption(templates[of] + 1);
        pairs.push(Pair {
            path: path_of(opts.n + j),
            caption: caption.clone(),
            true_caption: caption,
            split: Split::Train,
            dup_of: Some((path_of(of), kind)),
        });
        jobs.push(match kind {
            DupKind::Exact => Job::Full(&scenes[of]),
            DupKind::Near => Job::Near(&scenes[of]),
        });
    }
}

/// Noise: a random subset of training rows passes its captions around in a circle.
fn swap_captions(opts: &GenerateOptions, pairs: &mut [Pair]) {
    let mut train_rows: Vec<usize> = (0..pairs.len())
        .filter(|&i| pairs[i].split == Split::Train)
        .collect();
    let mut noise_rng = rng(&[opts.seed, 2]);
    noise_rng.shuffle(&mut train_rows);
    let swapped = &train_rows[..(opts.noise * train_rows.len() as f64).round() as usize];
    if swapped.len() >= 2 {
        let captions: Vec<String> = swapped.iter().map(|&i| pairs[i].caption.clone()).collect();
        for (k, &i) in swapped.iter().enumerate() {
            pairs[i].caption = captions[(k + 1) % captions.len()].clone();
        }
    }
}

/// Renders and writes every picture, split over `opts.threads` threads.
fn write_images(dir: &Path, opts: &GenerateOptions, pairs: &[Pair], jobs: &[Job]) -> Result<()> {
    let threads = opts.threads.max(1);
    let chunk = jobs.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .zip(pairs.chunks(chunk))
            .map(|(jobs, pairs)| {
                scope.spawn(move || -> Result<()> {
                    for (job, pair) in jobs.iter().zip(pairs) {
                        let bytes = match job {
                            Job::Full(scene) => encode_jpeg(&render(scene, opts.image_size), 90)?,
                            Job::Near(scene) => {
                                let side = opts.image_size * 85 / 100;
                                encode_jpeg(&render(scene, side), 70)?
                            }
                        };
                        let path = dir.join(&pair.path);
                        fs::write(&path, bytes)
                            .with_context(|| format!("writing {}", path.display()))?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("an image writer thread panicked"))
    })
}

fn write_pairs(dir: &Path, pairs: &[Pair]) -> Result<()> {
    let mut out = String::from(PAIRS_HEADER);
    out.push('\n');
    for p in pairs {
        let (dup_of, kind) = match &p.dup_of {
            Some((of, DupKind::Exact)) => (of.as_str(), "exact"),
            Some((of, DupKind::Near)) => (of.as_str(), "near"),
            None => ("", ""),
        };
        out += &format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            p.path,
            p.caption,
            p.true_caption,
            p.clean() as u8,
            p.split.name(),
            dup_of,
            kind
        );
    }
    let path = dir.join(PAIRS_FILE);
    fs::write(&path, out).with_context(|| format!("writing {}", path.display()))
}

/// Reads `pairs.tsv` of a generated corpus.
pub fn read_pairs(dir: &Path) -> Result<Vec<Pair>> {
    let path = dir.join(PAIRS_FILE);
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (is {} a corpus made by `albef corpus generate`?)",
            path.display(),
            dir.display()
        )
    })?;
    let mut lines = text.lines();
    if lines.next() != Some(PAIRS_HEADER) {
        bail!("{}: unexpected header", path.display());
    }
    lines
        .enumerate()
        .map(|(i, line)| {
            let f: Vec<&str> = line.split('\t').collect();
            let bad = || format!("{} line {}: malformed row {line:?}", path.display(), i + 2);
            if f.len() != 7 {
                bail!(bad());
            }
            let split = match f[4] {
                "train" => Split::Train,
                "heldout" => Split::Heldout,
                _ => bail!(bad()),
            };
            let dup_of = match f[6] {
                "" => None,
                "exact" => Some((f[5].to_string(), DupKind::Exact)),
                "near" => Some((f[5].to_string(), DupKind::Near)),
                _ => bail!(bad()),
            };
            Ok(Pair {
                path: f[0].into(),
                caption: f[1].into(),
                true_caption: f[2].into(),
                split,
                dup_of,
            })
        })
        .collect()
}

pub const TRAIN_URLS: &str = "urls.tsv";
pub const HELDOUT_URLS: &str = "heldout.tsv";

/// Writes `urls.tsv` (training rows) and `heldout.tsv` with absolute URLs under `base_url`,
/// columns `url`, `caption`, `clean` (1 when the caption describes the picture).
pub fn write_url_lists(dir: &Path, base_url: &str) -> Result<()> {
    let pairs = read_pairs(dir)?;
    let base = base_url.trim_end_matches('/');
    for (split, name) in [(Split::Train, TRAIN_URLS), (Split::Heldout, HELDOUT_URLS)] {
        let mut out = String::from("url\tcaption\tclean\n");
        for p in pairs.iter().filter(|p| p.split == split) {
            out += &format!("{base}/{}\t{}\t{}\n", p.path, p.caption, p.clean() as u8);
        }
        let path = dir.join(name);
        let partial = dir.join(format!("{name}.partial"));
        fs::write(&partial, out).with_context(|| format!("writing {}", partial.display()))?;
        fs::rename(&partial, &path).with_context(|| format!("renaming to {}", path.display()))?;
    }
    Ok(())
}
