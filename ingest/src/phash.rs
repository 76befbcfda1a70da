//! A picture's fingerprint for near-duplicate search: the 64-bit perceptual hash (DCT pHash, as
//! imagehash computes it: 32x32 luma, 2-D DCT, the 8x8 lowest frequencies against their median),
//! the hash of the mirrored image (obtained for free by flipping the sign of the odd horizontal
//! frequencies), and an 8x8 colour thumbnail. The hash finds candidates; the thumbnail confirms
//! them: on flat, low-texture pictures (shapes on a plain background, text, charts) the grayscale
//! hash of distinct pictures often agrees, their colours and layout at 8x8 do not
//! (`scripts/bench-dedupe`, docs/research-log.md).
use fast_image_resize as fr;
use std::sync::OnceLock;

const N: usize = 32;
const K: usize = 8;
/// The thumbnail's side: each cell averages a 4x4 block of the 32x32 reduction.
const T: usize = 8;
/// A copy's thumbnail differs from its original's by at most this much per channel on average
/// (0-255 scale; resized, re-encoded and mirrored copies stayed at most 3.2 apart, distinct
/// pictures whose hashes agree 5.5 or more: docs/research-log.md)...
const MAX_MEAN_DIFF: u32 = 4;
/// ...and in no cell by more than this (a small object that differs is a different picture).
const MAX_CELL_DIFF: u8 = 48;

/// An 8x8 RGB thumbnail (row-major, 3 bytes a cell) that confirms a pHash match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thumb(pub [u8; T * T * 3]);

impl Thumb {
    pub const BYTES: usize = T * T * 3;

    /// The thumbnail of the mirrored picture.
    pub fn mirrored(&self) -> Thumb {
        let mut out = [0u8; T * T * 3];
        for (y, row) in out.chunks_exact_mut(T * 3).enumerate() {
            for (x, cell) in row.chunks_exact_mut(3).enumerate() {
                let from = (y * T + T - 1 - x) * 3;
                cell.copy_from_slice(&self.0[from..from + 3]);
            }
        }
        Thumb(out)
    }

    /// Whether two pictures whose hashes agree look alike: the same colours in the same places.
    pub fn matches(&self, other: &Thumb) -> bool {
        let mut total = 0u32;
        for (a, b) in self.0.iter().zip(&other.0) {
            let d = a.abs_diff(*b);
            if d > MAX_CELL_DIFF {
                return false;
            }
            total += u32::from(d);
        }
        total <= MAX_MEAN_DIFF * Thumb::BYTES as u32
    }
}

/// What near-duplicate search keeps of a picture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub hash: u64,
    /// The hash of the mirrored picture.
    pub mirror: u64,
    pub thumb: Thumb,
}

/// cos((2x+1) u pi / 2N) for the K lowest frequencies u.
fn cos_table() -> &'static [[f32; N]; K] {
    static T: OnceLock<[[f32; N]; K]> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = [[0f32; N]; K];
        for (u, row) in t.iter_mut().enumerate() {
            for (x, c) in row.iter_mut().enumerate() {
                *c = ((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / (2 * N) as f64).cos()
                    as f32;
            }
        }
        t
    })
}

fn bits(coeffs: &[f32; K * K]) -> u64 {
    let mut sorted = *coeffs;
    sorted.sort_unstable_by(f32::total_cmp);
    let median = (sorted[K * K / 2 - 1] + sorted[K * K / 2]) / 2.0;
    coeffs
        .iter()
        .enumerate()
        .fold(0u64, |h, (i, &c)| if c > median { h | 1 << i } else { h })
}

/// The pHash and the mirrored-image pHash of a 32x32 luma block (row-major).
pub fn phash_luma(luma: &[f32; N * N]) -> (u64, u64) {
    let c = cos_table();
    // rows[v][x] = sum_y cos(v, y) * luma[y][x]; coeffs[v][u] = sum_x cos(u, x) * rows[v][x].
    let mut rows = [[0f32; N]; K];
    for (v, out) in rows.iter_mut().enumerate() {
        for y in 0..N {
            let cy = c[v][y];
            let line = &luma[y * N..(y + 1) * N];
            for (o, &p) in out.iter_mut().zip(line) {
                *o += cy * p;
            }
        }
    }
    let mut coeffs = [0f32; K * K];
    let mut mirrored = [0f32; K * K];
    for v in 0..K {
        for u in 0..K {
            let s: f32 = c[u].iter().zip(&rows[v]).map(|(a, b)| a * b).sum();
            coeffs[v * K + u] = s;
            mirrored[v * K + u] = if u % 2 == 1 { -s } else { s };
        }
    }
    (bits(&coeffs), bits(&mirrored))
}

/// The fingerprint of an RGB image (`rgb` is width*height*3 bytes); `None` when the image
/// cannot be reduced to the hash's size (a hash of 0 would make every such image a near
/// duplicate of the others).
pub fn fingerprint(rgb: &[u8], width: u32, height: u32) -> Option<Fingerprint> {
    if width == 0 || height == 0 {
        return None;
    }
    let mut small = fr::images::Image::new(N as u32, N as u32, fr::PixelType::U8x3);
    let ok = fr::images::ImageRef::new(width, height, rgb, fr::PixelType::U8x3)
        .ok()
        .and_then(|src| {
            let opts = fr::ResizeOptions::new()
                .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Box));
            fr::Resizer::new().resize(&src, &mut small, &opts).ok()
        });
    ok?;
    let mut luma = [0f32; N * N];
    for (l, p) in luma.iter_mut().zip(small.buffer().chunks_exact(3)) {
        *l = 0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]);
    }
    let (hash, mirror) = phash_luma(&luma);
    Some(Fingerprint {
        hash,
        mirror,
        thumb: thumb(small.buffer()),
    })
}

/// The 8x8 thumbnail of a 32x32 RGB reduction: the mean of each 4x4 block.
fn thumb(small: &[u8]) -> Thumb {
    let f = N / T;
    let mut sums = [0u32; T * T * 3];
    for (i, p) in small.chunks_exact(3).enumerate() {
        let cell = (i / N / f) * T + (i % N) / f;
        for c in 0..3 {
            sums[cell * 3 + c] += u32::from(p[c]);
        }
    }
    let n = (f * f) as u32;
    Thumb(sums.map(|s| ((s + n / 2) / n) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(flip: bool) -> Vec<u8> {
        let (w, h) = (64usize, 48usize);
        let mut v = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                let xx = if flip { w - 1 - x } else { x };
                let r = ((xx * 4) ^ (y * 2)) as u8;
                v.extend_from_slice(&[r, (xx * 3 + y) as u8, (y * 5) as u8]);
            }
        }
        v
    }

    #[test]
    fn mirror_hash_matches_the_hash_of_the_mirror() {
        let a = fingerprint(&gradient(false), 64, 48).unwrap();
        let b = fingerprint(&gradient(true), 64, 48).unwrap();
        let (h, hm, f, fm) = (a.hash, a.mirror, b.hash, b.mirror);
        // Equal up to coefficients that sit at the median (float rounding decides those).
        assert!((hm ^ f).count_ones() <= 6, "{hm:064b} vs {f:064b}");
        assert!((fm ^ h).count_ones() <= 6, "{fm:064b} vs {h:064b}");
        assert!(
            (h ^ f).count_ones() > 16,
            "the test image should not be symmetric"
        );
        assert!(a.thumb.mirrored().matches(&b.thumb));
        assert!(!a.thumb.matches(&b.thumb));
    }

    #[test]
    fn an_image_that_cannot_be_reduced_has_no_hash() {
        assert_eq!(fingerprint(&[], 0, 0), None);
        assert_eq!(fingerprint(&[1, 2, 3], 64, 48), None, "too few bytes");
    }
}
