//! Image side of a sample, as ALBEF's pretraining transform does it (dataset/__init__.py):
//! RandomResizedCrop(res, scale 0.2-1.0, bicubic), an optional horizontal flip, RandAugment(2, 7)
//! restricted to the operations that keep colours (captions name colours), then CLIP's
//! normalisation into a CHW float slice. The evaluation path only resizes to `res`.
//! The operation parameters follow ALBEF's dataset/randaugment.py at level 7 of 10.
use anyhow::{Context, Result};
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Packed RGB pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct Rgb {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

/// Decodes a JPEG to RGB (greyscale and CMYK pictures are converted).
pub fn decode_jpeg(bytes: &[u8]) -> Result<Rgb> {
    let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let pixels = decoder.decode().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let (width, height) = decoder
        .dimensions()
        .context("no dimensions after decoding")?;
    if width == 0 || height == 0 || pixels.len() != width * height * 3 {
        anyhow::bail!(
            "decoded {} bytes for a {width}x{height} picture",
            pixels.len()
        );
    }
    Ok(Rgb {
        width,
        height,
        pixels,
    })
}

/// The random choices of the training transform.
#[derive(Clone, Copy, Debug)]
pub struct AugmentConfig {
    pub res: usize,
    /// RandomResizedCrop's area range.
    pub scale: (f64, f64),
    pub hflip: bool,
    pub randaugment: bool,
}

/// Crop-resize-flip-RandAugment: what a training sample goes through.
pub fn augment(
    image: &Rgb,
    cfg: &AugmentConfig,
    rng: &mut fastrand::Rng,
    resizer: &mut Resizer,
) -> Result<Rgb> {
    let crop = random_resized_crop(image.width, image.height, cfg.scale, rng);
    let mut out = resize(image, crop, cfg.res, resizer)?;
    if cfg.hflip && rng.bool() {
        flip_horizontal(&mut out);
    }
    if cfg.randaugment {
        rand_augment(&mut out, rng);
    }
    Ok(out)
}

/// The evaluation transform: the whole image resized to res x res.
pub fn resize_full(image: &Rgb, res: usize, resizer: &mut Resizer) -> Result<Rgb> {
    let whole = (0.0, 0.0, image.width as f64, image.height as f64);
    resize(image, whole, res, resizer)
}

/// torchvision's RandomResizedCrop.get_params with ratio (3/4, 4/3): (left, top, width, height).
pub fn random_resized_crop(
    width: usize,
    height: usize,
    scale: (f64, f64),
    rng: &mut fastrand::Rng,
) -> (f64, f64, f64, f64) {
    let (w, h) = (width as f64, height as f64);
    let area = w * h;
    let (log_lo, log_hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * (scale.0 + rng.f64() * (scale.1 - scale.0));
        let ratio = (log_lo + rng.f64() * (log_hi - log_lo)).exp();
        let cw = (target * ratio).sqrt().round();
        let ch = (target / ratio).sqrt().round();
        if cw > 0.0 && cw <= w && ch > 0.0 && ch <= h {
            let top = rng.usize(..=(h - ch) as usize) as f64;
            let left = rng.usize(..=(w - cw) as usize) as f64;
            return (left, top, cw, ch);
        }
    }
    // Fallback: the central crop with the ratio clamped into range.
    let ratio = w / h;
    let (cw, ch) = if ratio < 3.0 / 4.0 {
        (w, (w / (3.0 / 4.0)).round())
    } else if ratio > 4.0 / 3.0 {
        ((h * 4.0 / 3.0).round(), h)
    } else {
        (w, h)
    };
    (((w - cw) / 2.0).floor(), ((h - ch) / 2.0).floor(), cw, ch)
}

/// Bicubic (Catmull-Rom, as PIL's BICUBIC) resize of a crop to res x res.
fn resize(
    image: &Rgb,
    (left, top, width, height): (f64, f64, f64, f64),
    res: usize,
    resizer: &mut Resizer,
) -> Result<Rgb> {
    let src = ImageRef::new(
        image.width as u32,
        image.height as u32,
        &image.pixels,
        PixelType::U8x3,
    )
    .context("wrapping decoded pixels")?;
    let mut dst = Image::new(res as u32, res as u32, PixelType::U8x3);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom))
        .crop(left, top, width, height);
    resizer
        .resize(&src, &mut dst, &options)
        .context("resizing")?;
    Ok(Rgb {
        width: res,
        height: res,
        pixels: dst.into_vec(),
    })
}

pub fn flip_horizontal(image: &mut Rgb) {
    let row = image.width * 3;
    for line in image.pixels.chunks_exact_mut(row) {
        for x in 0..image.width / 2 {
            let (a, b) = (x * 3, (image.width - 1 - x) * 3);
            for c in 0..3 {
                line.swap(a + c, b + c);
            }
        }
    }
}

/// The operations ALBEF's RandomAugment may pick (no Color, Contrast, Solarize, Posterize).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Identity,
    AutoContrast,
    Equalize,
    Brightness,
    Sharpness,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
}

pub const OPS: [Op; 10] = [
    Op::Identity,
    Op::AutoContrast,
    Op::Equalize,
    Op::Brightness,
    Op::Sharpness,
    Op::ShearX,
    Op::ShearY,
    Op::TranslateX,
    Op::TranslateY,
    Op::Rotate,
];

/// RandAugment's magnitude: level 7 of 10.
const LEVEL: f32 = 7.0 / 10.0;
/// The fill of pixels that affine operations uncover.
const FILL: u8 = 128;

/// Two operations drawn with replacement, each applied with probability 0.5.
pub fn rand_augment(image: &mut Rgb, rng: &mut fastrand::Rng) {
    for _ in 0..2 {
        let op = OPS[rng.usize(..OPS.len())];
        if rng.f32() > 0.5 {
            continue;
        }
        let sign = if rng.bool() { -1.0 } else { 1.0 };
        apply(image, op, sign);
    }
}

/// One operation at level 7; `sign` chooses the direction of the geometric ones.
pub fn apply(image: &mut Rgb, op: Op, sign: f32) {
    let enhance = LEVEL * 1.8 + 0.1;
    match op {
        Op::Identity => {}
        Op::AutoContrast => auto_contrast(image),
        Op::Equalize => equalize(image),
        Op::Brightness => {
            let table: Vec<u8> = (0..256)
                .map(|v| (v as f32 * enhance).clamp(0.0, 255.0) as u8)
                .collect();
            image
                .pixels
                .iter_mut()
                .for_each(|p| *p = table[*p as usize]);
        }
        Op::Sharpness => sharpness(image, enhance),
        Op::ShearX => affine(image, [1.0, sign * LEVEL * 0.3, 0.0, 0.0, 1.0, 0.0]),
        Op::ShearY => affine(image, [1.0, 0.0, 0.0, sign * LEVEL * 0.3, 1.0, 0.0]),
        Op::TranslateX => affine(image, [1.0, 0.0, -sign * LEVEL * 10.0, 0.0, 1.0, 0.0]),
        Op::TranslateY => affine(image, [1.0, 0.0, 0.0, 0.0, 1.0, -sign * LEVEL * 10.0]),
        Op::Rotate => {
            let angle = (sign * LEVEL * 30.0).to_radians();
            let (s, c) = angle.sin_cos();
            let (cx, cy) = (image.width as f32 / 2.0, image.height as f32 / 2.0);
            // cv2.getRotationMatrix2D(centre, degrees, 1): counter-clockwise for positive angles.
            affine(
                image,
                [
                    c,
                    s,
                    (1.0 - c) * cx - s * cy,
                    -s,
                    c,
                    s * cx + (1.0 - c) * cy,
                ],
            );
        }
    }
}

/// Per channel, stretch [min, max] to [0, 255].
fn auto_contrast(image: &mut Rgb) {
    for c in 0..3 {
        let channel = image.pixels.iter().skip(c).step_by(3);
        let (lo, hi) = channel.fold((255u8, 0u8), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        if hi <= lo {
            continue;
        }
        let scale = 255.0 / (hi - lo) as f32;
        let table: Vec<u8> = (0..256)
            .map(|v| ((v as f32 - lo as f32) * scale).clamp(0.0, 255.0) as u8)
            .collect();
        image
            .pixels
            .iter_mut()
            .skip(c)
            .step_by(3)
            .for_each(|p| *p = table[*p as usize]);
    }
}

/// Per-channel histogram equalisation, PIL's algorithm.
fn equalize(image: &mut Rgb) {
    for c in 0..3 {
        let mut hist = [0usize; 256];
        image
            .pixels
            .iter()
            .skip(c)
            .step_by(3)
            .for_each(|&v| hist[v as usize] += 1);
        let nonzero: Vec<usize> = hist.iter().copied().filter(|&h| h > 0).collect();
        let step = nonzero[..nonzero.len() - 1].iter().sum::<usize>() / 255;
        if step == 0 {
            continue;
        }
        let mut table = [0u8; 256];
        let mut n = step / 2;
        for (v, entry) in table.iter_mut().enumerate() {
            *entry = (n / step).min(255) as u8;
            n += hist[v];
        }
        image
            .pixels
            .iter_mut()
            .skip(c)
            .step_by(3)
            .for_each(|p| *p = table[*p as usize]);
    }
}

/// PIL's ImageEnhance.Sharpness: blend with the 3x3 SMOOTH-filtered image (border unchanged).
fn sharpness(image: &mut Rgb, factor: f32) {
    let (w, h) = (image.width, image.height);
    if w < 3 || h < 3 {
        return;
    }
    let src = image.pixels.clone();
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            for c in 0..3 {
                let at = |dx: usize, dy: usize| src[((y + dy - 1) * w + x + dx - 1) * 3 + c] as u32;
                let mut sum = 0;
                for dy in 0..3 {
                    for dx in 0..3 {
                        sum += at(dx, dy);
                    }
                }
                sum += 4 * at(1, 1);
                let smooth = ((sum as f32) / 13.0).round();
                let original = at(1, 1) as f32;
                let v = smooth + factor * (original - smooth);
                image.pixels[(y * w + x) * 3 + c] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// cv2.warpAffine with the forward map `[a b c; d e f]`, bilinear, uncovered pixels `FILL`.
fn affine(image: &mut Rgb, m: [f32; 6]) {
    let [a, b, c, d, e, f] = m;
    let det = a * e - b * d;
    // The inverse map: from an output pixel to where it comes from.
    let (ia, ib, id, ie) = (e / det, -b / det, -d / det, a / det);
    let (ic, if_) = (-(ia * c + ib * f), -(id * c + ie * f));
    let (w, h) = (image.width, image.height);
    let src = image.pixels.clone();
    let sample = |x: isize, y: isize, ch: usize| -> f32 {
        if x < 0 || y < 0 || x >= w as isize || y >= h as isize {
            FILL as f32
        } else {
            src[(y as usize * w + x as usize) * 3 + ch] as f32
        }
    };
    for y in 0..h {
        for x in 0..w {
            let (xf, yf) = (x as f32, y as f32);
            let sx = ia * xf + ib * yf + ic;
            let sy = id * xf + ie * yf + if_;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as isize, y0 as isize);
            for ch in 0..3 {
                let top = sample(x0, y0, ch) * (1.0 - fx) + sample(x0 + 1, y0, ch) * fx;
                let bottom = sample(x0, y0 + 1, ch) * (1.0 - fx) + sample(x0 + 1, y0 + 1, ch) * fx;
                let v = top * (1.0 - fy) + bottom * fy;
                image.pixels[(y * w + x) * 3 + ch] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// Writes `(pixel / 255 - mean) / std`, channel-major (CHW), into `out` (3 * w * h floats).
pub fn normalise_into(image: &Rgb, out: &mut [f32]) {
    let plane = image.width * image.height;
    assert_eq!(out.len(), 3 * plane, "output slice size");
    for c in 0..3 {
        let scale = 1.0 / (255.0 * CLIP_STD[c]);
        let shift = CLIP_MEAN[c] / CLIP_STD[c];
        let dst = &mut out[c * plane..(c + 1) * plane];
        for (o, p) in dst.iter_mut().zip(image.pixels.iter().skip(c).step_by(3)) {
            *o = *p as f32 * scale - shift;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A textured test picture: a pseudo-random red channel, a green ramp, constant blue.
    fn gradient(w: usize, h: usize) -> Rgb {
        let mut pixels = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                let texture = ((x * 7 + y * 13) * 37 % 251) as u8;
                pixels.extend_from_slice(&[texture, (y * 255 / h) as u8, 90]);
            }
        }
        Rgb {
            width: w,
            height: h,
            pixels,
        }
    }

    #[test]
    fn crops_stay_inside_and_cover_the_scale_range() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut fractions = Vec::new();
        for _ in 0..2000 {
            let (l, t, w, h) = random_resized_crop(200, 150, (0.2, 1.0), &mut rng);
            assert!(l >= 0.0 && t >= 0.0 && l + w <= 200.0 && t + h <= 150.0);
            fractions.push(w * h / (200.0 * 150.0));
        }
        let min = fractions.iter().cloned().fold(f64::MAX, f64::min);
        let max = fractions.iter().cloned().fold(0.0, f64::max);
        assert!(min < 0.25 && min > 0.18, "smallest crop {min}");
        assert!(max > 0.9, "largest crop {max}");
    }

    #[test]
    fn every_op_keeps_size_and_identity_keeps_pixels() {
        let original = gradient(64, 48);
        for op in OPS {
            for sign in [-1.0, 1.0] {
                let mut image = original.clone();
                apply(&mut image, op, sign);
                assert_eq!((image.width, image.height), (64, 48));
                assert_eq!(image.pixels.len(), original.pixels.len());
                let changed = image.pixels != original.pixels;
                assert_eq!(changed, op != Op::Identity, "{op:?} changed: {changed}");
            }
        }
    }

    #[test]
    fn translate_moves_content_and_fills_with_grey() {
        let mut image = gradient(32, 32);
        apply(&mut image, Op::TranslateX, -1.0);
        // The content moves right by 7 pixels: the left columns are the fill.
        assert_eq!(&image.pixels[..3], &[FILL; 3]);
        let original = gradient(32, 32);
        assert_eq!(
            image.pixels[(10 * 32 + 17) * 3],
            original.pixels[(10 * 32 + 10) * 3]
        );
    }

    #[test]
    fn flip_twice_is_identity() {
        let original = gradient(31, 7);
        let mut image = original.clone();
        flip_horizontal(&mut image);
        assert_ne!(image, original);
        assert_eq!(&image.pixels[..3], &original.pixels[30 * 3..31 * 3]);
        flip_horizontal(&mut image);
        assert_eq!(image, original);
    }
}
