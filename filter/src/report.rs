//! The report a filter run leaves in its output folder for people and dashboards: histograms of
//! every score (as JSON in the version's stats and as `scores.svg`), the kept fraction, and a
//! contact sheet of the lowest- and highest-scored pairs (`contact_sheet.html` with the
//! pictures embedded as data URIs, `contact_sheet.png` a grid of thumbnails: top row lowest,
//! bottom row highest). Where the input list carried ground truth (the synthetic corpus's
//! `clean` column), [`label_auc`] measures how well each score detects it.
use crate::score::{PairScores, ScoreName, SCORE_COLUMNS};
use albef_dataset as dataset;
use anyhow::{bail, Context, Result};
use arrow_array::{Array, Float32Array};
use base64::Engine;
use image::{imageops, RgbImage};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Bins of each histogram over [0, 1].
pub const BINS: usize = 20;

/// Counts of scores in [`BINS`] equal bins over [0, 1] (a score of 1 falls in the last).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Histogram {
    pub score: ScoreName,
    pub edges: Vec<f32>,
    pub counts: Vec<u64>,
}

impl Histogram {
    pub fn of(score: ScoreName, values: impl Iterator<Item = f32>) -> Self {
        let mut counts = vec![0u64; BINS];
        for v in values.filter(|v| v.is_finite()) {
            let bin = ((v.clamp(0.0, 1.0) * BINS as f32) as usize).min(BINS - 1);
            counts[bin] += 1;
        }
        let edges = (0..=BINS).map(|i| i as f32 / BINS as f32).collect();
        Self {
            score,
            edges,
            counts,
        }
    }
}

/// One histogram per score.
pub fn histograms(scores: &[PairScores]) -> Vec<Histogram> {
    ScoreName::ALL
        .into_iter()
        .map(|name| Histogram::of(name, scores.iter().map(|s| s.get(name))))
        .collect()
}

/// The four histograms side by side as an SVG bar chart.
pub fn histograms_svg(hists: &[Histogram], cut: Option<f32>) -> String {
    let (w, h, pad) = (240.0_f32, 160.0_f32, 20.0_f32);
    let width = hists.len() as f32 * (w + pad) + pad;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n",
        h + 3.0 * pad
    );
    for (i, hist) in hists.iter().enumerate() {
        let x0 = pad + i as f32 * (w + pad);
        let max = hist.counts.iter().copied().max().unwrap_or(0).max(1) as f32;
        let bar = w / hist.counts.len() as f32;
        let _ = writeln!(
            svg,
            "<text x=\"{x0}\" y=\"{}\">{}</text>",
            pad - 5.0,
            hist.score.column()
        );
        for (b, &c) in hist.counts.iter().enumerate() {
            let bh = h * c as f32 / max;
            let _ = writeln!(
                svg,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#4a7ab7\"><title>[{:.2}, {:.2}): {c}</title></rect>",
                x0 + b as f32 * bar,
                pad + h - bh,
                bar - 1.0,
                hist.edges[b],
                hist.edges[b + 1]
            );
        }
        if let (Some(t), ScoreName::Score) = (cut, hist.score) {
            let x = x0 + w * t.clamp(0.0, 1.0);
            let _ = writeln!(
                svg,
                "<line x1=\"{x:.1}\" y1=\"{pad}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#c0392b\" stroke-dasharray=\"4\"/>",
                pad + h
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{x0}\" y=\"{}\">0</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">1</text>",
            h + 2.0 * pad,
            x0 + w,
            h + 2.0 * pad
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// A pair shown on the contact sheet.
#[derive(Clone, Debug)]
pub struct SheetPair {
    pub key: String,
    pub caption: String,
    pub scores: PairScores,
    pub jpg: Vec<u8>,
}

/// Thumbnail side in the PNG grid, in pixels.
const THUMB: u32 = 128;

/// Writes `contact_sheet.html` and `contact_sheet.png` into `dir`: `lowest` on the first row,
/// `highest` on the second.
pub fn write_contact_sheet(dir: &Path, lowest: &[SheetPair], highest: &[SheetPair]) -> Result<()> {
    let mut html = String::from(
        "<!doctype html><meta charset=\"utf-8\"><title>albef filter: contact sheet</title>\n\
         <style>body{font-family:sans-serif} figure{display:inline-block;width:180px;margin:6px;vertical-align:top}\
         img{width:160px;height:160px;object-fit:cover} figcaption{font-size:12px}</style>\n",
    );
    for (title, pairs) in [("Lowest scores", lowest), ("Highest scores", highest)] {
        let _ = writeln!(html, "<h2>{title}</h2><div>");
        for p in pairs {
            let data = base64::engine::general_purpose::STANDARD.encode(&p.jpg);
            let _ = writeln!(
                html,
                "<figure><img src=\"data:image/jpeg;base64,{data}\" alt=\"{key}\"><figcaption>{cap}<br>score {:.3} (i2t {:.3}, t2i {:.3}, itm {:.3})<br><code>{key}</code></figcaption></figure>",
                p.scores.score,
                p.scores.i2t,
                p.scores.t2i,
                p.scores.itm,
                key = escape(&p.key),
                cap = escape(&p.caption),
            );
        }
        html.push_str("</div>\n");
    }
    dataset::write_atomic(&dir.join("contact_sheet.html"), html.as_bytes())?;

    let cols = lowest.len().max(highest.len()).max(1) as u32;
    let mut grid = RgbImage::from_pixel(cols * THUMB, 2 * THUMB, image::Rgb([255, 255, 255]));
    for (row, pairs) in [lowest, highest].into_iter().enumerate() {
        for (col, p) in pairs.iter().enumerate() {
            let picture = image::load_from_memory_with_format(&p.jpg, image::ImageFormat::Jpeg)
                .with_context(|| {
                    format!("decoding the picture of {} for the contact sheet", p.key)
                })?
                .to_rgb8();
            let thumb = imageops::resize(&picture, THUMB, THUMB, imageops::FilterType::Triangle);
            imageops::replace(
                &mut grid,
                &thumb,
                i64::from(col as u32 * THUMB),
                i64::from(row as u32 * THUMB),
            );
        }
    }
    let mut png = Vec::new();
    grid.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .context("encoding the contact sheet PNG")?;
    dataset::write_atomic(&dir.join("contact_sheet.png"), &png)
}

/// The area under the ROC curve of `scores` as a detector of `positive`: the probability that
/// a random positive scores above a random negative, a tie counting one half (the
/// Mann-Whitney U statistic over `positives * negatives`, from average ranks). 1 is a perfect
/// ranking, 0.5 chance.
pub fn roc_auc(scores: &[f32], positive: &[bool]) -> Result<f64> {
    if scores.len() != positive.len() {
        bail!(
            "ROC-AUC of {} scores against {} labels: the lengths must agree",
            scores.len(),
            positive.len()
        );
    }
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        bail!("ROC-AUC: score {i} is {}, not a finite number", scores[i]);
    }
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        bail!("ROC-AUC needs positives and negatives, got {n_pos} positives and {n_neg} negatives");
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of the (1-based, tie-averaged) ranks of the positives.
    let mut rank_sum = 0.0f64;
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let mean_rank = (start + 1 + end) as f64 / 2.0;
        let tied_pos = order[start..end].iter().filter(|&&i| positive[i]).count();
        rank_sum += mean_rank * tied_pos as f64;
        start = end;
    }
    let (p, n) = (n_pos as f64, n_neg as f64);
    Ok((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// How well each score of a filter run's output detects a ground-truth label.
#[derive(Debug, Serialize)]
pub struct LabelAuc {
    /// The label column (`1`/`0` or `true`/`false` strings, kept from the input list).
    pub label: String,
    /// Scored rows (rows that were not scored have null scores and are left out).
    pub rows: u64,
    pub positives: u64,
    /// ROC-AUC by score column, for "the label is 1".
    pub auc: BTreeMap<&'static str, f64>,
}

/// The ROC-AUC of every score column of the filter output in `dir` (as written by [`crate::run`])
/// for the label column `label`, over the scored rows.
pub fn label_auc(dir: &Path, label: &str) -> Result<LabelAuc> {
    let shards = dataset::complete_shards(dir)?;
    if shards.is_empty() {
        bail!("{} holds no complete shards", dir.display());
    }
    let mut columns: Vec<&str> = vec![dataset::KEY, label];
    columns.extend(SCORE_COLUMNS);
    let mut labels: Vec<bool> = Vec::new();
    let mut scores: [Vec<f32>; 4] = Default::default();
    for i in shards {
        let path = dataset::parquet_path(dir, i);
        for batch in dataset::read_batches(&path, None, Some(&columns)).with_context(|| {
            format!(
                "{} is not a filter output with a {label:?} column",
                dir.display()
            )
        })? {
            let batch = batch?;
            let keys = dataset::string_col(&batch, dataset::KEY)?;
            let truth = dataset::string_col(&batch, label)
                .with_context(|| format!("reading the label column of {}", path.display()))?;
            let cols = SCORE_COLUMNS
                .iter()
                .map(|&c| {
                    batch
                        .column_by_name(c)
                        .and_then(|a| a.as_any().downcast_ref::<Float32Array>())
                        .with_context(|| format!("{}: {c:?} is not a float column", path.display()))
                })
                .collect::<Result<Vec<_>>>()?;
            for r in 0..batch.num_rows() {
                if cols[0].is_null(r) {
                    continue;
                }
                let value = truth.is_valid(r).then(|| truth.value(r));
                labels.push(match value {
                    Some("1") | Some("true") => true,
                    Some("0") | Some("false") => false,
                    other => bail!(
                        "{} row {:?}: label {label:?} is {other:?}, expected 1, 0, true or false",
                        path.display(),
                        keys.value(r)
                    ),
                });
                for (dst, col) in scores.iter_mut().zip(&cols) {
                    dst.push(col.value(r));
                }
            }
        }
    }
    let mut auc = BTreeMap::new();
    for (name, values) in SCORE_COLUMNS.into_iter().zip(&scores) {
        auc.insert(
            name,
            roc_auc(values, &labels)
                .with_context(|| format!("ROC-AUC of {name} in {}", dir.display()))?,
        );
    }
    Ok(LabelAuc {
        label: label.to_string(),
        rows: labels.len() as u64,
        positives: labels.iter().filter(|&&l| l).count() as u64,
        auc,
    })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_bins_cover_zero_to_one() {
        let h = Histogram::of(
            ScoreName::Score,
            [0.0, 0.04, 0.05, 0.5, 1.0, f32::NAN].into_iter(),
        );
        assert_eq!(h.counts.iter().sum::<u64>(), 5);
        assert_eq!(h.counts[0], 2);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[10], 1);
        assert_eq!(h.counts[BINS - 1], 1);
        assert_eq!(h.edges.len(), BINS + 1);
    }

    #[test]
    fn roc_auc_is_the_share_of_correctly_ordered_pairs() {
        // Perfect, reversed, and one of four positive-negative pairs out of order.
        assert_eq!(
            roc_auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]).unwrap(),
            1.0
        );
        assert_eq!(
            roc_auc(&[0.1, 0.2, 0.8, 0.9], &[true, true, false, false]).unwrap(),
            0.0
        );
        assert_eq!(
            roc_auc(&[0.1, 0.5, 0.4, 0.9], &[false, true, false, true]).unwrap(),
            1.0
        );
        assert_eq!(
            roc_auc(&[0.1, 0.3, 0.4, 0.9], &[false, true, false, true]).unwrap(),
            0.75
        );
        // Ties count one half: everything tied is chance.
        assert_eq!(
            roc_auc(&[0.5; 4], &[false, true, false, true]).unwrap(),
            0.5
        );
        // One positive tied with one of two negatives: (1 + 0.5) / 2.
        assert_eq!(
            roc_auc(&[0.2, 0.7, 0.7], &[false, false, true]).unwrap(),
            0.75
        );
        // The order of the rows does not matter.
        assert_eq!(
            roc_auc(&[0.9, 0.4, 0.3, 0.1], &[true, false, true, false]).unwrap(),
            0.75
        );
    }

    #[test]
    fn roc_auc_refuses_what_it_cannot_rank() {
        assert!(roc_auc(&[0.1, 0.2], &[true]).is_err());
        assert!(roc_auc(&[0.1, 0.2], &[true, true]).is_err());
        assert!(roc_auc(&[0.1, 0.2], &[false, false]).is_err());
        assert!(roc_auc(&[0.1, f32::NAN], &[false, true]).is_err());
    }
}
