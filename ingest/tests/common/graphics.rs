//! Low-texture generated pictures, the kind pHash tells apart worst: two flat shapes on a flat,
//! lightly noised background (logos, icons, product shots on white), rendered text (a 5x7 pixel
//! font, scaled) and simple bar and line charts. `seed` decides everything; the near-duplicate
//! benchmark and the dedupe tests use them as a set of distinct pictures.
use image::{Rgb, RgbImage};

/// The kinds of low-texture picture, in the order [`low_texture`] cycles through them.
pub const LOW_TEXTURE_KINDS: [&str; 3] = ["shapes", "text", "chart"];

/// A low-texture picture of kind `LOW_TEXTURE_KINDS[seed % 3]`, `w`x`h` pixels.
pub fn low_texture(seed: u64, w: u32, h: u32) -> RgbImage {
    let mut rng = fastrand::Rng::with_seed(seed);
    match seed % 3 {
        0 => shapes(&mut rng, w, h),
        1 => text(&mut rng, w, h),
        _ => chart(&mut rng, w, h),
    }
}

fn colour(rng: &mut fastrand::Rng) -> [u8; 3] {
    [rng.u8(..), rng.u8(..), rng.u8(..)]
}

/// A light colour, as the backgrounds of text and charts are.
fn light(rng: &mut fastrand::Rng) -> [u8; 3] {
    [rng.u8(215..), rng.u8(215..), rng.u8(215..)]
}

/// A flat background with noise of amplitude `noise`.
fn background(rng: &mut fastrand::Rng, w: u32, h: u32, bg: [u8; 3], noise: f32) -> RgbImage {
    RgbImage::from_fn(w, h, |_, _| {
        let n = (rng.f32() - 0.5) * 2.0 * noise;
        Rgb(bg.map(|c| (f32::from(c) + n).clamp(0.0, 255.0) as u8))
    })
}

/// Paints `c` where `inside(x, y)` holds, inside the box `x0..x1`, `y0..y1` (clipped).
fn paint(img: &mut RgbImage, b: [i64; 4], c: [u8; 3], inside: impl Fn(f32, f32) -> bool) {
    let (w, h) = (i64::from(img.width()), i64::from(img.height()));
    for y in b[1].max(0)..b[3].min(h) {
        for x in b[0].max(0)..b[2].min(w) {
            if inside(x as f32 + 0.5, y as f32 + 0.5) {
                img.put_pixel(x as u32, y as u32, Rgb(c));
            }
        }
    }
}

fn rect(img: &mut RgbImage, x0: f32, y0: f32, x1: f32, y1: f32, c: [u8; 3]) {
    let b = [x0, y0, x1, y1].map(|v| v.round() as i64);
    paint(img, b, c, |_, _| true);
}

/// Two shapes (circle, ellipse, rectangle or triangle) of random colours, sizes and places.
fn shapes(rng: &mut fastrand::Rng, w: u32, h: u32) -> RgbImage {
    let bg = colour(rng);
    let mut img = background(rng, w, h, bg, 6.0);
    let side = w.min(h) as f32;
    for _ in 0..2 {
        let c = colour(rng);
        let (cx, cy) = (rng.f32() * w as f32, rng.f32() * h as f32);
        let (rx, ry) = (
            side * (0.04 + rng.f32() * 0.16),
            side * (0.04 + rng.f32() * 0.16),
        );
        let b = [cx - rx, cy - ry, cx + rx, cy + ry].map(|v| v.round() as i64);
        match rng.u8(0..4) {
            0 => paint(&mut img, b, c, |x, y| (x - cx).hypot(y - cy) < rx.min(ry)),
            1 => paint(&mut img, b, c, |x, y| {
                ((x - cx) / rx).powi(2) + ((y - cy) / ry).powi(2) < 1.0
            }),
            2 => rect(&mut img, cx - rx, cy - ry, cx + rx, cy + ry, c),
            _ => paint(&mut img, b, c, |x, y| {
                // Apex up: the half-width grows from 0 at the top to rx at the bottom.
                let t = (y - (cy - ry)) / (2.0 * ry);
                (0.0..=1.0).contains(&t) && (x - cx).abs() < t * rx
            }),
        }
    }
    img
}

/// 5x7 glyphs of A-Z then 0-9, one byte a row, the low 5 bits left to right.
const FONT: [[u8; 7]; 36] = [
    [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
    [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
    [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
    [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
    [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
    [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
    [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
    [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
    [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
    [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
    [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
    [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
    [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
    [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
    [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
    [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
    [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
    [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
    [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
    [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
    [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
    [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
    [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
    [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
    [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
    [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
    [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
    [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
    [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
    [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
    [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
    [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
    [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
    [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
    [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
    [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
];

/// Draws glyph `g` with its top left corner at `(x, y)`, each font pixel `s`x`s`.
fn glyph(img: &mut RgbImage, g: usize, x: f32, y: f32, s: f32, c: [u8; 3]) {
    for (row, bits) in FONT[g].iter().enumerate() {
        for col in 0..5 {
            if bits >> (4 - col) & 1 == 1 {
                let (px, py) = (x + col as f32 * s, y + row as f32 * s);
                rect(img, px, py, px + s, py + s, c);
            }
        }
    }
}

/// One to four lines of random words in one dark colour on a light background.
fn text(rng: &mut fastrand::Rng, w: u32, h: u32) -> RgbImage {
    let bg = light(rng);
    let mut img = background(rng, w, h, bg, 2.0);
    let ink = [rng.u8(..120), rng.u8(..120), rng.u8(..120)];
    let s = (w.min(h) as f32 / 90.0) * (1.0 + rng.f32() * 1.5);
    let margin = w as f32 * 0.05;
    let mut y = h as f32 * (0.1 + rng.f32() * 0.3);
    for _ in 0..rng.u32(1..=4) {
        let mut x = margin;
        loop {
            let letters = rng.u32(2..=8);
            if x + letters as f32 * 6.0 * s > w as f32 - margin {
                break;
            }
            for _ in 0..letters {
                glyph(&mut img, rng.usize(..36), x, y, s, ink);
                x += 6.0 * s;
            }
            x += 4.0 * s;
        }
        y += 10.0 * s;
    }
    img
}

/// A bar chart or a line chart with axes on a light background.
fn chart(rng: &mut fastrand::Rng, w: u32, h: u32) -> RgbImage {
    let bg = light(rng);
    let mut img = background(rng, w, h, bg, 2.0);
    let (wf, hf) = (w as f32, h as f32);
    let (x0, y0, x1, y1) = (wf * 0.1, hf * 0.9, wf * 0.95, hf * 0.08);
    let axis = [60, 60, 60];
    rect(&mut img, x0 - 2.0, y1, x0, y0, axis);
    rect(&mut img, x0, y0, x1, y0 + 2.0, axis);
    let n = rng.usize(3..=10);
    let c = colour(rng);
    let step = (x1 - x0) / n as f32;
    let values: Vec<f32> = (0..n).map(|_| 0.1 + rng.f32() * 0.9).collect();
    let top = |v: f32| y0 - v * (y0 - y1);
    if rng.bool() {
        for (i, &v) in values.iter().enumerate() {
            let x = x0 + step * (i as f32 + 0.15);
            rect(&mut img, x, top(v), x + step * 0.7, y0, c);
        }
    } else {
        let thick = 1.5 + wf / 200.0;
        for (i, pair) in values.windows(2).enumerate() {
            let (xa, xb) = (x0 + step * (i as f32 + 0.5), x0 + step * (i as f32 + 1.5));
            let (ya, yb) = (top(pair[0]), top(pair[1]));
            let b = [xa, ya.min(yb), xb, ya.max(yb)].map(|v| v.round() as i64);
            let b = [b[0], b[1] - 4, b[2], b[3] + 4];
            paint(&mut img, b, c, |x, y| {
                let t = ((x - xa) / (xb - xa)).clamp(0.0, 1.0);
                (y - (ya + t * (yb - ya))).abs() < thick
            });
        }
    }
    img
}
