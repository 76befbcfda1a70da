//! Draws a `Scene` into RGB pixels and encodes it as JPEG. Shapes are drawn directly from signed
//! distances (one pixel of anti-aliasing at the edge), which is fast enough for thousands of
//! pictures a second and needs no drawing library.
use super::scene::{Object, Scene, Shape, BACKGROUNDS, COLOURS};
use anyhow::{Context, Result};
use image::codecs::jpeg::JpegEncoder;
use image::ExtendedColorType;

/// A rendered picture: RGB, 8 bits a channel, rows top to bottom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rgb {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

pub fn render(scene: &Scene, size: usize) -> Rgb {
    let background = tinted(BACKGROUNDS[scene.background].1, scene.background_tint);
    let mut pixels = Vec::with_capacity(size * size * 3);
    let tau = std::f32::consts::TAU;
    for y in 0..size {
        let v = (y as f32 + 0.5) / size as f32;
        for x in 0..size {
            let u = (x as f32 + 0.5) / size as f32;
            let light: f32 = scene
                .shading
                .iter()
                .map(|w| w.amplitude * (tau * (w.fx * u + w.fy * v) + w.phase).cos())
                .sum();
            pixels.extend(background.map(|c| (c as f32 + light).round().clamp(0.0, 255.0) as u8));
        }
    }
    let mut image = Rgb {
        width: size,
        height: size,
        pixels,
    };
    for object in &scene.objects {
        draw(&mut image, object);
    }
    image
}

fn tinted(colour: [u8; 3], tint: [i16; 3]) -> [u8; 3] {
    [0, 1, 2].map(|c| (colour[c] as i16 + tint[c]).clamp(0, 255) as u8)
}

/// Signed distance (in pixels, negative inside) from `(x, y)`, relative to the object's centre,
/// to the outline of a shape of half-extent `r`.
fn signed_distance(shape: Shape, x: f32, y: f32, r: f32) -> f32 {
    let boxed = |hx: f32, hy: f32| {
        let (dx, dy) = (x.abs() - hx, y.abs() - hy);
        let outside = (dx.max(0.0).powi(2) + dy.max(0.0).powi(2)).sqrt();
        outside + dx.max(dy).min(0.0)
    };
    match shape {
        Shape::Circle => (x * x + y * y).sqrt() - r,
        Shape::Square => boxed(0.85 * r, 0.85 * r),
        Shape::Cross => boxed(r, 0.33 * r).min(boxed(0.33 * r, r)),
        Shape::Triangle => {
            // Pointing up, with its centroid at the centre: the largest signed distance to the
            // three edge lines (exact inside, a close bound outside, which is all the edge needs).
            let s3 = 3f32.sqrt() / 2.0;
            let (nx, ny) = (s3, 0.5);
            let half = 0.5 * r;
            (y - half)
                .max(nx * x - ny * y - half)
                .max(-nx * x - ny * y - half)
        }
    }
}

fn draw(image: &mut Rgb, object: &Object) {
    let side = image.width.min(image.height) as f32;
    let colour = tinted(COLOURS[object.colour].1, object.tint);
    let (cx, cy) = (
        object.cx * image.width as f32,
        object.cy * image.height as f32,
    );
    let r = object.radius * side;
    let reach = (1.1 * r + 2.0).ceil();
    let x0 = (cx - reach).floor().max(0.0) as usize;
    let x1 = ((cx + reach).ceil() as usize).min(image.width);
    let y0 = (cy - reach).floor().max(0.0) as usize;
    let y1 = ((cy + reach).ceil() as usize).min(image.height);
    for py in y0..y1 {
        for px in x0..x1 {
            let d = signed_distance(object.shape, px as f32 + 0.5 - cx, py as f32 + 0.5 - cy, r);
            let coverage = (0.5 - d).clamp(0.0, 1.0);
            if coverage > 0.0 {
                let at = (py * image.width + px) * 3;
                for (pixel, &target) in image.pixels[at..at + 3].iter_mut().zip(&colour) {
                    let old = *pixel as f32;
                    *pixel = (old + coverage * (target as f32 - old)).round() as u8;
                }
            }
        }
    }
}

pub fn encode_jpeg(image: &Rgb, quality: u8) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(image.pixels.len() / 8);
    JpegEncoder::new_with_quality(&mut out, quality)
        .encode(
            &image.pixels,
            image.width as u32,
            image.height as u32,
            ExtendedColorType::Rgb8,
        )
        .with_context(|| format!("encoding a {}x{} JPEG", image.width, image.height))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::Layout;

    #[test]
    fn a_shape_is_drawn_in_its_colour_where_it_is() {
        let object = Object {
            colour: 4,
            shape: Shape::Square,
            large: true,
            cx: 0.25,
            cy: 0.75,
            radius: 0.15,
            tint: [0; 3],
        };
        let scene = Scene {
            background: 0,
            background_tint: [0; 3],
            shading: Default::default(),
            layout: Layout::Alone { place: 6 },
            objects: vec![object],
        };
        let image = render(&scene, 100);
        let at = |x: usize, y: usize| {
            let i = (y * 100 + x) * 3;
            [image.pixels[i], image.pixels[i + 1], image.pixels[i + 2]]
        };
        assert_eq!(at(25, 75), COLOURS[4].1);
        assert_eq!(at(75, 25), BACKGROUNDS[0].1);
        assert_eq!(at(25, 25), BACKGROUNDS[0].1);
    }

    #[test]
    fn shading_varies_the_background_within_its_bounds() {
        let wave = |fx, fy, amplitude| crate::scene::Wave {
            fx,
            fy,
            phase: 0.3,
            amplitude,
        };
        let scene = Scene {
            background: 1,
            background_tint: [0; 3],
            shading: [wave(1.0, 0.0, 18.0), wave(0.5, 2.0, 12.0)],
            layout: Layout::Pair {
                relation: crate::scene::Relation::Above,
            },
            objects: vec![],
        };
        let image = render(&scene, 64);
        let base = BACKGROUNDS[1].1[0] as i32;
        let values: Vec<i32> = image.pixels.iter().step_by(3).map(|&p| p as i32).collect();
        let (lo, hi) = (values.iter().min().unwrap(), values.iter().max().unwrap());
        assert!(
            *lo >= base - 30 && *hi <= base + 30,
            "{lo}..{hi} around {base}"
        );
        assert!(hi - lo > 30, "the light hardly varies: {lo}..{hi}");
        let mean = values.iter().sum::<i32>() as f64 / values.len() as f64;
        assert!((mean - base as f64).abs() < 8.0, "mean {mean} vs {base}");
    }
}
