//! Shared by the dashboard tests (API, Grafana, Chromium) and `scripts/screenshots`: a demo
//! registry filled through the registry API (dataset versions with ingest and filter statistics,
//! runs with metric histories, checkpoints, promotions and a rollback), an `albef serve` child
//! process on a free port, and a minimal HTTP/1.1 client over a TCP stream.
#![allow(dead_code)] // each test binary uses a different part of this module

use albef_registry::{NewDatasetVersion, NewShard, PromotionRequest, Registry, RunStatus};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The registry tests' helpers for fresh Postgres databases.
#[path = "../../registry/tests/common/mod.rs"]
pub mod pg;

/// What the demo registry holds, for assertions.
pub struct Demo {
    /// Runs by name: tiny-noisy, tiny-filtered, tiny-lr-high.
    pub noisy: i64,
    pub filtered: i64,
    pub failed: i64,
    pub checkpoints: Vec<i64>,
    /// Steps logged per training run.
    pub steps: i64,
}

/// A deterministic noise source (a linear congruential generator), so the data is the same on
/// every run without a random-number crate.
struct Noise(u64);
impl Noise {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) - 0.5
    }
}

fn shard_stats(i: u64) -> Value {
    let (ok, dl, dec, dup) = (780 - 20 * i, 120 + 10 * i, 30, 70 + 10 * i);
    json!({
        "rows": 1000,
        "by_status": {"success": ok, "failed_to_download": dl, "failed_to_decode": dec, "duplicate": dup},
        "by_http_status": {"200": ok + dec + dup, "404": dl - 40, "503": 40},
        "by_error_kind": {"http_404": dl - 40, "http_503": 40, "decode": dec},
        "dedupe": {"url": 20, "sha256": 30 + 10 * i, "phash": 20},
        "bytes_downloaded": 9_000_000 + 100_000 * i,
        "bytes_kept": 4_000_000,
    })
}

/// Fills `reg` with the demo data; checkpoint files and the contact sheet go under `dir`.
pub async fn fill_demo(reg: &Registry, dir: &Path) -> anyhow::Result<Demo> {
    // Ingested version: three shards, then the sum.
    let v1 = reg
        .create_dataset_version(NewDatasetVersion {
            dataset: "web-demo".into(),
            uri: dir.join("datasets/web-demo/v1").display().to_string(),
            parent: None,
            stage: "ingest".into(),
            params: json!({"input": "corpus/urls.tsv", "shard_rows": 1000, "resize": 256}),
        })
        .await?;
    let mut total = json!({"rows": 0, "by_status": {}, "by_http_status": {}, "by_error_kind": {}, "dedupe": {}, "bytes_downloaded": 0});
    for i in 0..3u64 {
        let stats = shard_stats(i);
        add_counts(&mut total, &stats);
        reg.register_shard(
            v1.id,
            NewShard {
                index: i as i64,
                uri: format!("{}/{i:05}.parquet", v1.uri),
                rows: 1000,
                stats,
            },
        )
        .await?;
    }
    reg.finish_dataset_version(v1.id, total).await?;

    // Filtered version: score histograms and a contact sheet.
    let sheet = dir.join("contact_sheet.svg");
    std::fs::write(
        &sheet,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="120" height="40"><rect width="120" height="40" fill="#2f6fde"/><text x="8" y="25" fill="#fff">contact sheet</text></svg>"##,
    )?;
    let v2 = reg
        .create_dataset_version(NewDatasetVersion {
            dataset: "web-demo".into(),
            uri: dir.join("datasets/web-demo/v2").display().to_string(),
            parent: Some(v1.id),
            stage: "filter".into(),
            params: json!({"checkpoint": 1, "threshold": 0.35}),
        })
        .await?;
    reg.register_shard(
        v2.id,
        NewShard {
            index: 0,
            uri: format!("{}/00000.parquet", v2.uri),
            rows: 2280,
            stats: json!({"rows": 2280, "by_status": {"success": 1900, "filtered_out": 380}}),
        },
    )
    .await?;
    reg.finish_dataset_version(
        v2.id,
        json!({
            "rows": 2280,
            "by_status": {"success": 1900, "filtered_out": 380},
            "scores": {
                "itm": {"edges": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                        "counts": [120, 90, 80, 90, 140, 210, 330, 420, 460, 340]},
                "itc": {"min": -1.0, "max": 1.0, "counts": [40, 80, 160, 300, 520, 640, 380, 160]}
            },
            "contact_sheet": sheet.display().to_string(),
        }),
    )
    .await?;

    // Two finished runs on the two versions, one failed run.
    let steps = 300;
    let mut runs = Vec::new();
    for (name, lr, version, floor, seed) in [
        ("tiny-noisy", "0.0001", v1.id, 1.6, 1u64),
        ("tiny-filtered", "0.0001", v2.id, 1.2, 2),
        ("tiny-lr-high", "0.001", v1.id, 2.4, 3),
    ] {
        let run = reg
            .create_run("pretrain", name, &json!({"model": "albef-tiny", "lr": lr}))
            .await?;
        reg.set_run_dataset(run, version).await?;
        reg.log_params(
            run,
            &[
                ("lr".into(), lr.into()),
                ("batch_size".into(), "32".into()),
                ("model".into(), "albef-tiny".into()),
                (
                    "dataset".into(),
                    format!("web-demo@{}", if version == v1.id { 1 } else { 2 }),
                ),
            ],
        )
        .await?;
        let writer = reg.metric_writer(run);
        let mut noise = Noise(seed);
        let n = if name == "tiny-lr-high" {
            steps / 3
        } else {
            steps
        };
        for step in 0..n {
            let t = step as f64 / steps as f64;
            let itc = floor * 0.6 + 2.5 * (-4.0 * t).exp() + 0.15 * noise.next();
            let itm = floor * 0.25 + 0.45 * (-3.0 * t).exp() + 0.05 * noise.next();
            let mlm = floor * 0.9 + 4.0 * (-5.0 * t).exp() + 0.2 * noise.next();
            writer.log("loss_itc", step, itc)?;
            writer.log("loss_itm", step, itm)?;
            writer.log("loss_mlm", step, mlm)?;
            writer.log("loss", step, itc + itm + mlm)?;
            writer.log("lr", step, lr.parse::<f64>()? * (1.0 - t))?;
        }
        if name != "tiny-lr-high" {
            writer.log("r1", n, if name == "tiny-noisy" { 0.41 } else { 0.53 })?;
        }
        writer.finish().await?;
        runs.push(run);
    }

    // One checkpoint per finished run; promote, promote through a gate, roll back.
    let mut checkpoints = Vec::new();
    for (i, (run, r1)) in [(runs[0], 0.41), (runs[1], 0.53)].into_iter().enumerate() {
        let file = dir.join(format!("ckpt-{i}.safetensors"));
        std::fs::write(&file, format!("demo checkpoint {i}").repeat(1000))?;
        checkpoints.push(
            reg.register_checkpoint(
                run,
                &file,
                steps,
                &[("r1".into(), r1), ("r5".into(), r1 + 0.2)],
            )
            .await?,
        );
    }
    reg.finish_run(runs[0], RunStatus::Finished).await?;
    reg.finish_run(runs[1], RunStatus::Finished).await?;
    reg.finish_run(runs[2], RunStatus::Failed).await?;
    let promote =
        |checkpoint: i64, alias: &str, require: Option<&str>, reason: &str| PromotionRequest {
            checkpoint,
            model: "albef".into(),
            alias: alias.into(),
            require: require.map(str::to_string),
            reason: Some(reason.into()),
            actor: "demo".into(),
        };
    reg.promote(&promote(
        checkpoints[0],
        "staging",
        None,
        "first trained checkpoint",
    ))
    .await?;
    reg.promote(&promote(checkpoints[0], "production", None, "baseline"))
        .await?;
    reg.promote(&promote(
        checkpoints[1],
        "production",
        Some("metrics.r1 >= current"),
        "filtered data helps",
    ))
    .await?;
    reg.rollback(
        "albef",
        "production",
        "demo",
        Some("checking the rollback path"),
    )
    .await?;
    reg.promote(&promote(
        checkpoints[1],
        "production",
        Some("metrics.r1 >= current"),
        "re-promote after review",
    ))
    .await?;
    Ok(Demo {
        noisy: runs[0],
        filtered: runs[1],
        failed: runs[2],
        checkpoints,
        steps,
    })
}

/// Adds the counters of one shard's statistics into a running total.
fn add_counts(total: &mut Value, shard: &Value) {
    for key in ["rows", "bytes_downloaded"] {
        total[key] = json!(total[key].as_u64().unwrap_or(0) + shard[key].as_u64().unwrap_or(0));
    }
    for key in ["by_status", "by_http_status", "by_error_kind", "dedupe"] {
        for (k, v) in shard[key].as_object().into_iter().flatten() {
            let sum = total[key][k].as_u64().unwrap_or(0) + v.as_u64().unwrap_or(0);
            total[key][k] = json!(sum);
        }
    }
}

/// An `albef serve` child process; killed on drop.
pub struct Server {
    child: Child,
    pub addr: String,
}

impl Server {
    /// Starts `albef --registry URL serve --addr 127.0.0.1:0` (with `--token` when given) and
    /// waits for the address it prints.
    pub fn start(registry_url: &str, token: Option<&str>) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_albef"));
        cmd.args(["--registry", registry_url, "serve", "--addr", "127.0.0.1:0"])
            .env_remove("ALBEF_SERVE_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        let mut child = cmd.spawn().expect("cannot start albef serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("reading the address albef serve prints");
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("albef serve printed {line:?}, not its address"))
            .to_string();
        Server { child, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET path`: (status, content type, body).
    pub fn get_raw(&self, path: &str) -> (u16, String, Vec<u8>) {
        self.request("GET", path, &[], None)
    }

    /// `GET path` answered with JSON: (status, value).
    pub fn get(&self, path: &str) -> (u16, Value) {
        let (status, _, body) = self.get_raw(path);
        (status, parse_json(path, &body))
    }

    /// `POST path` with a JSON body and an optional bearer token: (status, value).
    pub fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let (status, _, body) = self.request("POST", path, &headers, Some(body));
        (status, parse_json(path, &body))
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> (u16, String, Vec<u8>) {
        let mut stream = TcpStream::connect(&self.addr).expect("connecting to albef serve");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if body.is_some() {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                payload.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(&payload);
        stream.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("reading the response");
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| {
                panic!(
                    "{method} {path}: no header end in {:?}",
                    String::from_utf8_lossy(&raw)
                )
            });
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status code");
        let content_type = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type:")
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default();
        assert!(
            !head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{method} {path}: this client reads only sized bodies"
        );
        (status, content_type, raw[split + 4..].to_vec())
    }
}

fn parse_json(path: &str, body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
