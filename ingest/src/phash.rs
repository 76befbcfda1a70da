//! The 64-bit perceptual hash (DCT pHash, as imagehash computes it): 32x32 luma, 2-D DCT, the
//! 8x8 lowest frequencies against their median. Also the hash of the mirrored image, obtained
//! for free by flipping the sign of the odd horizontal frequencies.
use fast_image_resize as fr;
use std::sync::OnceLock;

const N: usize = 32;
const K: usize = 8;

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

/// The pHash and mirrored pHash of an RGB image (`rgb` is width*height*3 bytes); `None` when
/// the image cannot be reduced to the hash's size (a hash of 0 would make every such image a
/// near duplicate of the others).
pub fn phash_rgb(rgb: &[u8], width: u32, height: u32) -> Option<(u64, u64)> {
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
    Some(phash_luma(&luma))
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
        let (h, hm) = phash_rgb(&gradient(false), 64, 48).unwrap();
        let (f, fm) = phash_rgb(&gradient(true), 64, 48).unwrap();
        // Equal up to coefficients that sit at the median (float rounding decides those).
        assert!((hm ^ f).count_ones() <= 6, "{hm:064b} vs {f:064b}");
        assert!((fm ^ h).count_ones() <= 6, "{fm:064b} vs {h:064b}");
        assert!(
            (h ^ f).count_ones() > 16,
            "the test image should not be symmetric"
        );
    }

    #[test]
    fn an_image_that_cannot_be_reduced_has_no_hash() {
        assert_eq!(phash_rgb(&[], 0, 0), None);
        assert_eq!(phash_rgb(&[1, 2, 3], 64, 48), None, "too few bytes");
    }
}
