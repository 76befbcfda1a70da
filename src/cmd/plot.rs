//! `albef runs plot RUN... --metric NAME --out FILE.svg|FILE.png`: a metric of several runs
//! against step for people at a terminal, drawn as a standalone SVG; for a .png file that SVG is
//! rasterised with resvg at the same size, its labels set in a system font (none found: the
//! picture is drawn without text and a warning says so).
use albef_registry::{MetricPoint, Registry};
use anyhow::{bail, Context as _, Result};
use clap::Args;
use std::fmt::Write as _;
use std::path::PathBuf;

/// The most points drawn per run; longer histories are thinned evenly.
const MAX_POINTS: usize = 4000;
const COLORS: [&str; 8] = [
    "#2f6fde", "#e4572e", "#17a398", "#f3a712", "#8e44ad", "#5d6d7e", "#c0392b", "#27ae60",
];

#[derive(Args)]
pub struct PlotArgs {
    /// Run ids to draw, one line each
    #[arg(required = true)]
    runs: Vec<i64>,
    /// The metric key, e.g. loss or loss_itc
    #[arg(long)]
    metric: String,
    /// Output file, ending in .svg or .png
    #[arg(long)]
    out: PathBuf,
    /// EMA smoothing weight in [0, 1), as TensorBoard's slider (0 draws the raw values)
    #[arg(long, default_value_t = 0.0)]
    smooth: f64,
    /// Width of the picture in pixels
    #[arg(long, default_value_t = 900)]
    width: u32,
    /// Height of the picture in pixels
    #[arg(long, default_value_t = 500)]
    height: u32,
}

impl PlotArgs {
    pub async fn run(self, reg: &Registry) -> Result<()> {
        let png = match self
            .out
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("svg") => false,
            Some("png") => true,
            _ => bail!(
                "--out {}: expected a file name ending in .svg or .png",
                self.out.display()
            ),
        };
        if !(0.0..1.0).contains(&self.smooth) {
            bail!("--smooth {}: expected a weight in [0, 1)", self.smooth);
        }
        if self.width < 200 || self.height < 150 {
            bail!(
                "--width/--height {}x{}: too small to draw (at least 200x150)",
                self.width,
                self.height
            );
        }
        let mut series = Vec::new();
        for &id in &self.runs {
            let run = reg.run(id).await?;
            let points = reg
                .metric_history_for_plot(id, &self.metric, MAX_POINTS)
                .await?;
            if points.is_empty() {
                bail!("run {id} ({}) has no metric {:?}", run.name, self.metric);
            }
            series.push((format!("{id} {}", run.name), ema(&points, self.smooth)));
        }
        let svg = render(&self.metric, &series, self.width as f64, self.height as f64);
        let bytes = if png {
            rasterize(&svg)?
        } else {
            svg.into_bytes()
        };
        std::fs::write(&self.out, bytes)
            .with_context(|| format!("cannot write {}", self.out.display()))?;
        let points: usize = series.iter().map(|(_, p)| p.len()).sum();
        println!(
            "wrote {} ({} runs, {points} points of {})",
            self.out.display(),
            series.len(),
            self.metric
        );
        Ok(())
    }
}

/// The SVG as PNG bytes, at the SVG's own size. The labels need a system font; when there is
/// none, the picture is drawn without text and a warning says so.
fn rasterize(svg: &str) -> Result<Vec<u8>> {
    use resvg::{tiny_skia, usvg};
    let mut options = usvg::Options::default();
    let fonts = options.fontdb_mut();
    fonts.load_system_fonts();
    match sans_serif(fonts) {
        Some(family) => fonts.set_sans_serif_family(family),
        None => tracing::warn!(
            "no system font found: the PNG is drawn without its labels (install one, e.g. \
             Debian's fonts-dejavu-core, or write an .svg)"
        ),
    }
    let tree = usvg::Tree::from_str(svg, &options).context("parsing the plot's SVG")?;
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height()).with_context(|| {
        format!(
            "cannot allocate a {}x{} picture",
            size.width(),
            size.height()
        )
    })?;
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    pixmap.encode_png().context("encoding the PNG")
}

/// The family to draw `sans-serif` text in: a common sans-serif face if installed, else any.
fn sans_serif(fonts: &resvg::usvg::fontdb::Database) -> Option<String> {
    let families: Vec<&str> = fonts
        .faces()
        .flat_map(|f| f.families.iter().map(|(name, _)| name.as_str()))
        .collect();
    [
        "DejaVu Sans",
        "Liberation Sans",
        "Noto Sans",
        "Arial",
        "Helvetica",
    ]
    .into_iter()
    .find(|want| families.contains(want))
    .or(families.first().copied())
    .map(str::to_string)
}

/// TensorBoard's debiased exponential moving average (weight 0 returns the values unchanged).
fn ema(points: &[MetricPoint], weight: f64) -> Vec<MetricPoint> {
    let mut last = 0.0;
    points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            last = last * weight + (1.0 - weight) * p.value;
            let value = if weight > 0.0 {
                last / (1.0 - weight.powi(i as i32 + 1))
            } else {
                p.value
            };
            MetricPoint { value, ..*p }
        })
        .collect()
}

/// Round tick values (1, 2 or 5 times a power of ten) covering [lo, hi].
fn ticks(lo: f64, hi: f64, count: f64) -> Vec<f64> {
    let raw = (hi - lo) / count;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(mag * 10.0);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(t);
        t += step;
    }
    out
}

fn label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e5 || v.abs() < 1e-3 {
        format!("{v:.2e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The whole SVG document: grid, axes with ticks, one polyline per run, and a legend.
fn render(metric: &str, series: &[(String, Vec<MetricPoint>)], w: f64, h: f64) -> String {
    let (ml, mr, mt, mb) = (
        70.0,
        20.0,
        40.0,
        50.0 + 18.0 * series.len().div_ceil(3) as f64,
    );
    let all = series
        .iter()
        .flat_map(|(_, p)| p.iter())
        .filter(|p| p.value.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in all {
        x0 = x0.min(p.step as f64);
        x1 = x1.max(p.step as f64);
        y0 = y0.min(p.value);
        y1 = y1.max(p.value);
    }
    if x1 < x0 {
        // No finite point: an empty unit frame.
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    } else if x1 == x0 {
        x1 = x0 + 1.0;
    }
    // The value axis is laid out on halves: the difference of two halves never overflows, even
    // for values near +-1e308 (where `y1 - y0` is infinite and every coordinate NaN).
    let pad = if y1 > y0 {
        (y1 / 2.0 - y0 / 2.0) * 0.1
    } else {
        y0.abs().max(1.0) * 0.1
    };
    let (y0, y1) = ((y0 - pad).max(f64::MIN), (y1 + pad).min(f64::MAX));
    let x = |s: f64| ml + (s - x0) / (x1 - x0) * (w - ml - mr);
    let y = |v: f64| mt + (1.0 - (v / 2.0 - y0 / 2.0) / (y1 / 2.0 - y0 / 2.0)) * (h - mt - mb);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif"><rect width="{w}" height="{h}" fill="#fff"/><text x="{ml}" y="24" font-size="16" font-weight="600" fill="#1d2330">{} by step</text>"##,
        escape(metric)
    );
    for t in ticks(y0 / 2.0, y1 / 2.0, 6.0).into_iter().map(|t| t * 2.0) {
        let _ = write!(
            s,
            r##"<line x1="{ml}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#eceff3"/><text x="{}" y="{:.1}" text-anchor="end" font-size="11" fill="#6b7280">{}</text>"##,
            w - mr,
            ml - 8.0,
            y(t) + 4.0,
            label(t),
            yy = y(t)
        );
    }
    let base = h - mb;
    for t in ticks(x0, x1, 8.0) {
        let _ = write!(
            s,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{base}" y2="{}" stroke="#9aa3b5"/><text x="{xx:.1}" y="{}" text-anchor="middle" font-size="11" fill="#6b7280">{}</text>"##,
            base + 4.0,
            base + 17.0,
            label(t),
            xx = x(t)
        );
    }
    let _ = write!(
        s,
        r##"<line x1="{ml}" x2="{}" y1="{base}" y2="{base}" stroke="#9aa3b5"/><text x="{}" y="{}" text-anchor="middle" font-size="12" fill="#6b7280">step</text>"##,
        w - mr,
        (ml + w - mr) / 2.0,
        base + 34.0
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .filter(|p| p.value.is_finite())
            .map(|p| format!("{:.1},{:.1}", x(p.step as f64), y(p.value)))
            .collect();
        let _ = write!(
            s,
            r##"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"><title>{}</title></polyline>"##,
            path.join(" "),
            escape(name)
        );
        let (lx, ly) = (
            ml + (i % 3) as f64 * 260.0,
            base + 52.0 + 18.0 * (i / 3) as f64,
        );
        let _ = write!(
            s,
            r##"<rect x="{lx}" y="{}" width="14" height="3" fill="{color}"/><text x="{}" y="{ly}" font-size="12" fill="#1d2330">{}</text>"##,
            ly - 5.0,
            lx + 20.0,
            escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0, 5.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(0.13, 0.91, 4.0);
        assert_eq!(t.first().copied(), Some(0.2));
        assert!(t.iter().all(|v| (v * 5.0 - (v * 5.0).round()).abs() < 1e-9));
    }

    #[test]
    fn ema_is_debiased_and_zero_weight_is_identity() {
        let p: Vec<MetricPoint> = [4.0, 2.0]
            .iter()
            .enumerate()
            .map(|(i, v)| MetricPoint {
                step: i as i64,
                value: *v,
                logged_at: 0,
            })
            .collect();
        assert_eq!(ema(&p, 0.0), p);
        let s = ema(&p, 0.5);
        assert_eq!(s[0].value, 4.0, "the first point is not pulled towards 0");
        assert!((s[1].value - (0.5 * 0.5 * 4.0 + 0.5 * 2.0) / 0.75).abs() < 1e-12);
    }

    #[test]
    fn render_draws_one_line_per_run() {
        let p = vec![
            MetricPoint {
                step: 0,
                value: 1.0,
                logged_at: 0,
            },
            MetricPoint {
                step: 10,
                value: 0.5,
                logged_at: 0,
            },
        ];
        let svg = render(
            "loss<x>",
            &[("1 a".into(), p.clone()), ("2 b".into(), p)],
            900.0,
            500.0,
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("loss&lt;x&gt; by step") && svg.ends_with("</svg>\n"));
    }

    #[test]
    fn extreme_and_non_finite_values_give_finite_coordinates() {
        let point = |step, value| MetricPoint {
            step,
            value,
            logged_at: 0,
        };
        for points in [
            vec![point(0, 1e308), point(1, -1e308), point(2, f64::MAX)],
            vec![point(0, f64::NAN), point(1, f64::INFINITY), point(2, 3.0)],
            vec![point(0, f64::NAN)],
        ] {
            let svg = render("x", &[("1".into(), points.clone())], 900.0, 500.0);
            assert!(
                !svg.contains("NaN") && !svg.contains("inf"),
                "{points:?}: {svg}"
            );
        }
    }

    #[test]
    fn png_has_the_requested_size_and_the_lines() {
        let p: Vec<MetricPoint> = (0..50)
            .map(|i| MetricPoint {
                step: i,
                value: 1.0 / (1.0 + i as f64),
                logged_at: 0,
            })
            .collect();
        let svg = render("loss", &[("1 a".into(), p)], 640.0, 360.0);
        let bytes = rasterize(&svg).unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (640, 360));
        assert_eq!(info.color_type, png::ColorType::Rgba);
        let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(4).collect();
        // The first run's colour (#2f6fde) is where its line is drawn.
        let line = pixels
            .iter()
            .filter(|p| p[0] < 0x50 && (0x60..0x80).contains(&p[1]) && p[2] > 0xc0)
            .count();
        assert!(line > 300, "{line} pixels of the line");
        assert!(pixels.iter().all(|p| p[3] == 255), "opaque background");
    }
}
