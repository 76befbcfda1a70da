//! The web page in headless Chromium: each view of `albef serve`, over a demo SQLite registry,
//! loads and shows its content (the DOM after the page's scripts ran), and a screenshot of it
//! is taken. `ALBEF_SCREENSHOTS_DIR` keeps the screenshots (`scripts/screenshots` sets it).
//! Skipped, loudly, when no `chromium` is installed (Debian: `apt-get install chromium`).
mod dashboards_support;

use dashboards_support::{fill_demo, Demo, Server};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// Runs Chromium headless with the given extra flags; returns its stdout. Fails after 90 s.
fn run_chromium(bin: &Path, profile: &Path, extra: &[String], url: &str) -> String {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start chromium");
    let start = Instant::now();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium failed on {url}: {status}");
            break;
        }
        if start.elapsed() > Duration::from_secs(90) {
            child.kill().unwrap();
            panic!("chromium did not finish {url} within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().unwrap()
}

/// (file name, route, what the rendered DOM must contain, window height).
fn pages(d: &Demo) -> Vec<(&'static str, String, Vec<String>, u32)> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        (
            "runs",
            "#/runs".into(),
            s(&[
                "id=\"runs-table\"",
                "tiny-filtered",
                "tiny-lr-high",
                "FAILED",
                "loss_itc",
                "3 runs",
            ]),
            900,
        ),
        (
            "runs-filter-error",
            "#/runs?filter=metrics.loss%20%3C%3D".into(),
            s(&[
                "id=\"error\"",
                "at column",
                "metrics.loss &lt;=\n",
                "^</pre>",
            ]),
            500,
        ),
        (
            "charts",
            format!(
                "#/charts?runs={},{},{}&key=loss&smooth=0.8",
                d.noisy, d.filtered, d.failed
            ),
            s(&[
                "class=\"series\"",
                "data-name=\"1 tiny-noisy\"",
                "data-name=\"3 tiny-lr-high\"",
                "<svg viewBox",
                ">step</text>",
            ]),
            900,
        ),
        (
            "charts-unlogged-key",
            format!("#/charts?runs={}&key=metrics.r1_t2i", d.noisy),
            s(&[
                "<option selected=\"\" value=\"metrics.r1_t2i\">metrics.r1_t2i (not logged)</option>",
                "No points to draw.",
            ]),
            500,
        ),
        (
            "compare",
            format!("#/compare?runs={},{}", d.noisy, d.failed),
            s(&[
                "id=\"params-diff\"",
                "class=\"differs\"",
                "1 of 4 differ",
                "id=\"metrics-cmp\"",
                "loss_mlm",
            ]),
            900,
        ),
        (
            "checkpoints",
            "#/checkpoints".into(),
            s(&[
                "id=\"ckpt-table\"",
                "albef@production",
                "albef@staging",
                "Promotion history",
                "rollback",
                "metrics.r1 &gt;= current",
            ]),
            1000,
        ),
        (
            "datasets",
            "#/datasets".into(),
            s(&["id=\"datasets-table\"", "web-demo", "filter", "76.0%"]),
            600,
        ),
        (
            "dataset-ingest",
            "#/dataset?name=web-demo&version=1".into(),
            s(&[
                "Errors by kind",
                "http_404",
                "Duplicates by layer",
                "phash",
                "success rate",
                "id=\"shards-table\"",
            ]),
            1500,
        ),
        (
            "dataset-filter",
            "#/dataset?name=web-demo&version=2".into(),
            s(&[
                "Score histogram: scores.itm",
                "Score histogram: scores.itc",
                "id=\"contact-sheet\"",
                "filtered_out",
                "kept of scored",
                "83.3%",
            ]),
            1200,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_page_renders_in_headless_chromium() {
    let Some(bin) = chromium() else {
        eprintln!(
            "\n\n!!!!! SKIPPED: chromium is not installed; the web page was NOT tested. !!!!!"
        );
        eprintln!(
            "!!!!! Install it with: apt-get install -y chromium chromium-driver      !!!!!\n\n"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("registry.db").display());
    let reg = albef_registry::Registry::connect(&url).await.unwrap();
    let demo = fill_demo(&reg, dir.path()).await.unwrap();
    let shots = std::env::var_os("ALBEF_SCREENSHOTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join("screenshots"));
    std::fs::create_dir_all(&shots).unwrap();
    let pages = pages(&demo);
    tokio::task::spawn_blocking(move || {
        let server = Server::start(&url, None);
        for (name, route, expected, height) in pages {
            let page = server.url(&format!("/{route}"));
            let profile = tempfile::tempdir().unwrap();
            let dom = run_chromium(&bin, profile.path(), &["--dump-dom".into()], &page);
            let view = route
                .trim_start_matches("#/")
                .split('?')
                .next()
                .unwrap()
                .to_string();
            assert!(
                dom.contains(&format!("data-ready=\"{view}\"")),
                "{name}: the view did not finish rendering:\n{dom}"
            );
            for want in &expected {
                assert!(
                    dom.contains(want.as_str()),
                    "{name}: {want:?} missing from the page:\n{dom}"
                );
            }
            let file = shots.join(format!("{name}.png"));
            let profile = tempfile::tempdir().unwrap();
            run_chromium(
                &bin,
                profile.path(),
                &[
                    format!("--screenshot={}", file.display()),
                    format!("--window-size=1400,{height}"),
                ],
                &page,
            );
            let png = std::fs::read(&file)
                .unwrap_or_else(|e| panic!("{name}: no screenshot {}: {e}", file.display()));
            assert!(
                png.starts_with(b"\x89PNG") && png.len() > 10_000,
                "{name}: screenshot too small ({} bytes)",
                png.len()
            );
            eprintln!("{name}: ok, screenshot {}", file.display());
        }
    })
    .await
    .unwrap();
}
