//! Precision and recall of the near-duplicate detector (pHash + mirrored pHash within a Hamming
//! distance) on generated copies (resized, re-encoded at a low quality, slightly cropped,
//! mirrored) against distinct images, through the same decode/resize path as ingest. Prints
//! the table the default `--phash-distance` was chosen from and checks the default keeps its
//! promise: `cargo test --release -p albef-ingest --test near_dup -- --nocapture`.
mod common;

use albef_ingest::resizer::{process, ImageConfig, StepTimes};
use common::{jpeg, photo};
use image::imageops::{self, FilterType};

fn hashes(bytes: &[u8]) -> (u64, u64) {
    let p = process(bytes, &ImageConfig::default(), &mut StepTimes::default())
        .expect("test images decode");
    (p.phash, p.phash_mirror)
}

/// Distance as the index sees it: the copy's hash or its mirror's against the stored hash.
fn distance(stored: u64, copy: (u64, u64)) -> u32 {
    (stored ^ copy.0)
        .count_ones()
        .min((stored ^ copy.1).count_ones())
}

#[test]
#[ignore = "not yet run to completion in CI; open in issue 3"]
fn precision_and_recall_by_distance() {
    let n = 150u64;
    let transforms = ["resized", "reencoded_q40", "cropped_5pct", "mirrored"];
    let mut originals = Vec::new();
    let mut copies: Vec<Vec<(u64, u64)>> = vec![Vec::new(); transforms.len()];
    for i in 0..n {
        let (w, h) = (360 + (i as u32 * 37) % 400, 300 + (i as u32 * 53) % 300);
        let img = photo(1000 + i, w, h);
        originals.push(hashes(&jpeg(&img, 95)));
        let small = imageops::resize(&img, w * 3 / 4, h * 3 / 4, FilterType::Triangle);
        copies[0].push(hashes(&jpeg(&small, 90)));
        copies[1].push(hashes(&jpeg(&img, 40)));
        let (dx, dy) = (w / 20, h / 20);
        let crop = imageops::crop_imm(&img, dx, dy, w - 2 * dx, h - 2 * dy).to_image();
        copies[2].push(hashes(&jpeg(&crop, 90)));
        copies[3].push(hashes(&jpeg(&imageops::flip_horizontal(&img), 90)));
    }
    let distinct_pairs = n * (n - 1) / 2;
    println!("near-duplicate detector on {n} generated images, {distinct_pairs} distinct pairs");
    println!(
        "dist  recall: {}  all    false pos  precision",
        transforms.join(" ")
    );
    let mut at_default = None;
    for t in 0..=16u32 {
        let recalls: Vec<f64> = copies
            .iter()
            .map(|c| {
                c.iter()
                    .zip(&originals)
                    .filter(|(c, o)| distance(o.0, **c) <= t)
                    .count() as f64
                    / n as f64
            })
            .collect();
        let tp: f64 = recalls.iter().sum::<f64>() * n as f64;
        let mut fp = 0u64;
        for i in 0..originals.len() {
            for j in i + 1..originals.len() {
                // A distinct image is matched if it or its mirror lands within t.
                if distance(originals[i].0, originals[j]) <= t {
                    fp += 1;
                }
            }
        }
        let precision = tp / (tp + fp as f64);
        let all = tp / (n as f64 * transforms.len() as f64);
        println!(
            "{t:>4}  {}  {all:.3}  {fp:>9}  {precision:.4}",
            recalls
                .iter()
                .map(|r| format!("{r:>7.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        if t == albef_ingest::DEFAULT_PHASH_DISTANCE {
            at_default = Some((recalls, precision));
        }
    }
    let (recalls, precision) = at_default.expect("default distance within the table");
    assert!(
        precision >= 0.99,
        "precision {precision} at the default distance"
    );
    assert!(
        recalls[0] >= 0.95 && recalls[1] >= 0.95 && recalls[3] >= 0.95,
        "recall {recalls:?}"
    );
}
