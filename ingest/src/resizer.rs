//! The resizer stage: bytes in, a validated RGB image at the target size out, re-encoded as JPEG.
//! The type comes from the magic bytes, never the header; decompression bombs are refused by
//! their declared size before any pixel buffer exists; JPEGs are decoded by libjpeg-turbo at the
//! smallest M/8 DCT scale that still covers the target size, which is most of the speed.
use crate::phash::{self, Fingerprint};
use anyhow::{Context, Result};
use fast_image_resize as fr;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, RgbImage};
use std::cell::RefCell;
use std::io::Cursor;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    /// Shorter side = size, aspect kept.
    KeepRatio,
    /// Shorter side = size, then the centre square.
    CenterCrop,
    /// Longer side = size, padded with white to a square.
    Border,
    /// No resizing (still decoded, validated and re-encoded).
    No,
}

#[derive(Clone, Debug)]
pub struct ImageConfig {
    pub size: u32,
    pub mode: ResizeMode,
    /// Reject images whose shorter side is below this.
    pub min_size: u32,
    /// Reject images whose longer/shorter side ratio exceeds this.
    pub max_aspect_ratio: f64,
    /// Refuse images that declare more pixels than this (decompression bombs).
    pub max_pixels: u64,
    pub quality: u8,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            size: 256,
            mode: ResizeMode::KeepRatio,
            min_size: 64,
            max_aspect_ratio: 10.0,
            max_pixels: 80_000_000,
            quality: 95,
        }
    }
}

/// Time spent in each step of one image.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepTimes {
    pub decode: Duration,
    pub resize: Duration,
    pub encode: Duration,
    pub hash: Duration,
}

#[derive(Debug)]
pub struct Processed {
    pub jpg: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub original_width: u32,
    pub original_height: u32,
    /// The pHash, the pHash of the mirrored image (to find mirrored copies) and the thumbnail
    /// that confirms a match; `None` when the image could not be hashed: it then takes part in
    /// exact dedupe only.
    pub fingerprint: Option<Fingerprint>,
}

/// Why an image was not kept: `filtered` (status filtered_out) or undecodable (failed_to_decode).
#[derive(Debug)]
pub struct Rejected {
    pub filtered: bool,
    pub message: String,
    pub original: Option<(u32, u32)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Jpeg,
    Png,
    Gif,
    WebP,
}

/// The image type from the first bytes.
pub fn sniff(bytes: &[u8]) -> Option<Kind> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(Kind::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Kind::Png)
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some(Kind::Gif)
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(Kind::WebP)
    } else {
        None
    }
}

thread_local! {
    static DECOMPRESSOR: RefCell<Option<turbojpeg::Decompressor>> = const { RefCell::new(None) };
    static COMPRESSOR: RefCell<Option<turbojpeg::Compressor>> = const { RefCell::new(None) };
    static RESIZER: RefCell<fr::Resizer> = RefCell::new(fr::Resizer::new());
}

fn reject(filtered: bool, message: impl Into<String>, original: Option<(u32, u32)>) -> Rejected {
    Rejected {
        filtered,
        message: message.into(),
        original,
    }
}

/// Decodes, validates, resizes, hashes and re-encodes one downloaded image.
pub fn process(
    bytes: &[u8],
    cfg: &ImageConfig,
    times: &mut StepTimes,
) -> Result<Processed, Rejected> {
    let t = Instant::now();
    let kind = sniff(bytes).ok_or_else(|| {
        let head: String = bytes
            .iter()
            .take(16)
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        reject(
            false,
            format!("not an image (content starts with {head:?})"),
            None,
        )
    })?;
    let decoded = match kind {
        Kind::Jpeg => decode_jpeg(bytes, cfg),
        _ => decode_other(bytes, cfg),
    };
    times.decode += t.elapsed();
    let (rgb, original) = decoded?;

    let t = Instant::now();
    let out = resize(&rgb, cfg)
        .map_err(|e| reject(false, format!("cannot resize: {e:#}"), Some(original)))?;
    times.resize += t.elapsed();

    let t = Instant::now();
    let fingerprint = phash::fingerprint(out.as_raw(), out.width(), out.height());
    times.hash += t.elapsed();

    let t = Instant::now();
    let jpg = encode_jpeg(&out, cfg.quality)
        .map_err(|e| reject(false, format!("cannot encode: {e:#}"), Some(original)))?;
    times.encode += t.elapsed();
    Ok(Processed {
        jpg,
        width: out.width(),
        height: out.height(),
        original_width: original.0,
        original_height: original.1,
        fingerprint,
    })
}

/// The fingerprint of a JPEG that ingest wrote, as [`process`] computed it before encoding (up
/// to the JPEG's loss).
pub fn stored_fingerprint(jpg: &[u8]) -> Result<Fingerprint, String> {
    let cfg = ImageConfig {
        mode: ResizeMode::No,
        min_size: 1,
        max_aspect_ratio: f64::INFINITY,
        ..ImageConfig::default()
    };
    let (rgb, _) = decode_jpeg(jpg, &cfg).map_err(|r| r.message)?;
    phash::fingerprint(rgb.as_raw(), rgb.width(), rgb.height())
        .ok_or_else(|| "cannot hash the decoded picture".to_string())
}

/// Size and shape checks on the declared (oriented) dimensions, before decoding.
fn check_dims(w: u32, h: u32, cfg: &ImageConfig) -> Result<(), Rejected> {
    let orig = Some((w, h));
    if w == 0 || h == 0 {
        return Err(reject(
            false,
            format!("image declares {w}x{h} pixels"),
            orig,
        ));
    }
    if u64::from(w) * u64::from(h) > cfg.max_pixels {
        return Err(reject(
            true,
            format!(
                "image area too large: {w}x{h} exceeds {} pixels",
                cfg.max_pixels
            ),
            orig,
        ));
    }
    if w.min(h) < cfg.min_size {
        return Err(reject(
            true,
            format!(
                "image too small: {w}x{h}, shorter side under {}",
                cfg.min_size
            ),
            orig,
        ));
    }
    let aspect = f64::from(w.max(h)) / f64::from(w.min(h));
    if aspect > cfg.max_aspect_ratio {
        return Err(reject(
            true,
            format!(
                "aspect ratio too large: {w}x{h} ({aspect:.1} > {})",
                cfg.max_aspect_ratio
            ),
            orig,
        ));
    }
    Ok(())
}

fn rotates(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// The EXIF orientation of a JPEG (APP1 "Exif" segment), if any.
fn jpeg_orientation(bytes: &[u8]) -> Option<Orientation> {
    let mut i = 2;
    while i + 4 <= bytes.len() && bytes[i] == 0xFF {
        let marker = bytes[i + 1];
        if marker == 0xDA || marker == 0xD9 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
        let seg = bytes.get(i + 4..i + 2 + len)?;
        if marker == 0xE1 && seg.starts_with(b"Exif\0\0") {
            return Orientation::from_exif_chunk(&seg[6..]);
        }
        i += 2 + len;
    }
    None
}

/// The short side the decoded image must keep so that resizing only ever shrinks it.
fn needed_side(w: u32, h: u32, cfg: &ImageConfig) -> Option<u32> {
    match cfg.mode {
        ResizeMode::KeepRatio | ResizeMode::CenterCrop => {
            Some(cfg.size).filter(|_| w.min(h) > cfg.size)
        }
        ResizeMode::Border => Some(cfg.size)
            .filter(|_| w.max(h) > cfg.size)
            .map(|s| (u64::from(s) * u64::from(w.min(h))).div_ceil(u64::from(w.max(h))) as u32),
        ResizeMode::No => None,
    }
}

fn decode_jpeg(bytes: &[u8], cfg: &ImageConfig) -> Result<(RgbImage, (u32, u32)), Rejected> {
    let orientation = jpeg_orientation(bytes).unwrap_or(Orientation::NoTransforms);
    let header = turbojpeg::read_header(bytes)
        .map_err(|e| reject(false, format!("bad JPEG header: {e}"), None))?;
    let (w, h) = (header.width as u32, header.height as u32);
    let oriented = if rotates(orientation) { (h, w) } else { (w, h) };
    check_dims(oriented.0, oriented.1, cfg)?;
    if matches!(
        header.colorspace,
        turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK
    ) {
        // libjpeg-turbo cannot convert CMYK to RGB; image-rs (zune-jpeg) can.
        return decode_other(bytes, cfg);
    }
    let factor = needed_side(w, h, cfg)
        .map(|side| {
            (1..=8)
                .map(|num| turbojpeg::ScalingFactor::new(num, 8))
                .find(|f| f.scale(w.min(h) as usize) >= side as usize)
                .unwrap_or(turbojpeg::ScalingFactor::ONE)
        })
        .unwrap_or(turbojpeg::ScalingFactor::ONE);
    let (sw, sh) = (factor.scale(w as usize), factor.scale(h as usize));
    let mut pixels = vec![0u8; sw * sh * 3];
    DECOMPRESSOR
        .with(|d| -> turbojpeg::Result<()> {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(turbojpeg::Decompressor::new()?);
            }
            let d = d.as_mut().expect("set above");
            d.set_scaling_factor(factor)?;
            d.decompress(
                bytes,
                turbojpeg::Image {
                    pixels: pixels.as_mut_slice(),
                    width: sw,
                    pitch: sw * 3,
                    height: sh,
                    format: turbojpeg::PixelFormat::RGB,
                },
            )
        })
        .map_err(|e| reject(false, format!("cannot decode JPEG: {e}"), Some(oriented)))?;
    let img = RgbImage::from_raw(sw as u32, sh as u32, pixels).expect("buffer sized for the image");
    let img = if orientation == Orientation::NoTransforms {
        img
    } else {
        let mut d = DynamicImage::ImageRgb8(img);
        d.apply_orientation(orientation);
        d.into_rgb8()
    };
    Ok((img, oriented))
}

fn decode_other(bytes: &[u8], cfg: &ImageConfig) -> Result<(RgbImage, (u32, u32)), Rejected> {
    let bad =
        |e: &dyn std::fmt::Display, orig| reject(false, format!("cannot decode image: {e}"), orig);
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(&e, None))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(cfg.max_pixels.saturating_mul(8).max(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| bad(&e, None))?;
    let (w, h) = decoder.dimensions();
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let oriented = if rotates(orientation) { (h, w) } else { (w, h) };
    check_dims(oriented.0, oriented.1, cfg)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| bad(&e, Some(oriented)))?;
    img.apply_orientation(orientation);
    let rgb = if img.color().has_alpha() {
        // Transparent pixels become white, as on a web page.
        let rgba = img.into_rgba8();
        let (w, h) = rgba.dimensions();
        let mut rgb = RgbImage::new(w, h);
        for (o, p) in rgb.pixels_mut().zip(rgba.pixels()) {
            let a = u32::from(p[3]);
            for c in 0..3 {
                o[c] = ((u32::from(p[c]) * a + 255 * (255 - a) + 127) / 255) as u8;
            }
        }
        rgb
    } else {
        img.into_rgb8()
    };
    Ok((rgb, oriented))
}

fn resize_into(
    src: &RgbImage,
    crop: Option<(f64, f64, f64, f64)>,
    w: u32,
    h: u32,
) -> Result<RgbImage> {
    let view =
        fr::images::ImageRef::new(src.width(), src.height(), src.as_raw(), fr::PixelType::U8x3)?;
    let mut dst = fr::images::Image::new(w.max(1), h.max(1), fr::PixelType::U8x3);
    let mut opts =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    if let Some((l, t, cw, ch)) = crop {
        opts = opts.crop(l, t, cw, ch);
    }
    RESIZER.with(|r| r.borrow_mut().resize(&view, &mut dst, &opts))?;
    RgbImage::from_raw(dst.width(), dst.height(), dst.into_vec())
        .context("resized buffer has the wrong size")
}

fn scaled(side: u32, num: u32, den: u32) -> u32 {
    ((u64::from(side) * u64::from(num) + u64::from(den) / 2) / u64::from(den)).max(1) as u32
}

fn resize(img: &RgbImage, cfg: &ImageConfig) -> Result<RgbImage> {
    let (w, h) = img.dimensions();
    let n = cfg.size;
    match cfg.mode {
        ResizeMode::No => Ok(img.clone()),
        ResizeMode::KeepRatio => {
            let (tw, th) = if w <= h {
                (n, scaled(h, n, w))
            } else {
                (scaled(w, n, h), n)
            };
            if (tw, th) == (w, h) {
                return Ok(img.clone());
            }
            resize_into(img, None, tw, th)
        }
        ResizeMode::CenterCrop => {
            let side = w.min(h);
            let (l, t) = (f64::from(w - side) / 2.0, f64::from(h - side) / 2.0);
            resize_into(img, Some((l, t, f64::from(side), f64::from(side))), n, n)
        }
        ResizeMode::Border => {
            let (tw, th) = if w >= h {
                (n, scaled(h, n, w))
            } else {
                (scaled(w, n, h), n)
            };
            let inner = resize_into(img, None, tw, th)?;
            let mut canvas = RgbImage::from_pixel(n, n, image::Rgb([255, 255, 255]));
            image::imageops::replace(
                &mut canvas,
                &inner,
                i64::from((n - tw) / 2),
                i64::from((n - th) / 2),
            );
            Ok(canvas)
        }
    }
}

fn encode_jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(turbojpeg::Compressor::new()?);
        }
        let c = c.as_mut().expect("set above");
        c.set_quality(i32::from(quality))?;
        c.set_subsamp(turbojpeg::Subsamp::Sub2x2)?;
        let (w, h) = img.dimensions();
        Ok(c.compress_to_vec(turbojpeg::Image {
            pixels: img.as_raw().as_slice(),
            width: w as usize,
            pitch: w as usize * 3,
            height: h as usize,
            format: turbojpeg::PixelFormat::RGB,
        })?)
    })
}
