//! Precision and recall of the near-duplicate detector (pHash + mirrored pHash within a Hamming
//! distance, as `DedupIndex::check_content` applies it) on generated copies (resized, re-encoded
//! at other qualities, slightly cropped, mirrored) against distinct images, all through the same
//! decode/resize path as ingest. Prints the table for distances 0..=16, the distance it supports
//! and checks that the default `--phash-distance` keeps the promise. `scripts/bench-dedupe` runs
//! it: `cargo test --release -p albef-ingest --test near_dup -- --nocapture`.
mod common;

use albef_ingest::resizer::{process, ImageConfig, StepTimes};
use albef_ingest::DEFAULT_PHASH_DISTANCE;
use common::{jpeg, photo};
use image::imageops::{self, FilterType};
use image::RgbImage;

fn hashes(bytes: &[u8]) -> (u64, u64) {
    let p = process(bytes, &ImageConfig::default(), &mut StepTimes::default())
        .expect("test images decode");
    p.phash.expect("test images hash")
}

/// Distance as the index sees it: the newcomer's hash or its mirror's against the stored hash.
fn distance(stored: u64, newcomer: (u64, u64)) -> u32 {
    (stored ^ newcomer.0)
        .count_ones()
        .min((stored ^ newcomer.1).count_ones())
}

fn resized(img: &RgbImage, num: u32, den: u32) -> Vec<u8> {
    let (w, h) = img.dimensions();
    jpeg(
        &imageops::resize(img, w * num / den, h * num / den, FilterType::Triangle),
        90,
    )
}

/// Cuts `pct` percent of each side away.
fn cropped(img: &RgbImage, pct: u32) -> Vec<u8> {
    let (w, h) = img.dimensions();
    let (dx, dy) = (w * pct / 100, h * pct / 100);
    jpeg(
        &imageops::crop_imm(img, dx, dy, w - 2 * dx, h - 2 * dy).to_image(),
        90,
    )
}

type Transform = (&'static str, fn(&RgbImage) -> Vec<u8>);

const TRANSFORMS: [Transform; 8] = [
    ("resize75", |i| resized(i, 3, 4)),
    ("resize50", |i| resized(i, 1, 2)),
    ("q75", |i| jpeg(i, 75)),
    ("q40", |i| jpeg(i, 40)),
    ("crop2", |i| cropped(i, 2)),
    ("crop5", |i| cropped(i, 5)),
    ("mirror", |i| jpeg(&imageops::flip_horizontal(i), 90)),
    ("mir+r50", |i| resized(&imageops::flip_horizontal(i), 1, 2)),
];

/// Recall of each transform, false positives among distinct pairs and precision at distance `t`.
struct Line {
    recalls: Vec<f64>,
    /// Recall of mirrored copies if the index compared the newcomer's own hash only.
    mirror_unflipped: f64,
    recall_all: f64,
    false_pos: u64,
    precision: f64,
}

fn line(t: u32, distinct: &[(u64, u64)], copies: &[Vec<(u64, u64)>]) -> Line {
    let n = copies[0].len();
    let share = |hits: usize| hits as f64 / n as f64;
    let recalls: Vec<f64> = copies
        .iter()
        .map(|c| {
            share(
                c.iter()
                    .zip(distinct)
                    .filter(|(c, o)| distance(o.0, **c) <= t)
                    .count(),
            )
        })
        .collect();
    let mirrored = &copies[TRANSFORMS
        .iter()
        .position(|t| t.0 == "mirror")
        .expect("listed")];
    let mirror_unflipped = share(
        mirrored
            .iter()
            .zip(distinct)
            .filter(|(c, o)| (o.0 ^ c.0).count_ones() <= t)
            .count(),
    );
    let true_pos: f64 = recalls.iter().sum::<f64>() * n as f64;
    let mut false_pos = 0u64;
    for i in 0..distinct.len() {
        for j in i + 1..distinct.len() {
            // A distinct image is matched if it or its mirror lands within t.
            if distance(distinct[i].0, distinct[j]) <= t {
                false_pos += 1;
            }
        }
    }
    Line {
        recall_all: true_pos / (n * copies.len()) as f64,
        precision: true_pos / (true_pos + false_pos as f64),
        recalls,
        mirror_unflipped,
        false_pos,
    }
}

/// Prints the table for distances 0..=16 and returns its lines.
fn report(distinct: &[(u64, u64)], copies: &[Vec<(u64, u64)>]) -> Vec<Line> {
    println!(
        "recall: share of copies within the distance of their original (mirror-: mirrored copies \
         without the flipped-hash check); false pos: distinct pairs within it; precision: copies \
         found / (copies found + false pos)"
    );
    let names: Vec<String> = TRANSFORMS.iter().map(|(t, _)| format!("{t:>8}")).collect();
    println!(
        "dist {}  mirror-       all  false pos  precision",
        names.join(" ")
    );
    let lines: Vec<Line> = (0..=16).map(|t| line(t, distinct, copies)).collect();
    for (t, l) in lines.iter().enumerate() {
        println!(
            "{t:>4} {}  {:>7.3}  {:>8.3}  {:>9}  {:>9.4}",
            l.recalls
                .iter()
                .map(|r| format!("{r:>8.3}"))
                .collect::<Vec<_>>()
                .join(" "),
            l.mirror_unflipped,
            l.recall_all,
            l.false_pos,
            l.precision
        );
    }
    lines
}

/// Resizing, re-encoding and mirroring are what the web does most; at the default distance they
/// must be caught.
fn check_recall_at_default(lines: &[Line]) {
    let at_default = &lines[DEFAULT_PHASH_DISTANCE as usize];
    for (name, recall) in TRANSFORMS.iter().map(|t| t.0).zip(&at_default.recalls) {
        if !name.starts_with("crop") {
            assert!(*recall >= 0.95, "{name}: recall {recall} at the default");
        }
    }
}

#[test]
fn precision_and_recall_by_distance() {
    // Copies are made of the first `with_copies` images; all `n` are the distinct set.
    let (n, with_copies) = (1000u64, 200u64);
    let mut distinct = Vec::new();
    let mut copies: Vec<Vec<(u64, u64)>> = vec![Vec::new(); TRANSFORMS.len()];
    for i in 0..n {
        // The images with copies are larger; the rest only need to look like other pictures.
        let (w, h) = if i < with_copies {
            (360 + (i as u32 * 37) % 400, 300 + (i as u32 * 53) % 300)
        } else {
            (260 + (i as u32 * 37) % 200, 260 + (i as u32 * 53) % 150)
        };
        let img = photo(1000 + i, w, h);
        distinct.push(hashes(&jpeg(&img, 95)));
        if i < with_copies {
            for (c, (_, make)) in copies.iter_mut().zip(TRANSFORMS) {
                c.push(hashes(&make(&img)));
            }
        }
    }
    let pairs = n * (n - 1) / 2;
    println!(
        "near-duplicate detector: {n} distinct generated images (JPEG q95, {pairs} pairs); one \
         copy per transform of {with_copies} of them"
    );
    let lines = report(&distinct, &copies);
    // The supported default: the largest distance at which at most 1 in 100,000 distinct pairs
    // is matched (these generated pictures are more alike than web photos, so real rates are
    // lower). Every hash has exactly 32 bits set, so distances are even: 2k+1 acts as 2k.
    let supported = lines
        .iter()
        .rposition(|l| l.false_pos as f64 <= 1e-5 * pairs as f64)
        .expect("distance 0 matches hardly any distinct pair") as u32;
    println!(
        "largest distance with at most 1e-5 false positives per distinct pair: {supported}; \
         default --phash-distance {DEFAULT_PHASH_DISTANCE}"
    );
    let at_default = &lines[DEFAULT_PHASH_DISTANCE as usize];
    assert!(
        DEFAULT_PHASH_DISTANCE <= supported,
        "the default {DEFAULT_PHASH_DISTANCE} matches {} distinct pairs",
        at_default.false_pos
    );
    assert!(
        DEFAULT_PHASH_DISTANCE + 1 >= supported,
        "the measurement supports {supported}, above the default {DEFAULT_PHASH_DISTANCE}"
    );
    check_recall_at_default(&lines);
}

/// The same table on photographs: every picture in the folder `ALBEF_DEDUPE_PHOTOS`, scaled to
/// a shorter side of 1024 px and cut into 4x4 tiles. The tiles are the distinct set (tiles of
/// one photograph share its light and texture, harder to tell apart than separate photographs)
/// and each tile gets one copy per transform. A measurement, not a gate: it prints the figures
/// for docs/benchmarks.md. `scripts/bench-dedupe-photos` fetches a folder.
#[test]
#[ignore = "needs a folder of photographs: scripts/bench-dedupe-photos"]
fn precision_and_recall_on_photographs() {
    let dir = std::env::var("ALBEF_DEDUPE_PHOTOS")
        .expect("set ALBEF_DEDUPE_PHOTOS to a folder of photographs");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .jpg or .png in {dir}");
    let (mut distinct, mut copies) = (Vec::new(), vec![Vec::new(); TRANSFORMS.len()]);
    for f in &files {
        let img = image::open(f)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", f.display()))
            .to_rgb8();
        let (w, h) = img.dimensions();
        let scale = 1024.0 / w.min(h) as f64;
        let img = imageops::resize(
            &img,
            (w as f64 * scale).round() as u32,
            (h as f64 * scale).round() as u32,
            FilterType::Triangle,
        );
        let (tw, th) = (img.width() / 4, img.height() / 4);
        for (x, y) in (0..4).flat_map(|y| (0..4).map(move |x| (x, y))) {
            let tile = imageops::crop_imm(&img, x * tw, y * th, tw, th).to_image();
            distinct.push(hashes(&jpeg(&tile, 95)));
            for (c, (_, make)) in copies.iter_mut().zip(TRANSFORMS) {
                c.push(hashes(&make(&tile)));
            }
        }
    }
    let n = distinct.len() as u64;
    let pairs = n * (n - 1) / 2;
    println!(
        "near-duplicate detector: {} photographs from {dir}, 4x4 tiles each: {n} distinct \
         tiles (JPEG q95, {pairs} pairs), one copy per transform of each",
        files.len()
    );
    let lines = report(&distinct, &copies);
    let at_default = &lines[DEFAULT_PHASH_DISTANCE as usize];
    println!(
        "default --phash-distance {DEFAULT_PHASH_DISTANCE}: {} of {pairs} distinct pairs matched \
         ({:.1e} per pair), recall {:.3}",
        at_default.false_pos,
        at_default.false_pos as f64 / pairs as f64,
        at_default.recall_all
    );
    // Tiles of one photograph against tiles of different photographs.
    let tiles = 16;
    let (mut same, mut across) = (0u64, 0u64);
    for i in 0..distinct.len() {
        for j in i + 1..distinct.len() {
            if distance(distinct[i].0, distinct[j]) <= DEFAULT_PHASH_DISTANCE {
                if i / tiles == j / tiles {
                    same += 1;
                } else {
                    across += 1;
                }
            }
        }
    }
    let same_pairs = files.len() as u64 * (tiles * (tiles - 1) / 2) as u64;
    println!(
        "of those: {same} of {same_pairs} pairs of tiles of one photograph, {across} of {} pairs \
         of tiles of different photographs",
        pairs - same_pairs
    );
}
