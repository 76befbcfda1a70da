//! Datasets and checkpoints in object storage, end to end through the CLI against a real
//! S3-compatible server started by the test (moto, tests/s3_support/mod.rs): the corpus is
//! ingested into `s3://`, albef-tiny trains from there with its checkpoints uploaded to `s3://`,
//! is interrupted by SIGINT and resumed by a process on another home (an empty mirror, so the
//! checkpoint and the data come from the store), bit for bit; `albef eval` reads the checkpoint
//! from the store, `albef filter` reads and writes `s3://`, `datasets export` uploads
//! webdataset shards, and promotion checks the checkpoint object without copying its weights.
mod s3_support;
mod train_support;

use albef_dataset::store::{block_on, local_folder, Remote};
use albef_dataset::{complete_shards, hash_file, parquet_path, read_rows};
use s3_support::S3Server;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use train_support::{albef, history, ingest_corpus, interrupted_at, json_line};

const STEPS: i64 = 16;
const BUCKET: &str = "albef";
const CHECKPOINTS: &str = "s3://albef/checkpoints";

/// `albef` on home `home` with the shared registry `registry` and the store's variables.
fn cli(home: &Path, registry: &str, env: &[(&'static str, String)]) -> Command {
    let mut cmd = albef(home);
    cmd.env("ALBEF_REGISTRY_URL", registry)
        .envs(env.iter().map(|(k, v)| (*k, v)));
    cmd
}

fn train(cmd: &mut Command) -> &mut Command {
    cmd.args([
        "train",
        "--config",
        "configs/albef-tiny.toml",
        "--dataset",
        "shapes",
        "--steps",
        &STEPS.to_string(),
        "--batch-size",
        "8",
        "--checkpoint-every",
        "4",
        "--checkpoint-dir",
        CHECKPOINTS,
        "--format",
        "json",
        "--experiment",
        "storage",
        "--log-format",
        "json",
    ])
}

/// The sha256 of the object at `uri`, downloaded under `dir`.
fn object_sha(uri: &str, dir: &Path) -> String {
    let (prefix, name) = uri.rsplit_once('/').unwrap();
    let local = dir.join(name);
    block_on(Remote::open(prefix).unwrap().download(name, &local)).unwrap();
    hash_file(&local).unwrap().0
}

#[test]
fn ingest_train_resume_eval_filter_export_through_s3() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let env = server.env();
    for (k, v) in &env {
        std::env::set_var(k, v); // for this process's own reads of the store
    }
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let registry = format!("sqlite://{}", tmp.path().join("registry.db").display());
    let location = |dataset: &str| format!("s3://{BUCKET}/datasets/{dataset}");
    let (home, _) = ingest_corpus(tmp.path(), &rt, &location, &mut |cmd| {
        cmd.env("ALBEF_REGISTRY_URL", &registry)
            .envs(env.iter().map(|(k, v)| (*k, v)))
    });
    let reg = rt
        .block_on(albef_registry::Registry::connect(&registry))
        .unwrap();
    let shapes = rt.block_on(reg.dataset_version("shapes")).unwrap();
    assert_eq!(shapes.uri, location("shapes"));
    let shards = rt.block_on(reg.shards(shapes.id)).unwrap();
    assert!(shards
        .iter()
        .all(|s| s.uri.starts_with("s3://albef/datasets/shapes/")));
    assert_eq!(shards.iter().map(|s| s.rows).sum::<i64>(), 400);

    // Uninterrupted, then interrupted by SIGINT and resumed on another home.
    let full = json_line(
        train(&mut cli(&home, &registry, &env)),
        "uninterrupted training",
    );
    assert_eq!(full["status"], "FINISHED");
    let full_loss = history(&reg, &rt, full["run"].as_i64().unwrap(), "loss");
    let stopped = interrupted_at(train(&mut cli(&home, &registry, &env)), 3);
    let stop_step = stopped["step"].as_i64().unwrap();
    let ckpt = rt
        .block_on(reg.checkpoint(stopped["checkpoint"].as_i64().unwrap()))
        .unwrap();
    let prefix = format!("{CHECKPOINTS}/run-{}/step-{stop_step:08}/", stopped["run"]);
    assert_eq!(ckpt.uri, format!("{prefix}model.safetensors"));
    assert_eq!(ckpt.sha256, object_sha(&ckpt.uri, tmp.path()));

    let elsewhere = tmp.path().join("elsewhere");
    let resumed = json_line(
        cli(&elsewhere, &registry, &env).args([
            "train",
            "--resume",
            &stopped["run"].to_string(),
            "--checkpoint-dir",
            CHECKPOINTS,
            "--format",
            "json",
        ]),
        "resumed training",
    );
    assert_eq!(resumed["status"], "FINISHED");
    assert_eq!(resumed["step"], STEPS);
    let resumed_loss = history(&reg, &rt, resumed["run"].as_i64().unwrap(), "loss");
    assert_eq!(
        resumed_loss,
        full_loss[stop_step as usize..].to_vec(),
        "the resumed losses equal the uninterrupted run's bit for bit"
    );
    assert!(elsewhere.join("mirror/s3/albef/checkpoints").is_dir());

    // Evaluation and promotion of the final checkpoint, from the store.
    let last = resumed["checkpoint"].to_string();
    let recall = json_line(
        cli(&tmp.path().join("eval-home"), &registry, &env).args([
            "eval",
            "--checkpoint",
            &last,
            "--dataset",
            "shapes-heldout",
            "--format",
            "json",
        ]),
        "eval",
    );
    assert!(recall["r1_t2i"].as_f64().is_some(), "{recall}");
    let promoted = cli(&home, &registry, &env)
        .args([
            "ckpt", "promote", &last, "--model", "albef", "--alias", "staging",
        ])
        .output()
        .unwrap();
    assert!(
        promoted.status.success(),
        "{}",
        String::from_utf8_lossy(&promoted.stderr)
    );

    // Filter from and to the store; the new version is read back from there.
    let filtered = json_line(
        cli(&home, &registry, &env).args([
            "filter",
            "--checkpoint",
            "albef@staging",
            "--dataset",
            "shapes",
            "--output",
            "s3://albef/datasets/shapes-filtered",
            "--keep-fraction",
            "0.5",
            "--format",
            "json",
        ]),
        "filter",
    );
    let version = rt
        .block_on(reg.dataset_version_by_id(filtered["version_id"].as_i64().unwrap()))
        .unwrap();
    assert_eq!(version.uri, "s3://albef/datasets/shapes-filtered");
    let back = local_folder(&version.uri, &tmp.path().join("read-back")).unwrap();
    let rows: usize = complete_shards(&back)
        .unwrap()
        .iter()
        .map(|&s| read_rows(&parquet_path(&back, s), None).unwrap().len())
        .sum();
    assert_eq!(rows, 400, "every source row is in the filtered version");
    let objects = block_on(Remote::open(&version.uri).unwrap().list()).unwrap();
    let names: Vec<&str> = objects.iter().map(|o| o.name.as_str()).collect();
    assert!(names.contains(&"contact_sheet.html"), "{names:?}");

    // Export as webdataset shards to the store.
    let spec = format!("shapes@{}", version.version);
    let exported: Value = json_line(
        cli(&home, &registry, &env).args([
            "datasets",
            "export",
            &spec,
            "--format",
            "webdataset",
            "--out",
            "s3://albef/exports/shapes",
            "--summary",
            "json",
        ]),
        "export",
    );
    let objects = block_on(Remote::open("s3://albef/exports/shapes").unwrap().list()).unwrap();
    let tars = objects.iter().filter(|o| o.name.ends_with(".tar")).count();
    assert!(
        tars > 0 && objects.iter().any(|o| o.name == "lineage.json"),
        "{objects:?}"
    );
    assert_eq!(exported["out"], "s3://albef/exports/shapes");
}
